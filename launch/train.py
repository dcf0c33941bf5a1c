"""Train a pose model: one process, under torchrun (any --nproc_per_node / --nnodes), or under
Slurm's srun (one task per device). Starting in a run folder that has a checkpoint resumes.

    python launch/train.py --config configs/demo.yaml [run.dir=runs/demo] [train.max_steps=N] ...
    torchrun --nproc_per_node 2 launch/train.py --config configs/demo.yaml ...
    srun --ntasks-per-node 4 .venv/bin/python launch/train.py --config configs/demo.yaml ...

Exit codes: 0 the run reached its last step; 1 it failed while training (a non-finite loss or
weight, too many samples that do not decode, a checkpoint that could not be written, a collective
that timed out or lost a peer: the message names the rank and host); 2 it could
not start (config, shards, the checkpoint to resume, a run folder in use, the distributed
environment); 75 (EX_TEMPFAIL) a stop signal (SIGTERM, SIGUSR1, SIGUSR2) made it write a
checkpoint and stop early: run the same command again to resume (pose/engine/run.py).
"""

from __future__ import annotations

import argparse
import sys

from pose.caches import use_cache_folders
from pose.engine.run import run_training


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="YAML config (see configs/)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides: optimizer.lr=5e-4 ...")
    parser.add_argument(
        "--print-config", action="store_true", help="print the resolved config and exit"
    )
    args = parser.parse_args(argv)
    use_cache_folders()
    return run_training(args.config, args.overrides, args.print_config)


if __name__ == "__main__":
    sys.exit(main())
