"""Train a pose model: one process, under torchrun (any --nproc_per_node / --nnodes), or under
Slurm's srun (one task per device). Starting in a run folder that has a checkpoint resumes.

    python launch/train.py --config configs/demo.yaml [run.dir=runs/demo] [train.max_steps=N] ...
    torchrun --nproc_per_node 2 launch/train.py --config configs/demo.yaml ...
    srun --ntasks-per-node 4 python launch/train.py --config configs/coco_res50_256x192.yaml ...

Exit codes: 0 the run reached its last step; 1 it failed while training (a non-finite loss or
weight, too many samples that do not decode, a checkpoint that could not be written, a collective
that timed out or lost a peer: the message names the rank and host); 2 it could
not start (config, shards, the checkpoint to resume, a run folder in use, the distributed
environment); 75 (EX_TEMPFAIL) a stop signal (SIGTERM, SIGUSR1, SIGUSR2) made it write a
checkpoint and stop early: run the same command again to resume.
"""

from __future__ import annotations

import argparse
import signal
import sys

from pose.caches import use_cache_folders
from pose.config import ConfigError, config_yaml, load_config
from pose.data.shards import ShardError
from pose.engine.distributed import (
    DistributedSetupError,
    init_distributed,
    is_collective_failure,
    shutdown,
    where_am_i,
)
from pose.engine.errors import CheckpointError, TrainingError
from pose.engine.trainer import train
from pose.eval.evaluate import print_metrics
from pose.folders import RunFolder, RunFolderBusy

EXIT_FAILED, EXIT_NOT_STARTED, EXIT_STOPPED = 1, 2, 75


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="YAML config (see configs/)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides: train.lr=5e-4 ...")
    parser.add_argument(
        "--print-config", action="store_true", help="print the resolved config and exit"
    )
    args = parser.parse_args(argv)
    use_cache_folders()
    env = None
    try:
        cfg = load_config(args.config, args.overrides)
        if args.print_config:
            print(config_yaml(cfg), end="")
            return 0
        env = init_distributed(cfg.launch)
        run = RunFolder(cfg.run.dir) if cfg.run.dir else RunFolder.default_for(args.config)
        result = train(cfg, run.path, env)
    except (ConfigError, ShardError, DistributedSetupError, CheckpointError, RunFolderBusy) as e:
        print(f"train: error: {e}", file=sys.stderr)
        return EXIT_NOT_STARTED
    except TrainingError as e:
        print(f"train: stopped: {e}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:  # before the loop catches Ctrl-C, or after it let go
        print(
            "train: interrupted (Ctrl-C) outside the training loop: nothing saved", file=sys.stderr
        )
        return 130
    except RuntimeError as e:
        if not is_collective_failure(e):
            raise
        print(
            f"train: error: a collective failed on {where_am_i()}: {str(e).splitlines()[0]}\n"
            "train: another rank has died, hung or lost its link (launch.collective_timeout_s "
            "bounds the wait); run the same command again to resume from the last checkpoint",
            file=sys.stderr,
        )
        return EXIT_FAILED
    finally:
        shutdown()
    if env.is_main:
        print(
            f"train: {result.step} steps ({result.images} images), {result.epochs} epochs, "
            f"precision {result.precision}"
        )
        if result.metrics:
            print_metrics(result.metrics)
    if result.stopped:
        print(
            f"train: stopped by {signal.Signals(result.stop_signal).name} after writing a "
            f"checkpoint at step "
            f"{result.step}; run the same command again to resume (exit code {EXIT_STOPPED})",
            file=sys.stderr,
        )
        return EXIT_STOPPED
    return 0


if __name__ == "__main__":
    sys.exit(main())
