"""Evaluation during training: the evaluator decides when it runs (at the end of every
`eval.every_epochs`-th epoch and after the last step, never on a step the run stops at) and
what it leaves behind in the run folder (the metrics through the tracker, the COCO results,
and a picture of predictions on val crops)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from pose.config import DataConfig, EvalConfig
from pose.data.loader import Loader
from pose.distributed import BatchNormAverage, DistEnv
from pose.engine.schedule import StepPlan
from pose.eval.evaluate import ceiling_note, evaluate, model_predictor, print_metrics
from pose.folders import RunFolder
from pose.tracking import Tracker, ValRecord
from pose.viz.panels import prediction_panel


class Evaluator:
    """`cfg`: its own section; `data`: the inputs' size and the heatmap codec's settings."""

    def __init__(
        self,
        loader: Loader,
        cfg: EvalConfig,
        data: DataConfig,
        plan: StepPlan,
        run: RunFolder,
        tracker: Tracker,
        env: DistEnv,
        batchnorm: BatchNormAverage,
    ):
        self.loader, self.cfg, self.data, self.plan, self.run = loader, cfg, data, plan, run
        self.tracker, self.env, self.batchnorm = tracker, env, batchnorm
        self.ceiling_known = False

    def due(self, step: int, stopping: bool = False) -> bool:
        every = self.cfg.every_epochs
        if not every or stopping:
            return False
        ends = self.plan.ends_epoch(step) and self.plan.completed_epochs(step) % every == 0
        return ends or self.plan.is_last(step)

    def after_step(
        self, model: Callable[[], torch.nn.Module], step: int, stopping: bool, autocast
    ) -> dict | None:
        """The metrics of an evaluation when one is due after `step` (on every rank), else
        None. `model()` gives the model to evaluate, once the BatchNorm statistics are
        averaged."""
        if not self.due(step, stopping):
            return None
        self.batchnorm.at(step)
        return self.evaluate(model(), step, autocast)

    def evaluate(self, model: torch.nn.Module, step: int, autocast) -> dict:
        """Evaluate `model` after `step`; returns the metrics ({} when none were scored)."""
        eval_cfg, data = self.cfg, self.data
        epoch = self.plan.completed_epochs(step)
        predict = model_predictor(model, eval_cfg, data, self.loader.layout.flip_permutation)
        first = not self.ceiling_known  # once a run: the codec's ceiling at this input size
        metrics = evaluate(
            predict,
            self.loader,
            eval_cfg,
            data,
            self.run.eval_results,
            autocast,
            progress=False,
            env=self.env,
            ceiling=first,
        )
        self.ceiling_known = True
        if self.env.is_main and eval_cfg.panel_people:  # ground truth, prediction, maps
            self.tracker.log_images(step, {"val/predictions": self._picture(model, epoch)})
        model.train()
        if metrics is None:
            return {}
        finite = {k: v for k, v in metrics.items() if not math.isnan(v)}
        self.tracker.log(ValRecord(step, epoch, finite))
        if self.env.is_main:
            print(f"\neval after step {step} (epoch {epoch}):", flush=True)
            print_metrics(metrics)
            note = ceiling_note(metrics, data)
            if note:
                print(f"train: note: {note}", flush=True)
        return metrics

    def _picture(self, model: torch.nn.Module, epoch: int):
        batches = self.loader.epoch(0)
        batch = next(batches)
        batches.close()
        cfg = self.cfg
        return prediction_panel(
            model,
            batch,
            self.run.prediction_picture(epoch),
            self.loader.layout,
            self.data,
            cfg.panel_people,
            cfg.keypoint_thr,
            cfg.panel_joints,
        )
