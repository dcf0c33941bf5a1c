"""Checkpoints of a training run: when to save, what is saved, restoring the latest, pruning,
marking the best, and finding the weights a `--checkpoint` argument means.

A checkpoint is DeepSpeed's state (model, optimizer, lr schedule, loss scaler), written by the
engine adapter under `checkpoints/<tag>/`, plus our client state (the optimizer step, best AP,
RNG states). `checkpoints/latest` is pointed at a tag only after every rank has written its
part; old tags are pruned keep-last-k, never the latest or the best.
"""

from __future__ import annotations

import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pose.config import TrainConfig
from pose.engine.deepspeed_adapter import MODEL_STATES_FILE, TrainEngine
from pose.engine.schedule import StepPlan
from pose.run_folder import RunFolder

CLIENT_KEY = "posescale"  # our state inside DeepSpeed's client state


class CheckpointError(RuntimeError):
    """A checkpoint cannot be found or restored; the message names the folder."""


@dataclass
class RunState:
    """What the loop counts; the epoch and the batch inside it follow from `step` (the
    manifest fixes the steps per epoch)."""

    step: int = 0  # optimizer steps done
    best_ap: float = -1.0


def tag_for(step: int) -> str:
    return f"step-{step:09d}"


class Checkpointer:
    """Saves every `checkpoint_every` steps, at each epoch end, at the last step and when the
    run is asked to stop: at most one checkpoint per step, so a finished one is never written
    again."""

    def __init__(
        self, run: RunFolder, engine: TrainEngine, cfg: TrainConfig, plan: StepPlan, is_main: bool
    ):
        self.run, self.engine, self.cfg, self.plan, self.is_main = run, engine, cfg, plan, is_main

    def due(self, step: int, stopping: bool) -> bool:
        every = step % self.cfg.checkpoint_every == 0
        return stopping or every or self.plan.ends_epoch(step) or self.plan.is_last(step)

    def save(self, state: RunState) -> str:
        """Write a checkpoint of `state` on every rank (a collective); returns its tag."""
        tag = tag_for(state.step)
        epoch, batch = divmod(state.step, self.plan.steps_per_epoch)
        client = {
            "global_step": state.step,
            "best_ap": state.best_ap,
            "epoch": epoch,  # for people reading the file; restoring derives them from the step
            "step_in_epoch": batch * self.cfg.grad_accum,
            "rng": rng_state(),
        }
        self.engine.save(self.run.checkpoints, tag, {CLIENT_KEY: client})
        if self.is_main:
            self.run.set_latest(tag)
            prune(self.run, self.cfg.keep_last)
        return tag

    def mark_best(self, tag: str) -> None:
        if self.is_main:
            self.run.set_best(tag)

    def restore(self) -> RunState | None:
        """Restore the engine and RNGs from the latest checkpoint; None when there is none."""
        tag = self.run.latest_tag()
        if tag is None:
            return None
        client = self.engine.load(self.run.checkpoints, tag)
        if client is None or CLIENT_KEY not in client:
            raise CheckpointError(f"could not restore checkpoint {self.run.checkpoint(tag)}")
        state = client[CLIENT_KEY]
        set_rng_state(state["rng"])
        return RunState(step=int(state["global_step"]), best_ap=float(state["best_ap"]))


def prune(run: RunFolder, keep_last: int) -> None:
    """Remove all but the newest `keep_last` checkpoints, keeping latest and best."""
    pinned = {run.latest_tag(), run.best_tag()}
    for tag in run.checkpoint_tags()[:-keep_last]:
        if tag not in pinned:
            shutil.rmtree(run.checkpoint(tag), ignore_errors=True)


def resolve_checkpoint(path: str | Path) -> Path:
    """The weights file a `--checkpoint` argument means: a run folder (its best checkpoint,
    else its latest), a checkpoint folder, or a state-dict file."""
    path = Path(path)
    if path.is_file():
        return path
    if (path / MODEL_STATES_FILE).is_file():
        return path / MODEL_STATES_FILE
    run = RunFolder(path)
    for tag in (run.best_tag(), run.latest_tag()):
        if tag and (run.checkpoint(tag) / MODEL_STATES_FILE).is_file():
            return run.checkpoint(tag) / MODEL_STATES_FILE
    raise CheckpointError(
        f"'{path}' is neither a state-dict file, a checkpoint folder (with {MODEL_STATES_FILE}), "
        "nor a run folder with checkpoints/best or checkpoints/latest"
    )


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
