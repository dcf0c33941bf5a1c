"""Comparing the runs of a sweep (pose/sweep/compare.py, launch/compare.py): the table over
seeds, the plots, the wandb summary run, and the same from the wandb API."""

import json
from pathlib import Path

import pytest
import yaml

from pose.sweep.compare import comparison_table, group_runs, local_runs, summarise


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
    assert runs[0].of("val") == [{"step": 20, "split": "val", "AP": 0.4, "AP50": 0.9, "epoch": 2}]
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
