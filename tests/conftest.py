"""Shared test fixtures: the real COCO fixtures (outside the project) and a small synthetic set."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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
    from data_prep import shard_coco

    out = tmp_path_factory.mktemp("engine")
    for split in ("train", "val"):
        ann = synthetic_dataset / "annotations" / f"person_keypoints_{split}.json"
        images = synthetic_dataset / "images" / split
        assert (
            shard_coco.main(
                [
                    "--ann",
                    str(ann),
                    "--images",
                    str(images),
                    "--out",
                    str(out / split),
                    "--split",
                    split,
                    "--detail",
                    "96x64",
                ]
            )
            == 0
        )
    return out


def tiny_overrides(shards, run_dir, **extra):
    values = {
        "data.train_shards": shards / "train",
        "data.val_shards": shards / "val",
        "data.val_ann": shards.parent.parent / "dummy",
        "data.image_size": "[96,64]",
        "data.num_workers": 0,
        "model.backbone": "resnet18",
        "model.deconv_filters": 32,
        "train.batch_size": 8,
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


def clean_env(**extra) -> dict:
    """This process's environment without the distributed variables an in-process test set."""
    from pose.engine.distributed import TORCHRUN_VARS

    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARS}
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}
