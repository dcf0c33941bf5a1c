"""Sweep files: a base config, the runs (a grid and/or a list of dotted overrides) and the Slurm
resources, read into one typed tree with the same loader and error messages as run configs.

    base: configs/coco_res50_256x192.yaml
    name: attention              # the wandb group and the sweep folder's name
    overrides: [train.epochs=140] # applied to every run
    grid:                        # every combination, in this order
      model.attention: [none, holistic, partwise]
      seed: [0, 1, 2]
    runs: []                     # optional override lists, each combined with each grid point
    slurm: {partition: gpu, nodes: 1, gpus_per_node: 8, time_min: 4320, ...}
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pose.config import (
    Config,
    ConfigError,
    build_dataclass,
    check_non_negative,
    check_positive,
    fail_key,
    find_config,
    layer_overrides,
    load_config,
    parse_override,
    read_yaml_mapping,
)


@dataclass
class SlurmResources:
    """What each run asks of Slurm. Nothing here is particular to one cluster: leave a field
    empty (or 0) and Slurm's defaults apply."""

    partition: str = ""
    account: str = ""
    qos: str = ""
    constraint: str = ""
    nodes: int = 1
    gpus_per_node: int = 0
    tasks_per_node: int = 0  # 0: one task per GPU (gpus_per_node), or 1 without GPUs
    cpus_per_task: int = 4
    mem_gb: float = 0.0  # per node; 0 = the cluster's default
    time_min: int = 60
    max_running: int = 0  # cap on array tasks running at once; 0 = no cap
    max_requeues: int = 3  # after preemptions or time-outs; then the run is left as it is
    signal_delay_s: int = 120  # the time-out signal comes this long before the limit
    sbatch: dict[str, Any] = field(default_factory=dict)  # extra options: {exclusive: true, ...}
    setup: list[str] = field(default_factory=list)  # shell lines run before srun (module load..)

    def check(self) -> None:
        for key in ("nodes", "cpus_per_task", "time_min"):
            check_positive(f"slurm.{key}", getattr(self, key))
        for key in (
            "gpus_per_node",
            "tasks_per_node",
            "mem_gb",
            "max_running",
            "max_requeues",
            "signal_delay_s",
        ):
            check_non_negative(f"slurm.{key}", getattr(self, key))
        if self.gpus_per_node and self.tasks_per_node not in (0, self.gpus_per_node):
            fail_key(
                "slurm.tasks_per_node",
                f"{self.tasks_per_node}: runs use one task per GPU, "
                f"so leave it 0 or set it to gpus_per_node ({self.gpus_per_node})",
            )

    @property
    def tasks(self) -> int:
        """Tasks (processes) per node."""
        return self.tasks_per_node or self.gpus_per_node or 1


@dataclass
class SweepFile:
    base: str = ""
    name: str = ""
    overrides: list[str] = field(default_factory=list)
    grid: dict[str, list[Any]] = field(default_factory=dict)
    runs: list[list[str]] = field(default_factory=list)
    slurm: SlurmResources = field(default_factory=SlurmResources)

    def check(self) -> None:
        if not self.base:
            fail_key("base", "name the base config file (e.g. configs/demo.yaml)")
        for key, values in self.grid.items():
            if not values:
                fail_key(f"grid.{key}", "needs at least one value")


@dataclass(frozen=True)
class PlannedRun:
    name: str
    overrides: tuple[str, ...]  # the sweep's common overrides, then this run's own
    varying: dict[str, Any]  # the values that tell this run from the others


@dataclass
class Sweep:
    path: Path
    spec: SweepFile
    base: Path
    runs: list[PlannedRun]

    @property
    def name(self) -> str:
        return self.spec.name or self.path.stem


