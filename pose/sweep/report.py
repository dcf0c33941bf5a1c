"""The comparison report of a sweep, as `posescale-compare` writes it: the table of variants, the
paired differences against the baseline, the curves, the attention picture (from run folders)
and the same logged to wandb."""

from __future__ import annotations

from pathlib import Path

from pose.files import atomic_write
from pose.folders import SweepFolder
from pose.sweep.compare import (
    comparison_plots,
    comparison_table,
    differences_table,
    group_runs,
    local_runs,
    log_to_wandb,
    paired_differences,
    pick_baseline,
    wandb_runs,
)
from pose.sweep.pictures import attention_comparison
from pose.tracking import wandb_mode


def compare_runs(
    sweep_dir: str | None,
    wandb_path: str | None,
    by: list[str],
    out: Path | None,
    baseline: str | None,
    people: int,
    log_wandb: str,
) -> Path:
    """What `posescale-compare` writes, in `out` (default the sweep folder's compare/): the
    table, the paired differences, the plots and, from run folders, the attention picture;
    logged to wandb as `log_wandb` says ("runs": as the runs' own log.wandb). Returns the
    markdown report's path; CompareError when the runs cannot be compared."""
    runs = wandb_runs(wandb_path) if wandb_path else local_runs(Path(sweep_dir))
    keys, variants = group_runs(runs, by or None)
    reference = pick_baseline(variants, baseline)
    out = out or SweepFolder(sweep_dir or ".").compare
    out.mkdir(parents=True, exist_ok=True)
    table = comparison_table(variants)
    paired = paired_differences(variants, reference)
    differences = differences_table(paired)
    plots = comparison_plots(variants, out)
    if people and not wandb_path:
        plots += attention_comparison(variants, out / "attention.png", people)
    by_text = ", ".join(keys) or "nothing (one variant)"
    report = (
        f"# {len(runs)} runs by {by_text}\n\n{table}\n\n"
        f"## Final AP against {reference.label}, paired by seed\n\n{differences}\n"
    )
    atomic_write(out / "comparison.md", report)
    print(table, differences, sep="\n\n")
    print(f"compare: wrote {out / 'comparison.md'}, " + ", ".join(str(p) for p in plots))
    log = runs[0].config.get("log", {})
    mode = wandb_mode(log.get("wandb", "off") if log_wandb == "runs" else log_wandb)
    project, entity, group = log.get("project", ""), log.get("entity", ""), log.get("group", "")
    folder = log_to_wandb(plots, variants, paired, mode, project, entity, group, out)
    if folder:
        print(f"compare: logged to wandb ({mode}) in {folder}")
    return out / "comparison.md"
