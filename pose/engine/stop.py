"""Stopping a run on request: SIGTERM, SIGUSR1 and SIGUSR2 (what Slurm and submitit send before
a preemption, a requeue or a time-out) and a first Ctrl-C (SIGINT) ask the loop to checkpoint
and stop at the next step; a second Ctrl-C exits at once, leaving the last checkpoint as it was
(as a kill does: checkpoints are complete or absent).

With several ranks the request is agreed on (all ranks stop at the same step) every few steps,
as many as take about `launch.stop_agree_s` seconds: each agreement also carries the slowest
rank's seconds per step since the last one, from which every rank sets the same next one. So a
stop begins its checkpoint within that time of the signal however far apart the log steps are,
inside the grace torchrun's agent gives its workers before it kills them (30 s unless
`--shutdown-timeout` says otherwise): what is left of the grace is the checkpoint's to take."""

from __future__ import annotations

import math
import os
import signal
import sys
import time

import torch

from pose.distributed import DistEnv


class StopRequest:
    """Catches the stop signals from construction until `restore()`. With several ranks the
    request is agreed on at log steps, so that every rank stops at the same step. `restore()`
    puts back the handlers that were there before (submitit's, say), so a caller can hand them
    the signal after the checkpoint is written."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT)
    EXIT_AT_ONCE = 130  # the shell's code for a process ended by SIGINT

    def __init__(self, agree_s: float = 10.0):
        self.signum: int | None = None
        self.agree_s = agree_s
        self.next_check = 1  # the step of the next agreement; the first step's sets the pace
        self._since: tuple[int, float] = (0, time.perf_counter())  # the last agreement
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

    def agreed(self, env: DistEnv, step: int) -> bool:
        """Whether all ranks stop after `step` (one rank alone stops at once). A collective
        at the agreed steps only: every rank calls it after every step."""
        if env.world_size == 1:
            return self.requested
        if step < self.next_check:
            return False
        last_step, last_time = self._since
        seconds = time.perf_counter() - last_time
        shared = torch.tensor([float(self.signum or 0), seconds], dtype=torch.float64)
        shared = shared.to(env.device)
        torch.distributed.all_reduce(shared, op=torch.distributed.ReduceOp.MAX)
        signum, slowest = (float(v) for v in shared.tolist())
        self.signum = int(signum) or None
        self.next_check = step + steps_within(self.agree_s, slowest / max(step - last_step, 1))
        self._since = (step, time.perf_counter())
        return self.requested

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def steps_within(seconds: float, seconds_per_step: float) -> int:
    """How many steps fit in `seconds` (at least one)."""
    if seconds_per_step <= 0:
        return 1
    return max(1, math.floor(seconds / seconds_per_step))
