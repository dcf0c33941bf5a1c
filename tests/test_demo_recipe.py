"""benchmarks/demo_recipe.py reads finished runs without training them again, tables and plots
them, and fails a bound (the training itself is `launch/train.py`, tested elsewhere)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _finished_run(folder: Path, step: int, ap: float) -> None:
    folder.mkdir(parents=True)
    records = [
        {"step": step, "epoch": 1, "split": "train", "loss": 0.001},
        {"step": step, "epoch": 1, "split": "val", "AP": ap, "AP50": 0.9, "AP75": 0.5},
    ]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_finished_runs_are_read_tabled_plotted_and_held_to_a_bound(tmp_path):
    out = tmp_path / "runs"
    _finished_run(out / "seed0-320img", 10, 0.52)
    _finished_run(out / "seed1-320img", 10, 0.48)
    command = [sys.executable, str(ROOT / "benchmarks" / "demo_recipe.py"), "--out", str(out)]
    command += ["--seeds", "0", "1", "--images", "320", "--json", str(tmp_path / "r.json")]
    command += ["--plot", str(tmp_path / "ap.png"), "--reference", "old=320:0.1,640:0.3"]
    done = subprocess.run([*command, "--min-ap", "0.5"], capture_output=True, text=True)
    assert done.returncode == 1, done.stderr  # seed 1 is below 0.5; nothing was trained
    assert "seed 1, 320 images: AP 0.480 is below 0.5" in done.stdout
    assert "| 320 | 0 | 10 | 0.520 | 0.900 | 0.500 |" in done.stdout
    runs = json.loads((tmp_path / "r.json").read_text())["runs"]
    assert [(r["seed"], r["AP"], r["train_seconds"]) for r in runs] == [
        (0, 0.52, None),
        (1, 0.48, None),
    ]
    assert (tmp_path / "ap.png").stat().st_size > 10_000
    done = subprocess.run([*command, "--min-ap", "0.4"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
