"""Comparing the runs of a sweep (pose/sweep/compare.py, launch/compare.py): the table over
seeds, the plots, the wandb summary run, and the same from the wandb API."""

import json
from pathlib import Path

import pytest
import yaml

from pose.sweep.compare import (
    RunRecord,
    Variant,
    comparison_table,
    differences_table,
    group_runs,
    local_runs,
    paired_differences,
    pick_baseline,
    summarise,
)
from pose.tracking import RunMetrics, ValRecord


def write_fake_runs(folder: Path) -> None:
    """Two variants, two seeds each, as a training run writes them."""
    for variant, aps in (("none", (0.5, 0.7)), ("partwise", (0.6, 0.6))):
        for seed, ap in enumerate(aps):
            run = folder / f"{variant}-{seed}"
            run.mkdir(parents=True)
            config = {
                "seed": seed,
                "model": {"attention": variant},
                "run": {"dir": str(run)},
                "log": {"wandb": "off", "name": run.name},
            }
            (run / "config.yaml").write_text(yaml.safe_dump(config))
            lines = [
                {
                    "step": 0,
                    "epoch": 0,
                    "split": "run",
                    "params": 2_000_000 + seed,
                    "steps_per_epoch": 10,
                },
                *(
                    {
                        "step": s,
                        "epoch": s // 10,
                        "split": "train",
                        "loss": 1 / s,
                        "images_per_s": 100.0 + s,
                    }
                    for s in (5, 10, 15, 20)
                ),
                {"step": 10, "epoch": 1, "split": "val", "AP": ap + 0.1, "AP50": 0.9},
                {"step": 20, "epoch": 2, "split": "val", "AP": ap, "AP50": 0.8},
            ]
            (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))


def test_compare_table_means_and_spreads_over_seeds(tmp_path):
    write_fake_runs(tmp_path)
    runs = local_runs(tmp_path)
    keys, variants = group_runs(runs, None)
    assert keys == ["model.attention"] and [v.label for v in variants] == [
        "attention=none",
        "attention=partwise",
    ]
    first = summarise(variants[0].runs[0])
    assert first["AP"] == 0.5 and first["best AP"] == pytest.approx(0.6)
    assert first["images/s"] == 115.0 and first["epochs"] == 2.0  # the first window left out
    table = comparison_table(variants).splitlines()
    assert table[2] == (
        "| attention=none | 2 | 0.600 ± 0.141 | 0.700 ± 0.141 | 0.800 ± 0.000 "
        "| - | - | - | - | 2.00 ± 0.00 | 115 ± 0 |"
    )
    assert table[3].startswith("| attention=partwise | 2 | 0.600 ± 0.000 | 0.700 ± 0.000 |")


