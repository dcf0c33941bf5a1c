"""The step plan and the learning-rate schedule (pose/engine/schedule.py)."""

import pytest

from pose.config import ConfigError, load_config
from pose.engine.schedule import StepPlan, base_lr, lr_factor


def test_lr_schedule_decays_on_the_right_epoch():
    cfg = load_config(None, ["schedule.warmup_steps=10"])  # multistep 90/120 of 140
    factor = lr_factor(cfg.schedule, cfg.train, StepPlan(100, 140 * 100))
    assert factor(0) == pytest.approx(0.1) and factor(9) == 1.0
    assert factor(90 * 100 - 1) == 1.0 and factor(90 * 100) == pytest.approx(0.1)
    assert factor(120 * 100 - 1) == pytest.approx(0.1) and factor(120 * 100) == pytest.approx(0.01)


def test_cosine_reaches_its_floor_at_the_last_step_of_the_plan():
    overrides = ["schedule.name=cosine", "schedule.warmup_steps=0", "train.epochs=2"]
    cfg = load_config(None, overrides)
    cosine = lr_factor(cfg.schedule, cfg.train, StepPlan.of(cfg.train, batches_per_epoch=10))
    assert cosine(0) == 1.0 and cosine(10) == pytest.approx(0.5) and cosine(20) == pytest.approx(0)
    capped = load_config(None, [*overrides, "train.max_steps=8"])
    cosine = lr_factor(capped.schedule, capped.train, StepPlan.of(capped.train, 10))
    assert cosine(4) == pytest.approx(0.5) and cosine(8) == pytest.approx(0)


def test_step_plan_from_the_epoch_length():
    train = load_config(None, ["train.epochs=3", "train.grad_accum=2"]).train
    plan = StepPlan.of(train, batches_per_epoch=9)  # 4 steps of 2 batches; the 9th is left out
    assert (plan.steps_per_epoch, plan.total_steps) == (4, 12)
    assert [plan.epoch_of(s) for s in (1, 4, 5, 12)] == [0, 0, 1, 2]
    assert [plan.completed_epochs(s) for s in (3, 4, 12)] == [0, 1, 3]
    assert plan.ends_epoch(8) and not plan.ends_epoch(9) and plan.is_last(12)
    capped = load_config(None, ["train.epochs=3", "train.max_steps=5"]).train
    assert StepPlan.of(capped, 9).total_steps == 5
    with pytest.raises(ValueError, match="shorter than one optimizer step"):
        StepPlan.of(load_config(None, ["train.grad_accum=4"]).train, batches_per_epoch=3)


def test_lr_scales_with_the_total_batch_over_the_reference_128():
    cfg = load_config(None, ["optimizer.scale_lr=true", "train.batch_size=64"])
    assert base_lr(cfg.optimizer, cfg.train, world_size=4) == pytest.approx(1e-3 * 64 * 4 / 128)
    default = load_config(None)
    assert base_lr(default.optimizer, default.train, world_size=4) == 1e-3
    vitpose = load_config("configs/coco_vitpose_b_256x192.yaml", ["optimizer.scale_lr=true"])
    # its lr is for 8 GPUs x 64: on 8 GPUs it stays, on 4 it halves
    assert base_lr(vitpose.optimizer, vitpose.train, world_size=8) == pytest.approx(5e-4)
    assert base_lr(vitpose.optimizer, vitpose.train, world_size=4) == pytest.approx(2.5e-4)


def test_an_image_budget_sets_the_length_over_all_ranks_and_max_steps_caps_it():
    budget = ["train.budget_images=1000", "train.batch_size=8", "train.grad_accum=2"]
    train = load_config(None, budget).train
    plan = StepPlan.of(train, batches_per_epoch=50, world_size=2)  # 32 images a step
    assert (plan.steps_per_epoch, plan.total_steps) == (25, 32)  # ceil(1000 / 32)
    capped = load_config(None, [*budget, "train.max_steps=10"]).train
    assert StepPlan.of(capped, 50, world_size=2).total_steps == 10


