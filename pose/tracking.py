"""Run logging behind one small interface: `metrics.jsonl` in the run directory (always; the
source for local tools and tests) and wandb (online with credentials, else offline; never
blocking; `log.wandb: off` disables it). Only rank 0 logs.

metrics.jsonl holds one JSON record a line, each a typed record of this module: a
`StartRecord` at each (re)start (split "run"), a `TrainRecord` every log.every_steps steps
(split "train"), a `ValRecord` after each evaluation (split "val"). Writers build these; readers
ask `read_run_metrics`, which gives them back typed."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import yaml

from pose.config import LogConfig
from pose.files import atomic_write
from pose.folders import RunFolder


@dataclass
class MetricsRecord:
    """One line of metrics.jsonl: the step it follows and the epochs complete by then."""

    split: ClassVar[str] = ""
    step: int
    epoch: float

    def to_json(self) -> dict:
        fields = {k: v for k, v in dataclasses.asdict(self).items() if v is not None}
        head = {"step": fields.pop("step"), "epoch": fields.pop("epoch"), "split": self.split}
        return head | fields


@dataclass
class StartRecord(MetricsRecord):
    """A (re)start: what compare and sweep status read besides the metrics."""

    split: ClassVar[str] = "run"
    params: int = 0
    precision: str = ""
    resumed: bool = False
    steps_per_epoch: int = 0
    total_steps: int = 0  # 0: a wall-clock budget not measured yet
    budget_images: int = 0
    budget_minutes: float = 0.0
    world_size: int = 1
    hosts: list[str] = field(default_factory=list)  # of each rank
    launcher: str = ""


@dataclass
class TrainRecord(MetricsRecord):
    """The log interval ending at `step`, all ranks together where a sum means something."""

    split: ClassVar[str] = "train"
    loss: float = float("nan")
    lr: float = 0.0
    images_per_s: float = 0.0
    images_per_s_per_device: float = 0.0
    data_wait: float = 0.0  # the share of the interval spent waiting for batches
    step_time: float = 0.0  # seconds per micro-batch
    memory_gb: float | None = None
    skipped_steps: int = 0  # fp16 overflows skipped by the loss scaler
    images: int | None = None  # seen so far, all ranks
    budget_used: float | None = None  # of a budget, once its length is known
    bad_samples: int | None = None  # skipped so far for not decoding, all ranks


@dataclass
class ValRecord(MetricsRecord):
    """An evaluation after `step`: COCO metrics (AP, AP50, ...), instances and skips."""

    split: ClassVar[str] = "val"
    metrics: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"step": self.step, "epoch": self.epoch, "split": self.split, **self.metrics}

    @property
    def ap(self) -> float | None:
        return self.metrics.get("AP")


RECORD_TYPES = {cls.split: cls for cls in (StartRecord, TrainRecord, ValRecord)}


def parse_record(data: dict) -> MetricsRecord:
    """A record from its JSON (a field it does not know, from another version, is left out;
    a val record keeps every metric)."""
    cls = RECORD_TYPES[data["split"]]
    values = {k: v for k, v in data.items() if k != "split"}
    if cls is ValRecord:
        step, epoch = values.pop("step"), values.pop("epoch", 0)
        return ValRecord(step, epoch, {k: v for k, v in values.items() if _is_number(v)})
    known = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in known})


@dataclass
class RunMetrics:
    """A run's metrics.jsonl, typed: its starts, train and val records, in order."""

    starts: list[StartRecord] = field(default_factory=list)
    train: list[TrainRecord] = field(default_factory=list)
    val: list[ValRecord] = field(default_factory=list)

    @classmethod
    def of(cls, records: list[MetricsRecord]) -> RunMetrics:
        found = cls()
        for record in records:
            {"run": found.starts, "train": found.train, "val": found.val}[record.split].append(
                record
            )
        return found

    @property
    def scored(self) -> list[ValRecord]:
        return [r for r in self.val if r.ap is not None]

    @property
    def steps_per_epoch(self) -> int:
        return self.starts[-1].steps_per_epoch if self.starts else 0


def read_run_metrics(run_dir: str | Path) -> RunMetrics:
    """The run's records, typed (each step once: see `read_metrics`)."""
    return RunMetrics.of([parse_record(r) for r in read_metrics(run_dir)])


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


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

    def log(self, record: MetricsRecord) -> None:
        """Append one record to metrics.jsonl and wandb."""
        if not self.enabled:
            return
        if isinstance(record, ValRecord) and record.ap is not None and self.run is not None:
            best = max(record.ap, self.run.summary.get("val/best_AP", -1.0))
            self.run.summary["val/best_AP"] = best  # a run's best, for wandb's run table
        record = record.to_json()
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
    run = read_run_metrics(run_dir)
    if not run.train:
        return f"{run_dir}: no training step logged yet"
    last, start = run.train[-1], run.starts[-1]
    parts = [f"{last.step} steps"]
    if last.images is not None:
        parts.append(f"{last.images:,} images")
    parts.append(f"{last.step / start.steps_per_epoch:.1f} epochs")
    if start.budget_minutes:
        parts.append(f"budget {start.budget_minutes:g} min")
    elif start.budget_images:
        parts.append(f"budget {start.budget_images:,} images")
    if metrics is None:
        metrics = run.val[-1].metrics if run.val else {}
    ap = f"AP {metrics['AP']:.3f}" if "AP" in metrics else "not evaluated"
    return f"{run_dir}: trained {', '.join(parts)}; {ap}"
