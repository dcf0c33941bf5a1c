"""Compare the runs of a sweep: a markdown table (final and best AP, AP50, AP75, APm, APl, AR,
parameters, images/s; mean ± std over seeds), each variant's final AP against the baseline's
paired by seed with a 95% Student-t interval and a verdict in words, PNG curves (AP and loss
against epoch, bands over seeds) and, from run folders, the same val people with each variant's
attention maps side by side.

    python launch/compare.py SWEEP_DIR [--by model.attention] [--baseline none] [--out DIR]
    python launch/compare.py --wandb ENTITY/PROJECT/GROUP --out DIR      # from wandb, online
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pose.caches import use_cache_folders
from pose.files import atomic_write
from pose.folders import SweepFolder
from pose.sweep.compare import (
    CompareError,
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dir", nargs="?", help="a sweep folder (or any folder of runs)")
    parser.add_argument(
        "--by",
        action="append",
        help="config key(s) that name a variant (default: the keys that differ "
        "between runs, seeds left out); repeat or comma-separate",
    )
    parser.add_argument(
        "--wandb",
        metavar="ENTITY/PROJECT/GROUP",
        help="read the runs from the wandb API instead of the run folders",
    )
    parser.add_argument("--out", help="where the table and plots go (default SWEEP_DIR/compare)")
    parser.add_argument(
        "--baseline",
        help="the variant the others are paired against (its label or a part of it; "
        "default: attention=none, else the first)",
    )
    parser.add_argument(
        "--people", type=int, default=4, help="val people in the attention picture (0: none)"
    )
    parser.add_argument(
        "--log-wandb",
        default="runs",
        choices=["runs", "auto", "online", "offline", "off"],
        help="log the table and plots as a wandb summary run (runs: as the "
        "runs' own log.wandb setting says)",
    )
    args = parser.parse_args(argv)
    use_cache_folders()
    if not args.sweep_dir and not args.wandb:
        parser.error("give a sweep folder or --wandb ENTITY/PROJECT/GROUP")
    try:
        runs = wandb_runs(args.wandb) if args.wandb else local_runs(Path(args.sweep_dir))
        by = [k.strip() for item in args.by or [] for k in item.split(",") if k.strip()]
        keys, variants = group_runs(runs, by or None)
        baseline = pick_baseline(variants, args.baseline)
    except CompareError as e:
        print(f"compare: error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else SweepFolder(args.sweep_dir or ".").compare
    out.mkdir(parents=True, exist_ok=True)
    table = comparison_table(variants)
    differences = differences_table(paired_differences(variants, baseline))
    plots = comparison_plots(variants, out)
    if args.people and not args.wandb:
        plots += attention_comparison(variants, out / "attention.png", args.people)
    by_text = ", ".join(keys) or "nothing (one variant)"
    report = (
        f"# {len(runs)} runs by {by_text}\n\n{table}\n\n"
        f"## Final AP against {baseline.label}, paired by seed\n\n{differences}\n"
    )
    atomic_write(out / "comparison.md", report)
    print(table, differences, sep="\n\n")
    print(f"compare: wrote {out / 'comparison.md'}, " + ", ".join(str(p) for p in plots))
    log = runs[0].config.get("log", {})
    setting = log.get("wandb", "off") if args.log_wandb == "runs" else args.log_wandb
    folder = log_to_wandb(
        plots,
        variants,
        wandb_mode(setting),
        log.get("project", ""),
        log.get("entity", ""),
        log.get("group", ""),
        out,
    )
    if folder:
        print(f"compare: logged to wandb ({wandb_mode(setting)}) in {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
