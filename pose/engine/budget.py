"""Training to a wall-clock budget (`train.budget_minutes`), made deterministic once measured.

The first `train.budget_calibration_steps` optimizer steps are timed (the first two of them
left out when there are more to time: they carry start-up costs); the budget divided by the
mean seconds per step, averaged over the ranks, gives the run's step count. That count is
written to the run folder's budget.json before any checkpoint after it, and a resumed run
reads it back, so a run killed and resumed ends at the same step with the same weights as an
uninterrupted run of that many steps. Evaluations and checkpoints after the calibration are not
part of the budget: they add their own time.

An image budget (`train.budget_images`) needs no measuring: see StepPlan.of."""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass

import torch

from pose.config import TrainConfig
from pose.distributed import DistEnv, sum_over_ranks
from pose.engine.errors import CheckpointError
from pose.engine.schedule import StepPlan
from pose.files import atomic_write
from pose.folders import RunFolder


@dataclass(frozen=True)
class MeasuredBudget:
    """What budget.json holds."""

    budget_minutes: float
    total_steps: int
    seconds_per_step: float
    timed_steps: tuple[int, int]  # the steps after the first, up to the last, that were timed
    world_size: int
    measured_at: str


def read_budget(run: RunFolder) -> MeasuredBudget | None:
    if not run.budget.is_file():
        return None
    try:
        fields = json.loads(run.budget.read_text())
        fields["timed_steps"] = tuple(fields["timed_steps"])
        return MeasuredBudget(**fields)
    except (ValueError, TypeError, KeyError) as e:
        raise CheckpointError(f"{run.budget}: not a measured budget ({e})") from None


class BudgetClock:
    """Times the calibration steps of a wall-clock budget and fixes the plan's length.

    `observe(step)` after every optimizer step; it returns the measured budget at the last
    calibration step (rank 0 has written it by then) and None otherwise. Built by `restore`,
    which fixes the plan at once when the run folder already holds a measurement."""

    def __init__(self, cfg: TrainConfig, plan: StepPlan, run: RunFolder, env: DistEnv, step: int):
        self.cfg, self.plan, self.run, self.env = cfg, plan, run, env
        self.end = cfg.budget_calibration_steps
        to_time = self.end - step
        # the step whose end starts the clock: leave out up to two start-up steps
        self.start = step + min(2, to_time - 1)
        self.begin()

    @classmethod
    def restore(
        cls, cfg: TrainConfig, plan: StepPlan, run: RunFolder, env: DistEnv, step: int
    ) -> BudgetClock | None:
        """None when nothing is left to measure (no wall-clock budget, or one measured before)."""
        if not cfg.budget_minutes:
            return None
        measured = read_budget(run)
        if measured is not None:
            if not math.isclose(measured.budget_minutes, cfg.budget_minutes):
                raise CheckpointError(
                    f"{run.budget}: this run was measured for train.budget_minutes="
                    f"{measured.budget_minutes:g}, the config says {cfg.budget_minutes:g}; "
                    "a resumed run keeps its budget (start a new run.dir for another)"
                )
            plan.fix_total(measured.total_steps)
            return None
        if step >= cfg.budget_calibration_steps:
            raise CheckpointError(
                f"{run.path} resumes at step {step}, after the budget's calibration steps, "
                f"but holds no {run.budget.name}; its step count is unknown (a run started "
                "before budgets existed?): start a new run.dir, or delete this one"
            )
        return cls(cfg, plan, run, env, step)

    def begin(self) -> None:
        """The training loop starts now (the clock runs from here if no step is left out)."""
        self.started_at = time.perf_counter()

    def observe(self, step: int) -> MeasuredBudget | None:
        if step == self.start:
            self._sync()
            self.started_at = time.perf_counter()
        if step != self.end:
            return None
        self._sync()
        seconds = (time.perf_counter() - self.started_at) / (self.end - self.start)
        seconds = sum_over_ranks([seconds], self.env)[0] / self.env.world_size
        total = max(self.end, math.floor(self.cfg.budget_minutes * 60 / seconds))
        measured = MeasuredBudget(
            budget_minutes=self.cfg.budget_minutes,
            total_steps=total,
            seconds_per_step=seconds,
            timed_steps=(self.start + 1, self.end),
            world_size=self.env.world_size,
            measured_at=time.strftime("%Y-%m-%d %H:%M:%S"),
        )
        if self.env.is_main:
            atomic_write(self.run.budget, json.dumps(asdict(measured), indent=1) + "\n")
        self.plan.fix_total(total)
        return measured

    def _sync(self) -> None:
        if self.env.device.type == "cuda":
            torch.cuda.synchronize(self.env.device)
