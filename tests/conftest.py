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