def test_cosine_starts_after_warmup_and_ends_at_the_budget():
    overrides = ["schedule.name=cosine", "schedule.warmup_steps=10", "train.budget_images=880"]
    cfg = load_config(None, [*overrides, "train.batch_size=8"])
    plan = StepPlan.of(cfg.train, batches_per_epoch=5)  # 110 steps, whatever train.epochs says
    cosine = lr_factor(cfg.schedule, cfg.train, plan)
    assert cosine(4) == pytest.approx(0.5) and cosine(9) == 1.0 and cosine(10) == 1.0
    assert cosine(60) == pytest.approx(0.5) and cosine(110) == pytest.approx(0.0)


def test_multistep_under_a_budget_decays_at_the_same_fractions_of_the_run():
    overrides = ["train.epochs=10", "schedule.lr_steps=[5,8]", "schedule.warmup_steps=0"]
    cfg = load_config(None, [*overrides, "train.budget_images=800", "train.batch_size=8"])
    factor = lr_factor(cfg.schedule, cfg.train, StepPlan.of(cfg.train, 3))  # 100 steps
    assert factor(49) == 1.0 and factor(50) == pytest.approx(0.1)
    assert factor(79) == pytest.approx(0.1) and factor(80) == pytest.approx(0.01)


def test_a_wall_clock_budget_keeps_the_lr_of_its_calibration_steps_independent_of_its_length():
    overrides = ["schedule.name=cosine", "schedule.warmup_steps=4", "train.budget_minutes=5"]
    cfg = load_config(None, [*overrides, "train.budget_calibration_steps=8"])
    plan = StepPlan.of(cfg.train, batches_per_epoch=10)
    assert not plan.known and not plan.is_last(10**6)
    capped = load_config(None, [*overrides, "train.max_steps=5"]).train
    assert StepPlan.of(capped, batches_per_epoch=10).is_last(5)  # before the length is known
    factor = lr_factor(cfg.schedule, cfg.train, plan)
    before = [factor(s) for s in range(9)]
    assert before == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    for total in (20, 500):
        plan.fix_total(total)
        assert [factor(s) for s in range(9)] == before
        assert factor(total) == pytest.approx(0.0) and factor(total - 1) > 0


def test_one_budget_at_a_time():
    with pytest.raises(ConfigError, match=r"'train\.budget_minutes'.*not both"):
        load_config(None, ["train.budget_images=100", "train.budget_minutes=2"])


def test_cosine_start_holds_the_peak_lr_then_decays_over_the_rest_of_the_run():
    overrides = ["schedule.name=cosine", "schedule.warmup_steps=10", "train.budget_images=800"]
    cfg = load_config(None, [*overrides, "train.batch_size=8", "schedule.cosine_start=0.6"])
    factor = lr_factor(cfg.schedule, cfg.train, StepPlan.of(cfg.train, 5))  # 100 steps
    assert factor(4) == pytest.approx(0.5) and factor(10) == 1.0 and factor(60) == 1.0
    assert factor(80) == pytest.approx(0.5) and factor(100) == pytest.approx(0.0)
    assert 0.5 < factor(70) < 1.0
    early = load_config(None, [*overrides, "train.batch_size=8", "schedule.cosine_start=0.05"])
    factor = lr_factor(early.schedule, early.train, StepPlan.of(early.train, 5))
    assert factor(10) == 1.0 and factor(55) == pytest.approx(0.5)  # warmup is later: it wins


def test_cosine_start_is_checked():
    with pytest.raises(ConfigError, match=r"'schedule\.cosine_start'.*\[0, 1\)"):
        load_config(None, ["schedule.name=cosine", "schedule.cosine_start=1"])
    with pytest.raises(ConfigError, match=r"'schedule\.cosine_start'.*only schedule.name=cosine"):
        load_config(None, ["schedule.cosine_start=0.5"])
