"""Evaluate a checkpoint on the val shards with COCO keypoint AP.

    python launch/eval.py --config CFG --checkpoint CKPT [--out METRICS.json] [overrides]
    python launch/eval.py --config CFG --gt-as-predictions [--out METRICS.json] [overrides]

CKPT is a run directory (its best, else latest checkpoint), a DeepSpeed checkpoint folder or a
plain state dict. `--gt-as-predictions` scores the val shards' ground truth pushed through the
same encode/decode path instead of a model, as a check of the geometry. Runs as one process or
under torchrun (each rank evaluates its part; rank 0 scores).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from pose.config import ConfigError, load_config
from pose.data.loader import build_loader
from pose.data.shards import ShardError
from pose.eval.coco_eval import write_json
from pose.eval.evaluate import EvaluationError, evaluate, print_metrics
from pose.models import build_model
from pose.models.weights import WeightsError, load_model_weights, resolve_checkpoint


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--checkpoint", help="run dir, DeepSpeed checkpoint folder or state dict")
    parser.add_argument(
        "--gt-as-predictions",
        action="store_true",
        help="score the ground truth through encode/decode (no model)",
    )
    parser.add_argument("--out", help="write the metrics JSON here")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    if not args.checkpoint and not args.gt_as_predictions:
        parser.error("give --checkpoint, or --gt-as-predictions")
    from pose.engine.distributed import init_distributed

    try:
        cfg = load_config(args.config, args.overrides)
        env = init_distributed(cfg.launch)
        model = None
        if not args.gt_as_predictions:
            model = build_model(cfg.model, cfg.data.num_joints)
            load_model_weights(model, resolve_checkpoint(args.checkpoint))
            model.to(env.device)
        loader = build_loader(
            cfg.data, "val", cfg.eval.batch_size, env.rank, env.world_size, env.device, cfg.seed
        )
        out_dir = Path(args.out).parent if args.out else None
        metrics = evaluate(model, loader, cfg, out_dir, args.gt_as_predictions)
    except (ConfigError, ShardError, WeightsError, EvaluationError) as e:
        print(f"eval: error: {e}", file=sys.stderr)
        return 2
    if env.rank == 0:
        print_metrics(metrics)
        if args.out:
            write_json(args.out, metrics)
    return 0


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    sys.exit(main())
