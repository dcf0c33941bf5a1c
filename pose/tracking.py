"""Run logging behind one small interface: `metrics.jsonl` in the run directory (always; the
source for local tools and tests) and wandb (online with credentials, else offline; never
blocking; `log.wandb: off` disables it). Only rank 0 logs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml

from pose.config import LogConfig
from pose.files import atomic_write
from pose.folders import RunFolder


def wandb_mode(setting: str, env: dict | None = None) -> str:
    """auto: online when an API key or a netrc entry is there, else offline."""
    if setting != "auto":
        return setting
    env = os.environ if env is None else env
    if env.get("WANDB_API_KEY"):
        return "online"
    netrc = Path(env.get("NETRC", Path.home() / ".netrc"))
    try:
        return "online" if "api.wandb.ai" in netrc.read_text() else "offline"
    except OSError:
        return "offline"


class Tracker:
    """metrics.jsonl of `run` and a wandb run as `cfg` (log section) says, with the run's
    resolved config (its config.yaml, written before) as wandb's run config. Disabled on ranks
    other than 0.

    A run resumed at `resume_step` will log the steps after it again: the records of those
    steps that the interrupted run wrote are dropped from metrics.jsonl first, so readers see
    each step once (wandb ignores steps below its last one, so it keeps the first records)."""

    def __init__(self, cfg: LogConfig, run: RunFolder, enabled: bool, resume_step: int = 0):
        self.enabled = enabled
        self.path = run.metrics
        self.run = None
        if not enabled:
            return
        if resume_step and self.path.is_file():
            kept = [r for r in read_metrics(run.path) if r["step"] <= resume_step]
            atomic_write(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        mode = wandb_mode(cfg.wandb)
        if mode != "off":
            import wandb

            self.run = wandb.init(
                project=cfg.project,
                entity=cfg.entity or None,
                group=cfg.group or None,
                name=cfg.name or run.path.name,
                tags=cfg.tags or None,
                config=_recorded_config(run),
                dir=str(run.path),
                mode=mode,
                resume="allow",
                id=run.wandb_id(),
                settings=wandb.Settings(init_timeout=60, silent=True),
            )

    def log(self, record: dict) -> None:
        """Append one record (needs `step`, `epoch`, `split`) to metrics.jsonl and wandb."""
        if not self.enabled:
            return
        with open(self.path, "a") as f:  # a resumed run appends, never truncates
            f.write(json.dumps(record) + "\n")
        if self.run is not None:
            split = record["split"]
            values = {
                f"{split}/{k}": v
                for k, v in record.items()
                if k not in ("step", "split") and isinstance(v, int | float)
            }
            self.run.log(values, step=record["step"])

    def log_images(self, step: int, images: dict) -> None:
        """PNG pictures (name -> path) to wandb."""
        if self.run is not None:
            import wandb

            self.run.log({k: wandb.Image(str(v)) for k, v in images.items()}, step=step)

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()


def _recorded_config(run: RunFolder) -> dict:
    """The run's config.yaml as a plain mapping (wandb's run config); {} before there is one."""
    if not run.config.is_file():
        return {}
    return yaml.safe_load(run.config.read_text()) or {}


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The records of a run's metrics.jsonl in order; of train and val records logged twice
    for one step (by an older version, before a resume), only the last."""
    path = RunFolder(run_dir).metrics
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    last = {(r["split"], r["step"]): i for i, r in enumerate(records)}
    return [
        r
        for i, r in enumerate(records)
        if r["split"] == "run" or last[(r["split"], r["step"])] == i
    ]


def run_summary(run_dir: str | Path, metrics: dict | None = None) -> str:
    """One line on what a run trained and reached: steps, images (all ranks), epochs, the budget
    it used if it had one, and AP from `metrics` (an evaluation's) or its last val record."""
    records = read_metrics(run_dir)
    train = [r for r in records if r["split"] == "train"]
    if not train:
        return f"{run_dir}: no training step logged yet"
    last, start = train[-1], [r for r in records if r["split"] == "run"][-1]
    parts = [f"{last['step']} steps"]
    if "images" in last:  # logged since budgets exist
        parts.append(f"{last['images']:,} images")
    parts.append(f"{last['step'] / start['steps_per_epoch']:.1f} epochs")
    if start.get("budget_minutes"):
        parts.append(f"budget {start['budget_minutes']:g} min")
    elif start.get("budget_images"):
        parts.append(f"budget {start['budget_images']:,} images")
    if metrics is None:
        val = [r for r in records if r["split"] == "val"]
        metrics = val[-1] if val else {}
    ap = f"AP {metrics['AP']:.3f}" if "AP" in metrics else "not evaluated"
    return f"{run_dir}: trained {', '.join(parts)}; {ap}"
