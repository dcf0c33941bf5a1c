"""Train a pose model: one process, under torchrun (any --nproc_per_node / --nnodes), or under
Slurm's srun (one task per device). Starting in a run folder that has a checkpoint resumes.

    python launch/train.py --config configs/demo.yaml [run.dir=runs/demo] [train.max_steps=N] ...
    torchrun --nproc_per_node 2 launch/train.py --config configs/demo.yaml ...
    srun --ntasks-per-node 4 python launch/train.py --config configs/coco_res50_256x192.yaml ...
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pose.caches import use_cache_folders
from pose.config import ConfigError, load_config
from pose.data.shards import ShardError
from pose.engine.checkpoint import CheckpointError
from pose.engine.distributed import DistributedSetupError, init_distributed, shutdown
from pose.engine.step_metrics import TrainingError
from pose.engine.trainer import train
from pose.eval.evaluate import print_metrics


def run_dir_for(cfg, config_path: str) -> Path:
    return Path(cfg.run.dir) if cfg.run.dir else Path("runs") / Path(config_path).stem


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="YAML config (see configs/)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides: train.lr=5e-4 ...")
    args = parser.parse_args(argv)
    use_cache_folders()
    try:
        cfg = load_config(args.config, args.overrides)
        env = init_distributed(cfg.launch)
        result = train(cfg, run_dir_for(cfg, args.config), env)
    except (ConfigError, ShardError, DistributedSetupError, CheckpointError) as e:
        print(f"train: error: {e}", file=sys.stderr)
        return 2
    except TrainingError as e:
        print(f"train: stopped: {e}", file=sys.stderr)
        return 1
    finally:
        shutdown()
    if env.is_main:
        stopped = " (stopped by signal)" if result.stopped else ""
        print(
            f"train: {result.step} steps, {result.epochs} epochs, precision "
            f"{result.precision}{stopped}"
        )
        if result.metrics:
            print_metrics(result.metrics)
    return 0


if __name__ == "__main__":
    sys.exit(main())
