"""Evaluate a checkpoint on the val shards with COCO keypoint AP.

    python launch/eval.py --checkpoint CKPT [--config CFG] [--out METRICS.json]
        [--results COCO_RESULTS.json] [--pictures PANEL.png] [overrides]
    python launch/eval.py --config CFG --gt-as-predictions [--out METRICS.json] [overrides]

CKPT is a run folder (its best, else latest checkpoint), a checkpoint folder, an export folder
or a plain state dict; without --config its run's or export's own config is used.
`--gt-as-predictions` scores the val shards' ground truth pushed through the same encode/decode
path instead of a model, as a check of the geometry. Runs as one process or under torchrun
(each rank evaluates its part; rank 0 scores). Exit 2 when it cannot start or score.
"""

from __future__ import annotations

import argparse
import sys

from pose.caches import use_cache_folders
from pose.config import ConfigError
from pose.data.shards import ShardError
from pose.eval.evaluate import EvaluationError
from pose.eval.run import EvalRequest, evaluate_checkpoint
from pose.folders import TrainedModelError
from pose.models.weights import WeightsError

ERRORS = (ConfigError, ShardError, WeightsError, TrainedModelError, EvaluationError)


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if not args.checkpoint and not args.gt_as_predictions:
        p.error("give --checkpoint, or --gt-as-predictions")
    use_cache_folders()
    checkpoint = None if args.gt_as_predictions else args.checkpoint
    request = EvalRequest(args.config, checkpoint, args.overrides, args.out, args.results)
    request.pictures = args.pictures
    try:
        evaluate_checkpoint(request)
    except ERRORS as e:
        print(f"eval: error: {e}", file=sys.stderr)
        return 2
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", help="config file or shipped name (default: the run's own)")
    p.add_argument("--checkpoint", help="run, checkpoint or export folder, or state dict")
    p.add_argument(
        "--gt-as-predictions",
        action="store_true",
        help="score the ground truth through encode/decode (no model)",
    )
    p.add_argument("--out", help="write the metrics JSON here")
    p.add_argument("--results", help="write the COCO results (the scored detections) here")
    p.add_argument(
        "--pictures",
        help="write a PNG of val people here: ground truth, prediction, heatmaps, attention "
        "(eval.panel_people of them; eval.panel_joints=true adds every joint's heatmap)",
    )
    p.add_argument("overrides", nargs="*")
    return p


if __name__ == "__main__":
    sys.exit(main())
