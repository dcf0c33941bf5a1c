"""Checkpoints in the run directory: DeepSpeed's own (model, optimizer, scheduler, loss scaler)
plus our client state (epoch, step in epoch, global step, best AP, RNG states), under
`checkpoints/<tag>/`. DeepSpeed points `checkpoints/latest` at a tag only after every file of it
is written; `checkpoints/best` names the best tag by AP. Old tags are pruned keep-last-k."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import torch

from pose.config import atomic_write_text

CHECKPOINTS = "checkpoints"
CLIENT_KEY = "posescale"  # our state inside DeepSpeed's client state


def tag_for(global_step: int, suffix: str = "") -> str:
    return f"step-{global_step:09d}{suffix}"


def save_checkpoint(
    engine,
    run_dir: Path,
    global_step: int,
    state: dict,
    keep_last: int,
    is_main: bool,
    suffix: str = "",
) -> str:
    """Save on every rank (a collective), then prune on rank 0. Returns the tag. A finished
    checkpoint is never rewritten in place (a kill then would leave `latest` pointing at a
    half-written file): a second save at the same step takes a `suffix`."""
    tag = tag_for(global_step, suffix)
    client = {CLIENT_KEY: {**state, "rng": rng_state()}}
    engine.save_checkpoint(str(run_dir / CHECKPOINTS), tag=tag, client_state=client)
    if is_main:
        prune(run_dir, keep_last)
    return tag


def prune(run_dir: Path, keep_last: int) -> None:
    folder = run_dir / CHECKPOINTS
    pinned = {_read(folder / "latest"), _read(folder / "best")}
    tags = sorted(p.name for p in folder.glob("step-*") if p.is_dir())
    for tag in tags[:-keep_last]:
        if tag not in pinned:
            shutil.rmtree(folder / tag, ignore_errors=True)


def mark_best(run_dir: Path, tag: str) -> None:
    atomic_write_text(run_dir / CHECKPOINTS / "best", tag)


def has_checkpoint(run_dir: Path) -> bool:
    return (run_dir / CHECKPOINTS / "latest").is_file()


def load_latest(engine, run_dir: Path) -> dict:
    """Restore the engine from the latest checkpoint; returns our client state."""
    path, client = engine.load_checkpoint(str(run_dir / CHECKPOINTS))
    if path is None or CLIENT_KEY not in (client or {}):
        raise RuntimeError(f"could not load the latest checkpoint in {run_dir / CHECKPOINTS}")
    state = dict(client[CLIENT_KEY])
    set_rng_state(state.pop("rng"))
    return state


def rng_state() -> dict:
    """RNG states in types `torch.load(weights_only=True)` accepts (no numpy arrays), so that
    checkpoints load without unpickling arbitrary objects."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "python": random.getstate(),
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(state["python"])


def _read(path: Path) -> str | None:
    return path.read_text().strip() if path.is_file() else None
