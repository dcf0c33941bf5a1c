"""Stopping a run on request: SIGTERM, SIGUSR1 and SIGUSR2 (what Slurm and submitit send before
a preemption, a requeue or a time-out) and a first Ctrl-C (SIGINT) ask the loop to checkpoint
and stop at the next step; a second Ctrl-C exits at once, leaving the last checkpoint as it was
(as a kill does: checkpoints are complete or absent)."""

from __future__ import annotations

import os
import signal
import sys

import torch

from pose.distributed import DistEnv


class StopRequest:
    """Catches the stop signals from construction until `restore()`. With several ranks the
    request is agreed on at log steps, so that every rank stops at the same step. `restore()`
    puts back the handlers that were there before (submitit's, say), so a caller can hand them
    the signal after the checkpoint is written."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT)
    EXIT_AT_ONCE = 130  # the shell's code for a process ended by SIGINT

    def __init__(self):
        self.signum: int | None = None
        self._interrupts = 0
        self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}

    def _handle(self, signum, frame) -> None:
        if signum == signal.SIGINT:
            self._interrupts += 1
            if self._interrupts > 1:
                print(
                    "train: second Ctrl-C: exiting now, without a checkpoint of this step; "
                    "the last checkpoint is kept",
                    file=sys.stderr,
                    flush=True,
                )
                os._exit(self.EXIT_AT_ONCE)
            print(
                "train: Ctrl-C: writing a checkpoint at the end of this step, then stopping "
                "(Ctrl-C again to exit at once)",
                file=sys.stderr,
                flush=True,
            )
        self.signum = self.signum or signum

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def agreed(self, env: DistEnv, at_log_step: bool) -> bool:
        """Whether all ranks stop now (one rank alone stops at once)."""
        if env.world_size == 1:
            return self.requested
        if not at_log_step:
            return False
        flag = torch.tensor([self.signum or 0], device=env.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        self.signum = int(flag.item()) or None
        return self.requested

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
