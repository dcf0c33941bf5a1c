"""One line on what a run trained and reached (steps, images, epochs, budget, AP):

python launch/summary.py RUN_DIR [--eval METRICS.json] [--seconds TRAIN_SECONDS]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pose.tracking import run_summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("--eval", help="an evaluation's metrics JSON (launch/eval.py --out)")
    parser.add_argument("--seconds", type=int, help="how long training took, to print")
    args = parser.parse_args(argv)
    try:
        metrics = json.loads(Path(args.eval).read_text()) if args.eval else None
        line = run_summary(args.run_dir, metrics)
    except (OSError, ValueError, KeyError) as e:
        print(f"summary: error: {args.run_dir}: {e}", file=sys.stderr)
        return 2
    if args.seconds is not None:
        line += f" (training took {args.seconds // 60} min {args.seconds % 60} s)"
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
