"""Comparing the runs of a sweep: a markdown table of final and best AP and friends (mean and
spread over seeds) and PNG curves, from the runs' own metrics files (offline, no wandb needed)
or from the wandb API."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from pose.config import read_yaml_mapping
from pose.eval.coco_eval import METRIC_NAMES
from pose.folders import RunFolder, SweepFolder
from pose.tracking import MetricsRecord, RunMetrics, parse_record, read_run_metrics
from pose.viz.curves import spread_plot

TABLE_METRICS = ("AP", "AP50", "AP75", "APm", "APl", "AR")
NOT_VARIANTS = ("seed", "run.dir", "log.")  # keys that never tell variants apart


class CompareError(RuntimeError):
    """Nothing to compare, or a comparison key that the runs do not have."""


@dataclass
class RunRecord:
    name: str
    config: dict[str, Any]  # the resolved config, nested
    metrics: RunMetrics = field(default_factory=RunMetrics)  # its metrics.jsonl, typed
    folder: Path | None = None  # the run folder (None: read from wandb)

    def value(self, dotted: str) -> Any:
        node: Any = self.config
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                raise CompareError(f"run '{self.name}' has no config key '{dotted}'")
            node = node[part]
        return node

    def epoch_of(self, record: MetricsRecord) -> float:
        spe = self.metrics.steps_per_epoch
        return record.step / spe if spe else float(record.epoch)


def local_runs(sweep_dir: Path) -> list[RunRecord]:
    """Every run folder of a sweep folder (its manifest's), or every started run under any
    other folder."""
    sweep = SweepFolder(sweep_dir)
    try:
        folders = sweep.run_folders() if sweep.is_sweep() else RunFolder.all_under(sweep_dir)
    except ValueError as e:
        raise CompareError(str(e)) from None
    runs = []
    for run in folders:
        if not run.has_started():
            continue
        config = read_yaml_mapping(run.config)
        runs.append(RunRecord(run.path.name, config, read_run_metrics(run.path), run.path))
    if not runs:
        raise CompareError(f"no run under {sweep_dir} has started (written metrics) yet")
    return runs


def wandb_runs(path: str) -> list[RunRecord]:
    """The runs of one wandb group, `ENTITY/PROJECT/GROUP`, with their history turned back into
    metrics records as pose.tracking writes them (wandb keys are `split/metric`)."""
    parts = path.split("/")
    if len(parts) != 3 or not all(parts):
        raise CompareError(f"--wandb wants ENTITY/PROJECT/GROUP, got '{path}'")
    import wandb

    entity, project, group = parts
    api = wandb.Api(timeout=60)
    runs = []
    for run in api.runs(f"{entity}/{project}", filters={"group": group}):
        records = []
        for row in run.scan_history():
            for split in ("run", "train", "val"):
                values = {
                    k.split("/", 1)[1]: v
                    for k, v in row.items()
                    if k.startswith(f"{split}/") and v is not None
                }
                if values:
                    step, epoch = row.get("_step", 0), values.pop("epoch", 0)
                    values = {"step": step, "epoch": epoch, "split": split, **values}
                    records.append(parse_record(values))
        metrics = RunMetrics.of(records)
        runs.append(RunRecord(run.name.rsplit("/", 1)[-1], dict(run.config), metrics))
    if not runs:
        raise CompareError(f"wandb group '{path}' has no runs")
    return runs


def varying_keys(runs: list[RunRecord]) -> list[str]:
    """Config keys whose values differ between runs, seeds and bookkeeping left out."""

    def flat(node: Any, prefix: str = "") -> dict[str, Any]:
        if isinstance(node, dict):
            out = {}
            for k, v in node.items():
                out |= flat(v, f"{prefix}{k}.")
            return out
        return {prefix.rstrip("."): json.dumps(node)}

    flats = [flat(r.config) for r in runs]
    keys = dict.fromkeys(k for f in flats for k in f)
    return [
        k
        for k in keys
        if len({f.get(k) for f in flats}) > 1
        and not any(k == n or k.startswith(n) for n in NOT_VARIANTS)
    ]


@dataclass
class Variant:
    label: str
    runs: list[RunRecord]


def group_runs(runs: list[RunRecord], by: list[str] | None) -> tuple[list[str], list[Variant]]:
    by = by or varying_keys(runs)
    groups: dict[str, list[RunRecord]] = {}
    for run in runs:
        label = ", ".join(f"{k.rsplit('.', 1)[-1]}={run.value(k)}" for k in by) or "all runs"
        groups.setdefault(label, []).append(run)
    return by, [Variant(label, members) for label, members in groups.items()]


def summarise(run: RunRecord) -> dict[str, float]:
    """Final metrics (the last evaluation), best AP, parameters and training images/s."""
    evals = run.metrics.scored
    out: dict[str, float] = {}
    if evals:
        last = evals[-1].metrics
        out |= {m: float(last[m]) for m in METRIC_NAMES if m in last}
        out["best AP"] = max(float(r.ap) for r in evals)
        out["epochs"] = max(run.epoch_of(r) for r in evals)
    starts = run.metrics.starts
    if starts and starts[-1].params:
        out["params"] = float(starts[-1].params)
    speeds = [r.images_per_s for r in run.metrics.train[1:] if r.images_per_s]
    if speeds:
        out["images/s"] = float(np.median(speeds))
    return out


def comparison_rows(variants: list[Variant]) -> tuple[list[str], list[list[str]]]:
    """Header and one row of cells per variant, mean ± std over its runs (seeds)."""
    columns = ["final AP", "best AP", *TABLE_METRICS[1:], "params (M)", "images/s"]
    source = {"final AP": "AP", "params (M)": "params"}
    rows = []
    for variant in variants:
        summaries = [summarise(r) for r in variant.runs]
        cells = [variant.label, str(len(variant.runs))]
        for column in columns:
            key = source.get(column, column)
            scale = 1e-6 if column == "params (M)" else 1.0
            cells.append(_mean_std([s[key] * scale for s in summaries if key in s], column))
        rows.append(cells)
    return ["variant", "runs", *columns], rows


def comparison_numbers(variants: list[Variant]) -> tuple[list[str], list[list]]:
    """The same table with numbers (a mean and a std column for each, None where no run has
    the value), for wandb: its tables sort and plot numbers, not "0.540 ± 0.001" strings."""
    columns = ["final AP", "best AP", *TABLE_METRICS[1:], "params (M)", "images/s"]
    source = {"final AP": "AP", "params (M)": "params"}
    header = ["variant", "runs"] + [f"{c} {part}" for c in columns for part in ("mean", "std")]
    rows = []
    for variant in variants:
        summaries = [summarise(r) for r in variant.runs]
        row: list = [variant.label, len(variant.runs)]
        for column in columns:
            key, scale = source.get(column, column), 1e-6 if column == "params (M)" else 1.0
            values = [s[key] * scale for s in summaries if key in s]
            spread = float(np.std(values, ddof=1)) if len(values) > 1 else None
            row += [float(np.mean(values)) if values else None, spread]
        rows.append(row)
    return header, rows


def comparison_table(variants: list[Variant]) -> str:
    """The rows as a markdown table."""
    header, rows = comparison_rows(variants)
    lines = ["| " + " | ".join(header) + " |", "|---|---:|" + "---:|" * (len(header) - 2)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


@dataclass
class PairedDifference:
    """`metric` of `variant` minus that of `baseline` on the seeds both ran, with a Student-t
    confidence interval of the mean difference (pairing by seed removes what a seed does to
    both: data order, initialisation)."""

    variant: str
    baseline: str
    metric: str
    seeds: list
    differences: list[float]
    level: float = 0.95

    @property
    def mean(self) -> float:
        return float(np.mean(self.differences)) if self.differences else math.nan

    @property
    def interval(self) -> tuple[float, float]:
        n = len(self.differences)
        if n < 2:
            return math.nan, math.nan
        sem = float(np.std(self.differences, ddof=1)) / math.sqrt(n)
        half = float(stats.t.ppf(0.5 + self.level / 2, df=n - 1)) * sem
        return self.mean - half, self.mean + half

    @property
    def verdict(self) -> str:
        n = len(self.differences)
        if n < 2:
            return f"{n} paired seed(s): no interval; run at least 2 seeds of both"
        low, high = self.interval
        if low > 0 or high < 0:
            better = "better" if low > 0 else "worse"
            return (
                f"{better} than {self.baseline}: the {self.level:.0%} interval excludes 0, so "
                "the difference is distinguishable from seed noise"
            )
        return (
            f"not distinguishable from seed noise: the {self.level:.0%} interval includes 0 "
            f"(with {n} seeds it resolves differences of about ±{(high - low) / 2:.3f})"
        )


def pick_baseline(variants: list[Variant], name: str | None) -> Variant:
    """The variant labelled `name` (or containing it), else one with attention=none, else the
    first."""
    if name:
        matches = [v for v in variants if v.label == name] or [
            v for v in variants if name in v.label
        ]
        if len(matches) != 1:
            labels = ", ".join(v.label for v in variants)
            raise CompareError(f"--baseline '{name}' matches {len(matches)} variants of: {labels}")
        return matches[0]
    return next((v for v in variants if "attention=none" in v.label), variants[0])


def paired_differences(
    variants: list[Variant], baseline: Variant, metric: str = "AP", level: float = 0.95
) -> list[PairedDifference]:
    """Each other variant against `baseline`: the final `metric` paired by the runs' seed."""

    def by_seed(variant: Variant) -> dict:
        out = {}
        for run in variant.runs:
            value = summarise(run).get(metric)
            if value is not None and not math.isnan(value):
                out[run.config.get("seed")] = value
        return out

    base = by_seed(baseline)
    result = []
    for variant in variants:
        if variant is baseline:
            continue
        own = by_seed(variant)
        seeds = sorted((s for s in own if s in base), key=str)
        differences = [own[s] - base[s] for s in seeds]
        result.append(
            PairedDifference(variant.label, baseline.label, metric, seeds, differences, level)
        )
    return result


def differences_table(differences: list[PairedDifference]) -> str:
    """The paired differences as a markdown table, with the verdict in words."""
    lines = [
        "| variant | against | seeds | mean difference | 95% interval | verdict |",
        "|---|---|---:|---:|---|---|",
    ]
    for d in differences:
        low, high = d.interval
        interval = "-" if math.isnan(low) else f"[{low:+.3f}, {high:+.3f}]"
        mean = "-" if math.isnan(d.mean) else f"{d.mean:+.3f}"
        lines.append(
            f"| {d.variant} | {d.baseline} | {len(d.seeds)} | {mean} | {interval} | {d.verdict} |"
        )
    return "\n".join(lines)


def comparison_plots(variants: list[Variant], out: Path) -> list[Path]:
    """ap.png (AP on val against epoch) and loss.png (training loss against epoch)."""
    ap = {
        v.label: [
            (
                [v_run.epoch_of(r) for r in v_run.metrics.scored],
                [r.ap for r in v_run.metrics.scored],
            )
            for v_run in v.runs
        ]
        for v in variants
    }
    loss = {
        v.label: [
            (
                [v_run.epoch_of(r) for r in v_run.metrics.train],
                [r.loss for r in v_run.metrics.train],
            )
            for v_run in v.runs
        ]
        for v in variants
    }
    return [
        spread_plot(ap, out / "ap.png", "val AP (band: lowest to highest seed)", "epoch", "AP"),
        spread_plot(
            loss,
            out / "loss.png",
            "training loss (band: lowest to highest seed)",
            "epoch",
            "JointsMSE loss",
            log_y=True,
        ),
    ]


def log_to_wandb(
    plots: list[Path],
    variants: list[Variant],
    differences: list[PairedDifference],
    mode: str,
    project: str,
    entity: str,
    group: str,
    folder: Path,
) -> str | None:
    """The tables (the variants, and the paired differences with their intervals and verdicts)
    and plots as one summary run in the sweep's wandb group; returns its folder."""
    if mode == "off":
        return None
    import wandb

    header, rows = comparison_numbers(variants)
    paired_header = ["variant", "baseline", "metric", "seeds", "mean difference"]
    paired_header += ["interval low", "interval high", "level", "verdict"]
    paired = [
        [d.variant, d.baseline, d.metric, len(d.seeds), _number(d.mean), *map(_number, d.interval)]
        + [d.level, d.verdict]
        for d in differences
    ]
    run = wandb.init(
        project=project,
        entity=entity or None,
        group=group or None,
        name=f"{group or 'sweep'}-comparison",
        job_type="comparison",
        mode=mode,
        dir=str(folder),
        settings=wandb.Settings(init_timeout=60, silent=True),
        config={"variants": [v.label for v in variants]},
    )
    run.log(
        {
            "comparison": wandb.Table(columns=header, data=rows),
            "paired_differences": wandb.Table(columns=paired_header, data=paired),
            **{f"plots/{p.stem}": wandb.Image(str(p)) for p in plots},
        }
    )
    run.finish()
    return str(Path(run.dir).parent)


def _number(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def _mean_std(values: list[float], column: str) -> str:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "-"
    digits = 0 if column == "images/s" else 2 if column == "params (M)" else 3
    mean = float(np.mean(values))
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {float(np.std(values, ddof=1)):.{digits}f}"
