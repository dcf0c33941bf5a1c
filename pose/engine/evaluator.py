"""Evaluation during training: when it runs (at the end of every `train.eval_every`-th epoch
and after the last step) and what it leaves behind in the run folder (the metrics through the
tracker, the COCO results, and a picture of predictions on val crops)."""

from __future__ import annotations

import math

import torch

from pose.config import DataConfig, EvalConfig, LogConfig
from pose.data.loader import Loader
from pose.engine.schedule import StepPlan
from pose.eval.evaluate import evaluate, model_predictor, print_metrics
from pose.folders import RunFolder
from pose.tracking import Tracker
from pose.viz.panels import prediction_panel


class Evaluator:
    def __init__(
        self,
        loader: Loader,
        cfg: EvalConfig,
        data: DataConfig,
        every_epochs: int,
        plan: StepPlan,
        run: RunFolder,
        tracker: Tracker,
        log: LogConfig,
    ):
        self.loader, self.cfg, self.data, self.log = loader, cfg, data, log
        self.every_epochs, self.plan = every_epochs, plan
        self.run, self.tracker = run, tracker

    def due(self, step: int) -> bool:
        if not self.every_epochs:
            return False
        every = (
            self.plan.ends_epoch(step) and self.plan.completed_epochs(step) % self.every_epochs == 0
        )
        return every or self.plan.is_last(step)

    def evaluate(self, model: torch.nn.Module, step: int, autocast) -> dict:
        """Evaluate `model` after `step`; returns the metrics ({} on ranks without them)."""
        epoch = self.plan.completed_epochs(step)
        flip = self.loader.layout.flip_permutation
        predict = model_predictor(model, self.cfg, self.data, flip)
        metrics = evaluate(
            predict,
            self.loader,
            self.cfg,
            self.data,
            self.run.eval_results,
            autocast,
            progress=False,
        )
        if self.tracker.enabled and self.log.panel_people:  # ground truth, prediction, maps
            batches = self.loader.epoch(0)
            batch = next(batches)
            batches.close()
            path = self.run.prediction_picture(epoch)
            picture = prediction_panel(
                model,
                batch,
                path,
                self.loader.layout,
                self.data,
                self.log.panel_people,
                self.cfg.keypoint_thr,
                self.log.panel_joints,
            )
            self.tracker.log_images(step, {"val/predictions": picture})
        model.train()
        if metrics is None:
            return {}
        finite = {k: v for k, v in metrics.items() if not math.isnan(v)}
        self.tracker.log({"step": step, "epoch": epoch, "split": "val", **finite})
        if self.tracker.enabled:
            print(f"\neval after step {step} (epoch {epoch}):", flush=True)
            print_metrics(metrics)
        return metrics
