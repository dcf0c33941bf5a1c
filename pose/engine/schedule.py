"""Learning-rate schedules, stepped every optimizer step, with the decays on epoch boundaries
(the reference steps once per epoch at its start, so its decays land an epoch early)."""

from __future__ import annotations

import math
from collections.abc import Callable

from pose.config import TrainConfig


def lr_factor(cfg: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """Multiplier of the base lr after `step` optimizer steps: linear warmup over
    `warmup_steps`, then multistep (x lr_factor at each epoch of lr_steps) or cosine to 0."""
    total = max(1, cfg.epochs * steps_per_epoch)

    def factor(step: int) -> float:
        warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
        if cfg.schedule == "multistep":
            epoch = step // max(1, steps_per_epoch)
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
