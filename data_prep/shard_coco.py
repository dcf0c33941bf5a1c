"""Shard COCO person instances into WebDataset tar files of person crops, with a manifest.

    python -m data_prep.shard_coco --ann ANN.json --images DIR --out OUT [--split train|val]
        [--dets DETS.json --det-thr 0.0] [--workers N] [--strict]

Each person is cropped once, with the context augmentation needs, at the detail of the recipe
(pose/data/sharding.py says how). Re-running the same command resumes by skipping finished
shards; a folder holding shards made with other parameters is refused unless --overwrite.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pose.data.coco import CocoFormatError
from pose.data.jpeg import RESTART_MCUS
from pose.data.layout import LayoutError, describe
from pose.data.sharding import ShardingError, ShardRequest, ShardResult, shard_dataset


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
        assert h > 0 and w > 0
    except (ValueError, AssertionError):
        raise argparse.ArgumentTypeError(f"'{text}' is not HEIGHTxWIDTH, e.g. 384x288") from None
    return h, w


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ann", required=True, help="COCO person-keypoints annotation file")
    p.add_argument("--images", required=True, help="folder holding the annotation's images")
    p.add_argument("--out", required=True, help="output folder for shards and manifest")
    p.add_argument("--split", default="train", choices=["train", "val"])
    p.add_argument("--dets", help="person detections (COCO results format) instead of GT boxes")
    p.add_argument("--det-thr", type=float, default=0.0, help="detection score threshold")
    p.add_argument("--workers", type=int, default=1, help="worker processes")
    p.add_argument("--strict", action="store_true", help="any bad instance is an error")
    p.add_argument("--shard-size", type=int, default=1000, help="samples per shard")
    p.add_argument(
        "--shard-mb",
        type=float,
        default=0.0,
        help="about this many MB per shard (estimated from a sample)",
    )
    p.add_argument(
        "--detail",
        type=_size,
        default=(384, 288),
        help="HxW of the recipe whose detail crops keep (default 384x288)",
    )
    p.add_argument(
        "--context-scale",
        type=float,
        default=1.35,
        help="largest augmentation scale the stored context covers",
    )
    p.add_argument(
        "--context-rotation",
        type=float,
        default=45.0,
        help="largest rotation (degrees) the stored context covers",
    )
    p.add_argument("--quality", type=int, default=95, help="JPEG quality of the crops")
    p.add_argument(
        "--restart-mcus",
        type=int,
        default=RESTART_MCUS,
        help="restart marker every (up to) this many MCUs, so that a sample decodes "
        "only the window its warp reads; 0: none, crops decode whole",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the shuffle across shards")
    p.add_argument(
        "--layout",
        default="auto",
        help="keypoint layout: a preset (coco17, crowdpose14, aic14, mpii16, coco_wholebody133), "
        "a layout YAML file, or auto: the preset the annotation file's joint names match, else "
        "one derived from them (pose/data/layout.py)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace what --out holds if made with other parameters",
    )
    args = p.parse_args(argv)
    if args.shard_size <= 0 or args.workers <= 0 or not 1 <= args.quality <= 100:
        p.error("--shard-size and --workers must be positive, --quality in 1..100")
    if not 0 <= args.restart_mcus <= 65535:
        p.error("--restart-mcus must be in 0..65535")
    return args


def request_from_args(args: argparse.Namespace) -> ShardRequest:
    return ShardRequest(
        annotations=Path(args.ann),
        images=Path(args.images),
        out=Path(args.out),
        split=args.split,
        detections=Path(args.dets) if args.dets else None,
        det_thr=args.det_thr,
        workers=args.workers,
        strict=args.strict,
        shard_size=args.shard_size,
        shard_mb=args.shard_mb,
        detail=args.detail,
        context_scale=args.context_scale,
        context_rotation=args.context_rotation,
        quality=args.quality,
        restart_mcus=args.restart_mcus,
        seed=args.seed,
        layout=args.layout,
        overwrite=args.overwrite,
    )


def report(result: ShardResult) -> None:
    if result.layout is not None:
        print(f"shard_coco: keypoint layout {describe(result.layout)}")
    for note in result.notes:
        print(f"shard_coco: note: {note}")
    if result.cropped == 0 and result.resumed_shards == 0:
        print(f"shard_coco: '{result.out}' already holds this result; nothing to do")
        return
    if result.resumed_shards:
        print(f"shard_coco: resumed, {result.resumed_shards} shards were already written")
    rate = result.cropped / max(result.seconds, 1e-9)
    print(
        f"shard_coco: {result.num_samples} samples in {result.num_shards} shards "
        f"({result.cropped} instances cropped in {result.seconds:.1f} s, {rate:.0f} inst/s) "
        f"-> {result.out}"
    )
    if result.skipped:
        print("shard_coco: skipped " + ", ".join(f"{k}: {v}" for k, v in result.skipped.items()))
    for reason, files in result.skipped_images.items():
        count = result.skipped.get(reason, 0)
        print(f"shard_coco: {reason} ({count} instances), e.g. " + ", ".join(files))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        report(shard_dataset(request_from_args(args)))
    except (ShardingError, CocoFormatError, LayoutError) as e:
        print(f"shard_coco: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