def load_sweep(path: str | Path, extra_overrides: list[str] = ()) -> Sweep:
    """Read a sweep file, expand its runs and validate every run's config now, before anything
    is submitted (a typo fails here, naming the run and the key)."""
    path = find_config(path)
    spec = build_dataclass(SweepFile, read_yaml_mapping(path))
    base = _resolve_base(spec.base, path)
    runs = plan_runs(spec, list(extra_overrides))
    for run in runs:
        try:
            load_config(base, list(run.overrides))
        except ConfigError as e:
            raise ConfigError(f"sweep '{path}', run '{run.name}': {e}") from None
    return Sweep(path, spec, base, runs)


def plan_runs(spec: SweepFile, extra_overrides: list[str] = ()) -> list[PlannedRun]:
    """The grid's product times the list of runs, each with a readable unique name."""
    keys = list(spec.grid)
    points = [dict(zip(keys, values)) for values in itertools.product(*spec.grid.values())]
    listed = spec.runs or [[]]
    combos = []
    for point in points:
        for extra in listed:
            own = [f"{k}={_yaml_value(v)}" for k, v in point.items()] + list(extra)
            combos.append(own)
    parsed = [dict(parse_override(o) for o in own) for own in combos]
    varying_keys = [
        k
        for k in dict.fromkeys(k for p in parsed for k in p)
        if len({repr(p.get(k)) for p in parsed}) > 1
    ]
    names = _names([{k: p[k] for k in varying_keys if k in p} for p in parsed])
    return [
        PlannedRun(
            name,
            tuple(layer_overrides(spec.overrides, extra_overrides, own)),
            {k: p[k] for k in varying_keys if k in p},
        )
        for name, own, p in zip(names, combos, parsed)
    ]


def run_config(sweep: Sweep, run: PlannedRun, run_dir: Path) -> Config:
    return load_config(sweep.base, run_overrides(sweep, run, run_dir))


def run_overrides(sweep: Sweep, run: PlannedRun, run_dir: Path) -> list[str]:
    """All of a run's overrides of the base config: the sweep's and its own, then what the
    sweep sets on each run: its folder, and the wandb group, name and tags (the varying values,
    e.g. attention=holistic), so the wandb UI can group and compare runs."""
    tags = [f"{k.rsplit('.', 1)[-1]}={v}" for k, v in run.varying.items()]
    sweep_sets = [
        f"run.dir={run_dir}",
        f"log.group={sweep.name}",
        f"log.name={sweep.name}/{run.name}",
        f"log.tags={_yaml_value(tags)}",
    ]
    return layer_overrides(run.overrides, sweep_sets)


def _resolve_base(base: str, sweep_path: Path) -> Path:
    """A relative base is looked up from the current folder, beside the sweep file, then among
    the shipped configs."""
    beside = sweep_path.parent / base
    if not Path(base).is_file() and beside.is_file():
        return beside.resolve()
    try:
        return find_config(base).resolve()
    except ConfigError:
        raise ConfigError(
            f"sweep '{sweep_path}': base config '{base}' not found (looked in the "
            f"current folder, beside the sweep file and among the shipped configs)"
        ) from None


def _yaml_value(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("\n...")


def _names(varying: list[dict[str, Any]]) -> list[str]:
    """'attention-holistic_seed-1' from the varying values; the short key unless two varying keys
    share it; a numeric suffix where names would still collide."""
    keys = list(dict.fromkeys(k for v in varying for k in v))
    leaves = [k.rsplit(".", 1)[-1] for k in keys]
    short = {k: (leaf if leaves.count(leaf) == 1 else k) for k, leaf in zip(keys, leaves)}
    names, seen = [], {}
    for values in varying:
        parts = [f"{short[k]}-{_slug(v)}" for k, v in values.items()]
        name = "_".join(parts)[:120] or "run"
        seen[name] = seen.get(name, 0) + 1
        names.append(name if seen[name] == 1 else f"{name}-{seen[name]}")
    return names


def _slug(value: Any) -> str:
    text = _yaml_value(value) if not isinstance(value, str) else value
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", text).strip("-") or "x"