def test_compare_logs_a_summary_run_to_wandb_offline(tmp_path, run_python):
    write_fake_runs(tmp_path / "runs")
    out = tmp_path / "cmp"
    args = ["launch/compare.py", tmp_path / "runs", "--out", out, "--log-wandb", "offline"]
    done = run_python(args, env={"WANDB_DIR": str(tmp_path / "wandb")}, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "logged to wandb (offline)" in done.stdout
    offline = list((out / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(offline) == 1 and offline[0].stat().st_size > 0
    images = list((out / "wandb").glob("offline-run-*/files/media/images/plots/*.png"))
    assert len(images) == 2, "ap.png and loss.png logged"
    tables = {
        p.name.split("_")[0]: json.loads(p.read_text())
        for p in (out / "wandb").glob("offline-run-*/files/media/table/*.table.json")
    }
    comparison = tables["comparison"]
    column = comparison["columns"].index("final AP mean")
    assert all(isinstance(row[column], float) for row in comparison["data"])  # numbers
    paired = tables["paired"]
    assert "interval low" in paired["columns"] and "verdict" in paired["columns"]


def test_compare_reads_runs_back_from_the_wandb_api(monkeypatch):
    """`--wandb ENTITY/PROJECT/GROUP`: the history rows wandb keeps (`split/metric` keys) come
    back as metrics.jsonl records, so the same table is made from either source (the API is
    replaced here: this machine has no network)."""
    import wandb

    from pose.sweep.compare import CompareError, wandb_runs

    class FakeRun:
        def __init__(self, name, attention, ap):
            self.name = f"sweep/{name}"
            self.config = {"seed": 0, "model": {"attention": attention}, "log": {"wandb": "online"}}
            self.rows = [
                {"_step": 0, "run/params": 3e6, "run/steps_per_epoch": 10},
                {
                    "_step": 10,
                    "train/loss": 0.5,
                    "train/images_per_s": 90.0,
                    "train/epoch": 1,
                    "val/AP": None,
                },
                {"_step": 20, "train/loss": 0.4, "train/images_per_s": 100.0},
                {"_step": 20, "val/AP": ap, "val/AP50": 0.9, "val/epoch": 2},
            ]

        def scan_history(self):
            return iter(self.rows)

    asked = {}

    class FakeApi:
        def __init__(self, timeout):
            pass

        def runs(self, path, filters):
            asked.update(path=path, filters=filters)
            return [
                FakeRun("attention-none", "none", 0.4),
                FakeRun("attention-partwise", "partwise", 0.5),
            ]

    monkeypatch.setattr(wandb, "Api", FakeApi)
    runs = wandb_runs("me/posescale/attention")
    assert asked == {"path": "me/posescale", "filters": {"group": "attention"}}
    assert [r.name for r in runs] == ["attention-none", "attention-partwise"]
    assert runs[0].metrics.val == [ValRecord(20, 2, {"AP": 0.4, "AP50": 0.9})]
    keys, variants = group_runs(runs, None)
    assert keys == ["model.attention"]
    summary = summarise(variants[1].runs[0])
    assert (summary["AP"], summary["params"], summary["images/s"], summary["epochs"]) == (
        0.5,
        3e6,
        100.0,
        2.0,
    )
    with pytest.raises(CompareError, match="ENTITY/PROJECT/GROUP"):
        wandb_runs("me/posescale")


def _variant(label: str, aps: dict) -> Variant:
    runs = [
        RunRecord(f"{label}-{seed}", {"seed": seed}, RunMetrics(val=[ValRecord(9, 1, {"AP": ap})]))
        for seed, ap in aps.items()
    ]
    return Variant(label, runs)


def test_paired_differences_with_a_student_t_interval_and_a_verdict():
    base = _variant("attention=none", {0: 0.40, 1: 0.50, 2: 0.45, 3: 0.47})
    better = _variant("attention=holistic", {0: 0.50, 1: 0.62, 2: 0.56})  # seed 3 missing
    noise = _variant("attention=partwise", {0: 0.45, 1: 0.45, 2: 0.45, 3: 0.47})
    variants = [better, base, noise]
    assert pick_baseline(variants, None) is base
    assert pick_baseline(variants, "partwise") is noise
    first, second = paired_differences(variants, base)
    assert first.seeds == [0, 1, 2]
    assert first.differences == pytest.approx([0.10, 0.12, 0.11])
    # mean 0.11, sd 0.01, t(0.975, 2) = 4.3027: 0.11 -+ 4.3027 * 0.01 / sqrt(3)
    assert first.interval == pytest.approx((0.085158, 0.134842), abs=1e-6)
    assert first.verdict.startswith("better than attention=none") and "distinguishable" in (
        first.verdict
    )
    assert second.differences == pytest.approx([0.05, -0.05, 0.0, 0.0])
    assert second.verdict.startswith("not distinguishable from seed noise")
    table = differences_table([first, second]).splitlines()
    assert table[2].startswith(
        "| attention=holistic | attention=none | 3 | +0.110 | [+0.085, +0.135] | better"
    )
    one_seed = paired_differences([base, _variant("x", {0: 0.9})], base)[0]
    assert "no interval" in one_seed.verdict and "-" in differences_table([one_seed])


def test_the_baseline_must_name_one_variant():
    from pose.sweep.compare import CompareError

    variants = [_variant("attention=none", {0: 0.1}), _variant("attention=holistic", {0: 0.2})]
    with pytest.raises(CompareError, match="matches 2 variants"):
        pick_baseline(variants, "attention")
