"""Shared test fixtures: the real COCO fixtures (outside the project) and a small synthetic set."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pose.caches import use_cache_folders

use_cache_folders()  # as the entry points do: tools write their caches under the project

ROOT = Path(__file__).resolve().parents[1]
FIXTURES_ENV = "POSESCALE_FIXTURES"


def fixtures_dir() -> Path:
    """`$POSESCALE_FIXTURES`, else the shared fixtures beside the checkout."""
    return Path(os.environ.get(FIXTURES_ENV, ROOT.parent / "shared" / "fixtures"))


@pytest.fixture(scope="session")
def coco_fixtures() -> Path:
    """Folder with the real COCO images, annotations and detections. Skips when absent, except
    under CI=true where their absence is a failure."""
    folder = fixtures_dir() / "coco"
    if not (folder / "test_coco.json").is_file():
        reason = (
            f"real COCO fixtures not found at {folder} (set {FIXTURES_ENV} to the folder that "
            "holds coco/test_coco.json)"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return folder


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory) -> Path:
    """A small synthetic COCO-format dataset, generated once per test session."""
    from data_prep.synthetic import generate

    out = tmp_path_factory.mktemp("synthetic")
    generate(out, seed=7, train_images=24, val_images=12, progress=False)
    return out


@pytest.fixture(scope="session")
def shards(synthetic_dataset, tmp_path_factory):
    """The synthetic set sharded at a small detail, for training runs."""
    from pose.data.sharding import ShardRequest, shard_dataset

    out = tmp_path_factory.mktemp("engine")
    for split in ("train", "val"):
        request = ShardRequest(
            annotations=synthetic_dataset / "annotations" / f"person_keypoints_{split}.json",
            images=synthetic_dataset / "images" / split,
            out=out / split,
            split=split,
            detail=(96, 64),
            progress=False,
        )
        shard_dataset(request)
    return out


@pytest.fixture(scope="session")
def tiny_overrides():
    """A function: the overrides of a seconds-long training run on `shards` into `run_dir`
    (a tiny ResNet-18 at 96x64, fp32, no wandb), updated by `extra`."""

    def overrides(shards: Path, run_dir: Path, **extra) -> list[str]:
        values = {
            "data.train_shards": shards / "train",
            "data.val_shards": shards / "val",
            "data.val_ann": shards.parent.parent / "dummy",
            "data.image_size": "[96,64]",
            "data.num_workers": 0,
            "model.backbone": "resnet18",
            "model.deconv_filters": 32,
            "train.batch_size": 8,
            "train.budget_minutes": 0,  # configs/demo.yaml trains to a wall-clock budget
            "train.warmup_steps": 2,
            "train.log_every": 2,
            "train.checkpoint_every": 4,
            "train.eval_every": 0,
            "train.precision": "fp32",
            "log.wandb": "off",
            "run.dir": run_dir,
        }
        values.update(extra)
        return [f"{k}={v}" for k, v in values.items()]

    return overrides


@pytest.fixture(scope="session")
def clean_env():
    """A function: this process's environment without the distributed variables an in-process
    test set, one intra-op thread, unbuffered output, updated by `extra`."""

    def environment(**extra) -> dict:
        from pose.engine.distributed import TORCHRUN_VARS

        env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARS}
        return {**env, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}

    return environment


@pytest.fixture(scope="session")
def run_python(clean_env):
    """A function: run `python ARGS` from the repository root in a clean environment."""

    def run(args: list[str], env: dict | None = None, timeout: float = 600):
        return subprocess.run(
            [sys.executable, *map(str, args)],
            cwd=ROOT,
            env=clean_env(**(env or {})),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    return run


@pytest.fixture(scope="session")
def sweep_cli(run_python):
    """A function: run `launch/sweep.py ARGS` (env: extra variables)."""

    def run(*args, env: dict | None = None, timeout: float = 900):
        return run_python(["launch/sweep.py", *args], env=env, timeout=timeout)

    return run
