"""Compare the runs of a sweep: a markdown table (final and best AP, AP50, AP75, APm, APl, AR,
parameters, images/s; mean ± std over seeds), each variant's final AP against the baseline's
paired by seed with a 95% Student-t interval and a verdict in words, PNG curves (AP and loss
against epoch, bands over seeds) and, from run folders, the same val people with each variant's
attention maps side by side (pose/sweep/report.py).

    python launch/compare.py SWEEP_DIR [--by model.attention] [--baseline none] [--out DIR]
    python launch/compare.py --wandb ENTITY/PROJECT/GROUP --out DIR      # from wandb, online
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pose.caches import use_cache_folders
from pose.sweep.compare import CompareError
from pose.sweep.report import compare_runs


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if not args.sweep_dir and not args.wandb:
        p.error("give a sweep folder or --wandb ENTITY/PROJECT/GROUP")
    use_cache_folders()
    by = [k.strip() for item in args.by or [] for k in item.split(",") if k.strip()]
    out = Path(args.out) if args.out else None
    try:
        compare_runs(
            args.sweep_dir, args.wandb, by, out, args.baseline, args.people, args.log_wandb
        )
    except CompareError as e:
        print(f"compare: error: {e}", file=sys.stderr)
        return 2
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("sweep_dir", nargs="?", help="a sweep folder (or any folder of runs)")
    p.add_argument(
        "--by",
        action="append",
        help="config key(s) that name a variant (default: the keys that differ "
        "between runs, seeds left out); repeat or comma-separate",
    )
    p.add_argument(
        "--wandb",
        metavar="ENTITY/PROJECT/GROUP",
        help="read the runs from the wandb API instead of the run folders",
    )
    p.add_argument("--out", help="where the table and plots go (default SWEEP_DIR/compare)")
    p.add_argument(
        "--baseline",
        help="the variant the others are paired against (its label or a part of it; "
        "default: attention=none, else the first)",
    )
    p.add_argument(
        "--people", type=int, default=4, help="val people in the attention picture (0: none)"
    )
    p.add_argument(
        "--log-wandb",
        default="runs",
        choices=["runs", "auto", "online", "offline", "off"],
        help="log the table and plots as a wandb summary run (runs: as the "
        "runs' own log.wandb setting says)",
    )
    return p


if __name__ == "__main__":
    sys.exit(main())
