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
from pose.folders import SweepFolder
from pose.sweep.spec import load_sweep
from pose.sweep.submit import (
    SweepError,
    cancel,
    format_status,
    sbatch_preview,
    slurm_available,
    submit,
    sweep_status,
    wait,
)

COMMANDS = ("status", "wait", "cancel")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    use_cache_folders()
    try:
        if argv and argv[0] in COMMANDS:
            return manage(argv)
        return submit_sweep(argv)
    except (ConfigError, SweepError) as e:
        print(f"sweep: error: {e}", file=sys.stderr)
        return 2


def submit_sweep(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="The runs of a submitted sweep: sweep.py status|wait|cancel SWEEP_DIR",
    )
    parser.add_argument("sweep_file", help="a sweep file (see configs/sweeps/)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides for every run")
    parser.add_argument("--out", help="sweep folder (default runs/sweeps/<sweep name>)")
    mode = parser.add_mutually_exclusive_group()
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
    parser.add_argument("--wait", action="store_true", help="wait until every run has ended")
    parser.add_argument(
        "--resubmit",
        action="store_true",
        help="submit into a folder that holds a sweep; runs resume",
    )
    args = parser.parse_intermixed_args(argv)
    sweep = load_sweep(args.sweep_file, args.overrides)
    out = Path(args.out) if args.out else Path("runs/sweeps") / sweep.name
    if args.dry_run:
        print(f"sweep '{sweep.name}': {len(sweep.runs)} runs from {sweep.base} into {out}")
        for run in sweep.runs:
            print(f"  {run.name}: {' '.join(run.overrides)}")
        where = "Slurm" if slurm_available() else "Slurm (not on this machine: use --local here)"
        print(f"\n{where} would get one job array:\n")
        print(sbatch_preview(sweep, SweepFolder(out.resolve()).job_pattern))
        return 0
    manifest = submit(sweep, out, local=args.local, resubmit=args.resubmit)
    first = manifest["runs"][0]["job_id"].split("_")[0]
    print(
        f"sweep '{sweep.name}': {len(manifest['runs'])} runs submitted "
        f"({manifest['executor']}, job {first}) into {out}"
    )
    if args.wait or args.local:
        rows = wait(out)
        print(format_status(rows))
        return 0 if all(r.state == "done" for r in rows) else 1
    print(f"follow it with: python launch/sweep.py status {out}")
    return 0


def manage(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="sweep.py " + argv[0])
    parser.add_argument("sweep_dir")
    args = parser.parse_args(argv[1:])
    sweep_dir = Path(args.sweep_dir)
    if argv[0] == "status":
        print(format_status(sweep_status(sweep_dir)))
    elif argv[0] == "wait":
        rows = wait(sweep_dir)
        print(format_status(rows))
        return 0 if all(r.state == "done" for r in rows) else 1
    else:
        ids = cancel(sweep_dir)
        print(
            f"sweep: cancelled {len(ids)} job(s): {' '.join(ids)}"
            if ids
            else "sweep: nothing left to cancel"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
