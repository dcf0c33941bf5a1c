"""Checkpoints of a training run: when to save, what is saved, restoring the latest, pruning and
marking the best. (What a `--checkpoint` argument names for inference is pose.folders'.)

The checkpointer decides when it acts (the loop only reports each step): every
`checkpoint.every_steps` steps, at each epoch end, after each evaluation, at the last step and
when the run is asked to stop. Before it saves, the ranks' BatchNorm statistics are averaged
(one set, evaluated and saved) and the run is checked healthy; an evaluation that scored at least
the best AP so far marks the checkpoint saved after it as `best`, which therefore always names
weights that were scored.

A checkpoint is DeepSpeed's state (model, optimizer, lr schedule, loss scaler), written by the
engine adapter under `checkpoints/<tag>/`, plus our client state (the optimizer step, best AP,
RNG states). `checkpoints/latest` is pointed at a tag only after every rank has written its
part; old tags are pruned keep-last-k, never the latest or the best.
"""

from __future__ import annotations

import random
import shutil
from dataclasses import dataclass

import numpy as np
import torch

from pose.config import CheckpointConfig
from pose.distributed import BatchNormAverage, DistEnv, any_rank, is_collective_failure
from pose.engine.deepspeed_adapter import TrainEngine
from pose.engine.errors import CheckpointError, TrainingError
from pose.engine.schedule import StepPlan
from pose.engine.step_metrics import StepMetrics
from pose.files import out_of_space, refused_pickle
from pose.folders import RunFolder

CLIENT_KEY = "posescale"  # our state inside DeepSpeed's client state


@dataclass
class RunState:
    """What the loop counts; the epoch and the batch inside it follow from `step` (the
    manifest fixes the steps per epoch)."""

    step: int = 0  # optimizer steps done
    best_ap: float = -1.0


def tag_for(step: int) -> str:
    return f"step-{step:09d}"


