"""Evaluate a checkpoint on the val shards with COCO keypoint AP.

    python launch/eval.py --config CFG --checkpoint CKPT [--out METRICS.json]
        [--results COCO_RESULTS.json] [--pictures PANEL.png] [overrides]
    python launch/eval.py --config CFG --gt-as-predictions [--out METRICS.json] [overrides]

CKPT is a run folder (its best, else latest checkpoint), a checkpoint folder or a plain state
dict. `--gt-as-predictions` scores the val shards' ground truth pushed through the same
encode/decode path instead of a model, as a check of the geometry. Runs as one process or under
torchrun (each rank evaluates its part; rank 0 scores).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from pose.caches import use_cache_folders
from pose.config import Config, ConfigError, load_config
from pose.data.backends import build_loader
from pose.data.codec import HeatmapCodec, heatmap_size
from pose.data.layout import one_layout
from pose.data.loader import Loader, LoaderSpec
from pose.data.shards import ShardError
from pose.engine.checkpoint import checkpoint_layout
from pose.engine.distributed import DistEnv, barrier, init_distributed, shutdown
from pose.engine.errors import CheckpointError
from pose.engine.trained import load_trained_model
from pose.eval.coco_eval import write_json
from pose.eval.evaluate import (
    EvaluationError,
    check_ground_truth,
    evaluate,
    ground_truth_predictor,
    model_predictor,
    print_metrics,
)
from pose.models.weights import WeightsError
from pose.viz.panels import prediction_panel


def load_model(cfg: Config, checkpoint: str, loader: Loader, env: DistEnv) -> torch.nn.Module:
    """The checkpoint's model, built from `cfg` (the config being evaluated), its keypoint
    layout checked against the val shards'."""
    layouts = {str(loader.shards.folder): loader.layout}
    trained_for = checkpoint_layout(checkpoint)
    if trained_for is not None:
        layouts[f"checkpoint '{checkpoint}'"] = trained_for
    layout = one_layout(layouts, cfg.data.layout)
    return load_trained_model(checkpoint, cfg, layout=layout).model.to(env.device)


def leave(env: DistEnv | None, together: bool) -> None:
    """Leave the process group this run started with several ranks; `together`: after a barrier
    (a rank that exits while a peer's gloo threads still talk to it aborts with "terminate
    called without an active exception"). One process starts none: a group there is its
    caller's (DeepSpeed's, in a test) and is left as it is."""
    if env is not None and env.world_size > 1:
        if together:
            barrier()
        shutdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--checkpoint", help="run folder, checkpoint folder or state dict")
    parser.add_argument(
        "--gt-as-predictions",
        action="store_true",
        help="score the ground truth through encode/decode (no model)",
    )
    parser.add_argument("--out", help="write the metrics JSON here")
    parser.add_argument("--results", help="write the COCO results (the scored detections) here")
    parser.add_argument(
        "--pictures",
        help="write a PNG of val people here: ground truth, prediction, heatmaps, attention "
        "(log.panel_people of them; log.panel_joints=true adds every joint's heatmap)",
    )
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    if not args.checkpoint and not args.gt_as_predictions:
        parser.error("give --checkpoint, or --gt-as-predictions")
    use_cache_folders()
    env = None
    try:
        cfg = load_config(args.config, args.overrides)
        env = init_distributed(cfg.launch)
        spec = LoaderSpec(
            cfg.data, "val", cfg.eval.batch_size, env.rank, env.world_size, env.device, cfg.seed
        )
        loader = build_loader(spec)
        for note in check_ground_truth(cfg.data.val_ann, loader.shards):
            if env.rank == 0:
                print(f"eval: {note}")
        if args.gt_as_predictions:
            size = heatmap_size(cfg.data.image_size, cfg.model.output_stride)
            model, predict = None, ground_truth_predictor(HeatmapCodec.of(cfg.data, size))
        else:
            model = load_model(cfg, args.checkpoint, loader, env)
            predict = model_predictor(model, cfg.eval, cfg.data, loader.layout.flip_permutation)
        metrics = evaluate(predict, loader, cfg.eval, cfg.data, args.results, env=env)
    except (ConfigError, ShardError, WeightsError, CheckpointError, EvaluationError) as e:
        print(f"eval: error: {e}", file=sys.stderr)
        leave(env, together=False)
        return 2
    if env.rank == 0:
        print_metrics(metrics)
        if args.out:
            write_json(args.out, metrics)
        if args.pictures and model is not None and cfg.log.panel_people:
            batches = loader.epoch(0)
            batch = next(batches)
            batches.close()
            layout, people, joints = loader.layout, cfg.log.panel_people, cfg.log.panel_joints
            path = Path(args.pictures)
            prediction_panel(
                model, batch, path, layout, cfg.data, people, cfg.eval.keypoint_thr, joints
            )
            print(f"eval: wrote {path}")
    leave(env, together=True)
    return 0


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    sys.exit(main())
