"""The wall-clock budget's measurement and its record (pose/engine/budget.py); the end-to-end
kill-and-resume of a budgeted run is in test_trainer.py."""

import json
from types import SimpleNamespace

import pytest
import torch

from pose.config import load_config
from pose.engine.budget import BudgetClock, read_budget
from pose.engine.errors import CheckpointError
from pose.engine.schedule import StepPlan
from pose.folders import RunFolder

ONE_RANK = SimpleNamespace(world_size=1, rank=0, is_main=True, device=torch.device("cpu"))


def budget(minutes: float = 2.0, calibration: int = 5):
    overrides = [f"train.budget_minutes={minutes}", f"train.budget_calibration_steps={calibration}"]
    return load_config(None, overrides).train


def test_the_clock_fixes_the_plan_from_the_timed_steps_and_records_it(tmp_path, monkeypatch):
    now = [100.0]
    monkeypatch.setattr("pose.engine.budget.time.perf_counter", lambda: now[0])
    cfg, run = budget(minutes=2.0, calibration=5), RunFolder(tmp_path)
    plan = StepPlan.of(cfg, batches_per_epoch=50)
    clock = BudgetClock.restore(cfg, plan, run, ONE_RANK, step=0)
    clock.begin()
    for step in range(1, 6):
        now[0] += 9.0 if step <= 2 else 0.5  # two slow start-up steps, then 0.5 s a step
        measured = clock.observe(step)
        assert (measured is None) == (step < 5)
    assert measured.timed_steps == (3, 5) and measured.seconds_per_step == pytest.approx(0.5)
    assert plan.total_steps == 240 == measured.total_steps  # 120 s / 0.5 s
    assert read_budget(run) == measured
    again = StepPlan.of(cfg, batches_per_epoch=50)
    assert BudgetClock.restore(cfg, again, run, ONE_RANK, step=3) is None  # measured before
    assert again.total_steps == 240


def test_a_changed_budget_a_missing_record_and_a_damaged_one_are_refused(tmp_path):
    run = RunFolder(tmp_path)
    plan = StepPlan.of(budget(), batches_per_epoch=50)
    with pytest.raises(CheckpointError, match=r"resumes at step 7.*no budget\.json"):
        BudgetClock.restore(budget(), plan, run, ONE_RANK, step=7)
    record = {"budget_minutes": 2.0, "total_steps": 300, "seconds_per_step": 0.4}
    record |= {"timed_steps": [3, 5], "world_size": 1, "measured_at": "then"}
    run.budget.write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match=r"measured for train\.budget_minutes=2, the config"):
        BudgetClock.restore(budget(minutes=3.0), plan, run, ONE_RANK, step=7)
    run.budget.write_text("{not json")
    with pytest.raises(CheckpointError, match=r"budget\.json: not a measured budget"):
        BudgetClock.restore(budget(), plan, run, ONE_RANK, step=7)
