"""What each array task of a sweep runs: one training run, and submitit's checkpoint/requeue
protocol around it.

A preemption, a requeue or the time-out signal reaches the training loop first (its stop
request): it writes a checkpoint at the next step boundary and returns. The signal is then
handed to the handler that was there before, which under submitit checkpoints this callable
(`checkpoint` below) and requeues the job; the requeued job starts `__call__` again, and the
training loop resumes from the run directory's latest checkpoint. A stopped run writes no
result, so submitit never reads a half-done run as finished.
"""

from __future__ import annotations

import os
import signal
import sys
from dataclasses import dataclass, replace

from pose.caches import use_cache_folders
from pose.config import load_config
from pose.distributed import init_distributed, shutdown
from pose.engine.trainer import train


@dataclass(frozen=True)
class TrainingJob:
    config_path: str
    overrides: tuple[str, ...]
    workdir: str  # relative paths in the config are relative to this folder
    max_requeues: int = 3
    requeues: int = 0
    threads: int = 0  # intra-op threads; 0 = as the launcher says (Slurm's CPUs per task)

    def __call__(self) -> dict:
        os.chdir(self.workdir)
        use_cache_folders()
        if self.threads:
            import torch

            torch.set_num_threads(self.threads)
        cfg = load_config(self.config_path, list(self.overrides))
        env = init_distributed(cfg.launch)
        try:
            result = train(cfg, cfg.run.dir, env)
        finally:
            shutdown()
        if result.stopped:
            self._hand_on(result.stop_signal, result.step)
        return {
            "rank": env.rank,
            "step": result.step,
            "epochs": result.epochs,
            "best_ap": result.best_ap,
            "eval": result.metrics,
            "precision": result.precision,
        }

    def checkpoint(self, *args, **kwargs):
        """submitit calls this on rank 0 when the job is preempted or times out: the state is
        already in the run directory, so the same job is requeued, up to `max_requeues`."""
        import submitit

        if self.requeues >= self.max_requeues:
            print(
                f"sweep job: not requeued, {self.requeues} requeues already (max_requeues)",
                file=sys.stderr,
                flush=True,
            )
            return None
        return submitit.helpers.DelayedSubmission(replace(self, requeues=self.requeues + 1))

    @staticmethod
    def _hand_on(signum: int, step: int) -> None:
        name = signal.Signals(signum).name
        print(f"sweep job: {name} received, checkpoint written at step {step}", flush=True)
        handler = signal.getsignal(signum)
        if callable(handler):
            handler(signum, None)  # submitit's: checkpoint(), requeue, exit
        raise SystemExit(f"stopped by {name} at step {step}; the checkpoint is in the run folder")
