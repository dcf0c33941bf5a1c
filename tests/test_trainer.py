"""The training loop end to end (pose/engine/trainer.py): two ranks under torchrun, a killed run
resuming to the same weights, a NaN loss stopping the run, and what the loop derives from one
step counter."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pose.engine.deepspeed_adapter import MODEL_STATES_FILE
from pose.run_folder import RunFolder
from pose.tracking import read_metrics

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ["launch/train.py", "--config", "configs/demo.yaml"]


def final_weights(run_dir: Path) -> dict:
    run = RunFolder(run_dir)
    path = run.checkpoint(run.latest_tag()) / MODEL_STATES_FILE
    return torch.load(path, map_location="cpu", weights_only=True)["module"]


def train_records(run_dir: Path) -> list[dict]:
    return [r for r in read_metrics(run_dir) if r["split"] == "train"]


@pytest.mark.slow
def test_torchrun_two_ranks_zero1_fp32_then_bf16(shards, tmp_path, tiny_overrides, run_python):
    from pose.engine.distributed import free_port

    run = tmp_path / "ddp"
    port = str(free_port())  # torchrun's --master_port 0 hangs DeepSpeed's CPU rendezvous
    extra = {"train.zero_stage": 1, "train.max_steps": 24, "train.lr": 3e-3}
    torchrun = ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port]
    args = [*torchrun, *TRAIN, *tiny_overrides(shards, run, **extra)]
    done = run_python(args)
    assert done.returncode == 0, done.stderr[-3000:]
    records = train_records(run)
    assert records[-1]["step"] == 24
    first, last = records[0]["loss"], sum(r["loss"] for r in records[-3:]) / 3
    assert last < first, (first, last)
    assert records[-1]["images_per_s"] == pytest.approx(2 * records[-1]["images_per_s_per_device"])
    # bf16 autocast: a few steps continue the same run (resumes from step 24), finite losses
    bf16 = run_python([*args[:-1], "train.max_steps=28", "train.precision=bf16"])
    assert bf16.returncode == 0, bf16.stderr[-3000:]
    tail = train_records(run)[-2:]
    assert tail[-1]["step"] == 28 and all(torch.isfinite(torch.tensor(r["loss"])) for r in tail)


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_weights(
    shards, tmp_path, tiny_overrides, run_python, clean_env
):
    steps = {"train.max_steps": 12}
    whole = run_python([*TRAIN, *tiny_overrides(shards, tmp_path / "whole", **steps)])
    assert whole.returncode == 0, whole.stderr[-3000:]
    run = tmp_path / "killed"
    command = [sys.executable, *TRAIN, *tiny_overrides(shards, run, **steps)]
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    proc = subprocess.Popen(command, cwd=ROOT, env=clean_env(), **quiet)
    latest = RunFolder(run)
    deadline = time.time() + 300
    while time.time() < deadline and latest.latest_tag() != "step-000000008":
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert latest.latest_tag() == "step-000000008"  # killed after step 8, mid-epoch
    resumed = run_python([*TRAIN, *tiny_overrides(shards, run, **steps)])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = final_weights(tmp_path / "whole"), final_weights(run)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key  # bitwise on CPU
    steps = [r["step"] for r in train_records(run)]
    assert steps[-1] == 12 and steps.count(2) == 1  # appended after the resume, not truncated


def test_one_checkpoint_per_step_and_epochs_from_the_step_counter(
    shards, tmp_path, tiny_overrides, run_python
):
    """An epoch of the tiny shards is a few steps; checkpoints every 4 steps, at each epoch end
    and at the last step, each written once (no second tag for an epoch end that falls on a
    checkpoint step); train records carry the epoch their step belongs to."""
    from pose.config import load_config
    from pose.data.backends import build_loader
    from pose.data.loader import LoaderSpec

    run = tmp_path / "run"
    overrides = tiny_overrides(shards, run, **{"train.epochs": 3, "train.keep_last": 100})
    cfg = load_config("configs/demo.yaml", overrides)
    per_epoch = build_loader(LoaderSpec(cfg.data, "train", 8)).batches_per_epoch
    done = run_python([*TRAIN, *overrides])
    assert done.returncode == 0, done.stderr[-3000:]
    total = 3 * per_epoch
    expected = sorted(
        {s for s in range(1, total + 1) if s % 4 == 0 or s % per_epoch == 0 or s == total}
    )
    assert RunFolder(run).checkpoint_tags() == [f"step-{s:09d}" for s in expected]
    assert RunFolder(run).latest_tag() == f"step-{total:09d}"
    for record in train_records(run):
        assert record["epoch"] == (record["step"] - 1) // per_epoch
    start = next(r for r in read_metrics(run) if r["split"] == "run")
    assert start["steps_per_epoch"] == per_epoch


def test_nan_loss_stops_naming_the_step(shards, tmp_path, tiny_overrides, run_python):
    extra = {"train.lr": 1e30, "train.max_steps": 6}
    done = run_python([*TRAIN, *tiny_overrides(shards, tmp_path / "nan", **extra)])
    assert done.returncode == 1, done.stderr[-2000:]
    assert "loss is not finite at step" in done.stderr
