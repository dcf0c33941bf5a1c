"""The run's step plan (how many optimizer steps an epoch and the whole run take, and where a
step falls) and the learning-rate schedule over it, stepped every optimizer step with the
decays on epoch boundaries (the reference steps once per epoch at its start, so its decays land
an epoch early)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from pose.config import TrainConfig


@dataclass(frozen=True)
class StepPlan:
    """Optimizer steps per epoch (fixed by the manifest) and in the whole run. Step s counts
    from 1: after step s, s // steps_per_epoch epochs are complete."""

    steps_per_epoch: int
    total_steps: int

    @classmethod
    def of(cls, cfg: TrainConfig, batches_per_epoch: int) -> StepPlan:
        """The plan of a run whose loader yields `batches_per_epoch` micro-batches an epoch."""
        steps_per_epoch = batches_per_epoch // cfg.grad_accum
        if steps_per_epoch == 0:
            raise ValueError(
                f"an epoch of {batches_per_epoch} batches is shorter than one optimizer step of "
                f"train.grad_accum={cfg.grad_accum} batches"
            )
        total = cfg.epochs * steps_per_epoch
        return cls(steps_per_epoch, min(total, cfg.max_steps) if cfg.max_steps else total)

    def epoch_of(self, step: int) -> int:
        """The epoch (from 0) that step `step` belongs to."""
        return (step - 1) // self.steps_per_epoch

    def completed_epochs(self, step: int) -> int:
        return step // self.steps_per_epoch

    def ends_epoch(self, step: int) -> bool:
        return step % self.steps_per_epoch == 0

    def is_last(self, step: int) -> bool:
        return step >= self.total_steps


def lr_factor(cfg: TrainConfig, plan: StepPlan) -> Callable[[int], float]:
    """Multiplier of the base lr after `step` optimizer steps: linear warmup over
    `warmup_steps`, then multistep (x lr_factor at each epoch of lr_steps) or cosine to 0 at the
    plan's last step."""
    total = max(1, plan.total_steps)

    def factor(step: int) -> float:
        warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
        if cfg.schedule == "multistep":
            epoch = step // plan.steps_per_epoch
            decays = sum(epoch >= milestone for milestone in cfg.lr_steps)
            return warm * cfg.lr_factor**decays
        progress = min(1.0, step / total)
        return warm * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def base_lr(cfg: TrainConfig, world_size: int) -> float:
    """`train.lr`, or with `train.scale_lr` scaled linearly by the total batch relative to the
    reference's 128 (32 per GPU x 4 GPUs)."""
    total = cfg.batch_size * cfg.grad_accum * world_size
    return cfg.lr * total / 128 if cfg.scale_lr else cfg.lr
