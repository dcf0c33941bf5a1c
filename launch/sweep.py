"""Submit a sweep of training runs as one Slurm job array (submitit), or run it on this machine.

python launch/sweep.py configs/sweeps/attention.yaml [--out SWEEP_DIR] [--dry-run | --local]
                       [--wait] [overrides applied to every run ...]
python launch/sweep.py status SWEEP_DIR
python launch/sweep.py wait SWEEP_DIR
python launch/sweep.py cancel SWEEP_DIR
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pose.caches import use_cache_folders
from pose.config import ConfigError
from pose.sweep.spec import load_sweep
from pose.sweep.submit import SweepError, dry_run, manage, submit_and_follow

COMMANDS = ("status", "wait", "cancel")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    use_cache_folders()
    try:
        if argv and argv[0] in COMMANDS:
            managing = argparse.ArgumentParser(prog="sweep.py " + argv[0])
            managing.add_argument("sweep_dir", type=Path)
            return manage(argv[0], managing.parse_args(argv[1:]).sweep_dir)
        args = parser().parse_intermixed_args(argv)
        sweep = load_sweep(args.sweep_file, args.overrides)
        out = Path(args.out) if args.out else Path("runs/sweeps") / sweep.name
        if args.dry_run:
            print(dry_run(sweep, out))
            return 0
        return submit_and_follow(sweep, out, args.local, args.resubmit, args.wait)
    except (ConfigError, SweepError) as e:
        print(f"sweep: error: {e}", file=sys.stderr)
        return 2


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="The runs of a submitted sweep: sweep.py status|wait|cancel SWEEP_DIR",
    )
    p.add_argument("sweep_file", help="a sweep file (see configs/sweeps/)")
    p.add_argument("overrides", nargs="*", help="dotted overrides for every run")
    p.add_argument("--out", help="sweep folder (default runs/sweeps/<sweep name>)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--dry-run",
        action="store_true",
        help="print the runs and the sbatch parameters; submit nothing",
    )
    mode.add_argument(
        "--local",
        action="store_true",
        help="run on this machine with submitit's local executor (waits)",
    )
    p.add_argument("--wait", action="store_true", help="wait until every run has ended")
    p.add_argument(
        "--resubmit",
        action="store_true",
        help="submit into a folder that holds a sweep; runs resume",
    )
    return p


if __name__ == "__main__":
    sys.exit(main())