class Checkpointer:
    """At most one checkpoint per step, so a finished one is never written again."""

    def __init__(
        self,
        run: RunFolder,
        engine: TrainEngine,
        cfg: CheckpointConfig,
        plan: StepPlan,
        env: DistEnv,
        batchnorm: BatchNormAverage,
        grad_accum: int,
    ):
        self.run, self.engine, self.cfg, self.plan, self.env = run, engine, cfg, plan, env
        self.batchnorm, self.grad_accum = batchnorm, grad_accum

    def due(self, step: int, stopping: bool, evaluated: bool = False) -> bool:
        every = step % self.cfg.every_steps == 0
        ends = self.plan.ends_epoch(step) or self.plan.is_last(step)
        return stopping or evaluated or every or ends

    def after_step(
        self, state: RunState, stopping: bool, evaluation: dict | None, metrics: StepMetrics
    ) -> str | None:
        """Save when due (an `evaluation` this step makes it due), after BatchNorm averaging
        and a health check; mark it best when the evaluation's AP is the best so far. Returns
        the tag saved, or None."""
        if evaluation is not None:
            ap = evaluation.get("AP", -1.0)  # the same on all ranks
            improved = ap >= state.best_ap
            state.best_ap = max(state.best_ap, ap)
        if not self.due(state.step, stopping, evaluation is not None):
            return None
        self.batchnorm.at(state.step)
        self._check_healthy(metrics, state.step)
        tag = self.save(state)
        if evaluation is not None and improved:
            self.mark_best(tag)
        return tag

    def _check_healthy(self, metrics: StepMetrics, step: int) -> None:
        """No non-finite loss since the last log step, no non-finite weight, on any rank; a
        run that fails this stops with the last good checkpoint as `latest`."""
        bad_loss = int(metrics.first_bad)  # a host sync, once per checkpoint
        finite = torch.stack([w.isfinite().all() for w in self.engine.local_weights()])
        if any_rank(bad_loss >= 0 or not bool(finite.all()), self.env):
            where = f"at step {bad_loss}" if bad_loss >= 0 else f"by step {step}"
            raise TrainingError(
                f"loss or weights are not finite {where}; no checkpoint of them is written, "
                f"the last good one is {self.run.latest_tag() or 'none'} in {self.run.checkpoints}"
            )

    def save(self, state: RunState) -> str:
        """Write a checkpoint of `state` on every rank (a collective); returns its tag. A
        failed write (disk full, say) removes what it wrote and keeps `latest` as it was."""
        tag = tag_for(state.step)
        epoch, batch = divmod(state.step, self.plan.steps_per_epoch)
        client = {
            "global_step": state.step,
            "best_ap": state.best_ap,
            "epoch": epoch,  # for people reading the file; restoring derives them from the step
            "step_in_epoch": batch * self.grad_accum,
            "rng": rng_state(),
        }
        try:
            self.engine.save(self.run.checkpoints, tag, {CLIENT_KEY: client})
        except (OSError, RuntimeError) as e:
            shutil.rmtree(self.run.checkpoint(tag), ignore_errors=True)
            if is_collective_failure(e):
                raise  # a peer, not the storage: reported as a failed collective
            kept = self.run.latest_tag() or "none"
            why = out_of_space(e, self.run.checkpoints, self._checkpoint_bytes()) or _reason(e)
            raise TrainingError(
                f"could not write checkpoint {self.run.checkpoint(tag)}: {why}; the previous "
                f"checkpoint ({kept}) is kept"
            ) from None
        if self.env.is_main:
            self.run.set_latest(tag)
            prune(self.run, self.cfg.keep_last)
        return tag

    def _checkpoint_bytes(self) -> int:
        """The size of the last checkpoint written, else of the weights and Adam's two moments."""
        latest = self.run.latest_tag()
        if latest is not None and self.run.checkpoint(latest).is_dir():
            files = self.run.checkpoint(latest).rglob("*")
            return sum(f.stat().st_size for f in files if f.is_file())
        return 3 * 4 * self.engine.parameter_count()

    def mark_best(self, tag: str) -> None:
        if self.env.is_main:
            self.run.set_best(tag)

    def restore(self) -> RunState | None:
        """Restore the engine and RNGs from the latest checkpoint; None when there is none. A
        latest checkpoint that cannot be read (missing, truncated, not ours, or a pickle that
        would run code) is passed over for the newest older one that can, saying so."""
        latest = self.run.latest_tag()
        if latest is None:
            return None
        older = [t for t in self.run.checkpoint_tags() if t < latest and t.startswith("step-")]
        problems = []
        for tag in [latest, *reversed(older)]:
            try:
                state = self._restore(tag)
            except CheckpointError as e:
                problems.append(str(e))
                print(f"train: {e}; trying an older checkpoint", flush=True)
                continue
            if tag != latest:
                print(f"train: resuming from {self.run.checkpoint(tag)} instead", flush=True)
            return state
        raise CheckpointError(
            f"no checkpoint in {self.run.checkpoints} can be restored: " + "; ".join(problems)
        )

    def _restore(self, tag: str) -> RunState:
        folder = self.run.checkpoint(tag)
        if not folder.is_dir():
            raise CheckpointError(f"checkpoint {folder} does not exist")
        try:
            client = self.engine.load(self.run.checkpoints, tag)
        except Exception as e:  # unpickling, shapes, truncated files: errors of many kinds
            raise CheckpointError(f"checkpoint {folder} cannot be restored: {_reason(e)}") from None
        if client is None or not isinstance(client.get(CLIENT_KEY), dict):
            raise CheckpointError(f"checkpoint {folder} holds no posescale state")
        state = client[CLIENT_KEY]
        set_rng_state(state["rng"])
        return RunState(step=int(state["global_step"]), best_ap=float(state["best_ap"]))


def _reason(error: Exception) -> str:
    """The start of an error message, with its type; a hint where the model does not fit."""
    refused = refused_pickle(error)
    if refused:
        return f"{type(error).__name__}: {refused}"
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    text = f"{type(error).__name__}: {' '.join(lines[:3])}"[:500]
    if "size mismatch" in text or "Missing key" in text or "Unexpected key" in text:
        text += " (the model config does not fit this checkpoint: compare it with the run's config)"
    return text


def prune(run: RunFolder, keep_last: int) -> None:
    """Remove all but the newest `keep_last` checkpoints, keeping latest and best."""
    pinned = {run.latest_tag(), run.best_tag()}
    for tag in run.checkpoint_tags()[:-keep_last]:
        if tag not in pinned:
            shutil.rmtree(run.checkpoint(tag), ignore_errors=True)


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
