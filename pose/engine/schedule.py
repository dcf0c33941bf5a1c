"""The run's step plan (how many optimizer steps an epoch and the whole run take, and where a
step falls) and the learning-rate schedule over it, stepped every optimizer step with the
decays on epoch boundaries (the reference steps once per epoch at its start, so its decays land
an epoch early)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from pose.config import OptimizerConfig, ScheduleConfig, TrainConfig


@dataclass
class StepPlan:
    """Optimizer steps per epoch (fixed by the manifest) and in the whole run. Step s counts
    from 1: after step s, s // steps_per_epoch epochs are complete.

    The run's length comes from `train.epochs`, or from a budget: a number of images gives it
    at once; a number of minutes leaves it unknown (0) until `fix_total` sets it from the
    measured speed. `train.max_steps` caps it either way."""

    steps_per_epoch: int
    total_steps: int  # 0 while a wall-clock budget is not measured yet
    max_steps: int = 0

    @classmethod
    def of(cls, cfg: TrainConfig, batches_per_epoch: int, world_size: int = 1) -> StepPlan:
        """The plan of a run whose loader yields `batches_per_epoch` micro-batches an epoch
        on each of `world_size` ranks."""
        steps_per_epoch = batches_per_epoch // cfg.grad_accum
        if steps_per_epoch == 0:
            raise ValueError(
                f"an epoch of {batches_per_epoch} batches is shorter than one optimizer step of "
                f"train.grad_accum={cfg.grad_accum} batches"
            )
        if cfg.budget_images:
            total = math.ceil(cfg.budget_images / images_per_step(cfg, world_size))
        elif cfg.budget_minutes:
            total = 0
        else:
            total = cfg.epochs * steps_per_epoch
        plan = cls(steps_per_epoch, 0, cfg.max_steps)
        if total:
            plan.fix_total(total)
        return plan

    def fix_total(self, total_steps: int) -> None:
        self.total_steps = min(total_steps, self.max_steps) if self.max_steps else total_steps

    @property
    def known(self) -> bool:
        return self.total_steps > 0

    def epoch_of(self, step: int) -> int:
        """The epoch (from 0) that step `step` belongs to."""
        return (step - 1) // self.steps_per_epoch

    def completed_epochs(self, step: int) -> int:
        return step // self.steps_per_epoch

    def ends_epoch(self, step: int) -> bool:
        return step % self.steps_per_epoch == 0

    def is_last(self, step: int) -> bool:
        if self.known:
            return step >= self.total_steps
        return bool(self.max_steps) and step >= self.max_steps


def images_per_step(cfg: TrainConfig, world_size: int) -> int:
    return cfg.batch_size * cfg.grad_accum * world_size


def lr_factor(cfg: ScheduleConfig, train: TrainConfig, plan: StepPlan) -> Callable[[int], float]:
    """Multiplier of the base lr after `step` optimizer steps: linear warmup over
    `warmup_steps`, then multistep (x lr_factor at each epoch of lr_steps) or cosine from 1 at
    the end of warmup (or at `cosine_start` of the run, when later) to 0 at the plan's last
    step.

    With a budget the decays follow the plan's length, read at each call: multistep's epochs
    become the same fractions of the run (lr_steps / epochs), and with a wall-clock budget no
    decay starts before the calibration steps are over, so the factor of every step taken
    before the length is known does not depend on it."""
    budgeted = bool(train.budget_images or train.budget_minutes)
    calibration = train.budget_calibration_steps if train.budget_minutes else 0
    flat_until = max(cfg.warmup_steps, calibration)

    def factor(step: int) -> float:
        warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
        if cfg.name == "multistep":
            if not budgeted:
                epoch = step // plan.steps_per_epoch
                return warm * cfg.lr_factor ** sum(epoch >= m for m in cfg.lr_steps)
            if not plan.known:
                return warm
            at = [
                max(calibration + 1, round(m / train.epochs * plan.total_steps))
                for m in cfg.lr_steps
            ]
            return warm * cfg.lr_factor ** sum(step >= m for m in at)
        if not plan.known:
            return warm
        decay_from = max(flat_until, round(cfg.cosine_start * plan.total_steps))
        if step <= decay_from:
            return warm
        progress = min(1.0, (step - decay_from) / max(1, plan.total_steps - decay_from))
        return warm * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def base_lr(cfg: OptimizerConfig, train: TrainConfig, world_size: int) -> float:
    """`optimizer.lr`, or with `optimizer.scale_lr` scaled linearly by the global batch over
    `optimizer.lr_batch`, the batch the lr is for."""
    if not cfg.scale_lr:
        return cfg.lr
    return cfg.lr * images_per_step(train, world_size) / cfg.lr_batch
