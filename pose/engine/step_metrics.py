"""Loss and throughput between log steps, kept on the device until a log step reads them (the
one host sync of a log interval)."""

from __future__ import annotations

import time

import torch

from pose.distributed import DistEnv
from pose.engine.errors import TrainingError
from pose.tracking import TrainRecord


class StepMetrics:
    def __init__(self, env: DistEnv):
        self.env = env
        self.reset()

    def reset(self) -> None:
        device = self.env.device
        self.loss_sum = torch.zeros((), device=device)
        self.skipped = torch.zeros((), device=device)
        self.first_bad = torch.full((), -1, device=device, dtype=torch.long)
        self.batches = self.images = 0
        self.data_time = 0.0
        self.start = time.perf_counter()

    def add(self, loss: torch.Tensor, skipped: torch.Tensor, images: int, step: int) -> None:
        """One micro-batch of optimizer step `step` (counted from 1)."""
        self.skipped += skipped
        # A step the fp16 loss scaler skipped is counted, not fatal.
        bad = ~torch.isfinite(loss) & (skipped == 0) & (self.first_bad < 0)
        self.first_bad = torch.where(bad, torch.full_like(self.first_bad, step), self.first_bad)
        self.loss_sum += loss
        self.batches += 1
        self.images += images

    def flush(self, step: int, epoch: int, lr: float) -> TrainRecord:
        """The record of the interval ending at `step`; raises TrainingError on a bad loss."""
        first_bad = int(self.first_bad)  # the host sync of this log interval
        if first_bad >= 0:
            raise TrainingError(
                f"loss is not finite at step {first_bad}; the last good checkpoint is kept "
                "(checkpoints/latest in the run folder)"
            )
        seconds = max(time.perf_counter() - self.start, 1e-9)
        record = TrainRecord(
            step,
            epoch,
            loss=float(self.loss_sum) / max(self.batches, 1),
            lr=lr,
            images_per_s=self.images * self.env.world_size / seconds,
            images_per_s_per_device=self.images / seconds,
            data_wait=min(1.0, self.data_time / seconds),
            step_time=seconds / max(self.batches, 1),
            memory_gb=memory_gb(self.env.device),
            skipped_steps=int(self.skipped),
        )
        self.reset()
        return record


def memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    import psutil

    return psutil.Process().memory_info().rss / 2**30
