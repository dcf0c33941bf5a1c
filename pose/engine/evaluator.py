"""Evaluation during training: the evaluator decides when it runs (at the end of every
`eval.every_epochs`-th epoch and after the last step, never on a step the run stops at) and
what it leaves behind in the run folder (the metrics through the tracker, the COCO results,
and a picture of predictions on val crops)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from pose.config import DataConfig, EvalConfig
from pose.distributed import BatchNormAverage, DistEnv
from pose.engine.schedule import StepPlan
from pose.eval.datasets import ValSet, best_set, combined_metrics, print_per_dataset
from pose.eval.evaluate import evaluate, model_predictor
from pose.folders import RunFolder
from pose.tracking import Tracker, ValRecord
from pose.viz.panels import prediction_panel


class Evaluator:
    """`val_sets`: the run's val sets (one per dataset that has one; pose/eval/datasets.py);
    `cfg`: its own section; `data`: the inputs' size and the heatmap codec's settings."""

    def __init__(
        self,
        val_sets: list[ValSet],
        cfg: EvalConfig,
        data: DataConfig,
        plan: StepPlan,
        run: RunFolder,
        tracker: Tracker,
        env: DistEnv,
        batchnorm: BatchNormAverage,
    ):
        self.val_sets, self.cfg, self.data, self.plan, self.run = val_sets, cfg, data, plan, run
        self.tracker, self.env, self.batchnorm = tracker, env, batchnorm
        self.ceiling_known = False

    def due(self, step: int, stopping: bool = False) -> bool:
        every = self.cfg.every_epochs
        if not every or stopping or not self.val_sets:
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
        """Evaluate `model` on every val set after `step`; returns the metrics ({} when none
        were scored), those of several datasets combined (pose/eval/datasets.py)."""
        eval_cfg = self.cfg
        epoch = self.plan.completed_epochs(step)
        first = not self.ceiling_known  # once a run: the codec's ceiling at this input size
        per_set = {}
        for val_set in self.val_sets:
            view = val_set.view(model)
            flips = val_set.layout.flip_permutation
            metrics = evaluate(
                model_predictor(view, eval_cfg, val_set.data, flips),
                val_set.loader,
                eval_cfg,
                val_set.data,
                val_set.results_path(self.run.eval_results),
                autocast,
                progress=False,
                env=self.env,
                ceiling=first,
            )
            if metrics is not None:
                per_set[val_set.name] = metrics
        self.ceiling_known = True
        if self.env.is_main and eval_cfg.panel_people:  # ground truth, prediction, maps
            self.tracker.log_images(step, {"val/predictions": self._picture(model, epoch)})
        model.train()
        if not per_set:
            return {}
        metrics = combined_metrics(per_set, eval_cfg.best_by)
        finite = {k: v for k, v in metrics.items() if not math.isnan(v)}
        self.tracker.log(ValRecord(step, epoch, finite))
        if self.env.is_main:
            print(f"\neval after step {step} (epoch {epoch}):", flush=True)
            best = best_set(self.val_sets, eval_cfg.best_by).name
            print_per_dataset(per_set, self.data, best, "train")
        return metrics

    def _picture(self, model: torch.nn.Module, epoch: int):
        """Val people of the dataset whose AP is the run's."""
        val_set = best_set(self.val_sets, self.cfg.best_by)
        batches = val_set.loader.epoch(0)
        batch = next(batches)
        batches.close()
        cfg = self.cfg
        return prediction_panel(
            val_set.view(model),
            batch,
            self.run.prediction_picture(epoch),
            val_set.layout,
            val_set.data,
            cfg.panel_people,
            cfg.keypoint_thr,
            cfg.panel_joints,
        )
