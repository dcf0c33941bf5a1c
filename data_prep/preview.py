"""Look at what the input pipeline feeds the model, and time it: a PNG grid of augmented training
samples with their keypoints (left orange, right blue) and Gaussian targets, and samples/s.

    python -m data_prep.preview --config configs/demo.yaml [--out preview.png] [--batches 20]
        [overrides, e.g. data.backend=dali]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import torch

from pose.config import Config, ConfigError, load_config
from pose.data.backends import build_loader, resolve_backend
from pose.data.codec import HeatmapCodec, heatmap_size
from pose.data.layout import KeypointLayout
from pose.data.loader import LoaderSpec
from pose.data.shards import ShardError
from pose.viz.skeleton import draw_skeleton, overlay_heatmap, tile, to_bgr


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--out", default="runs/preview.png", help="PNG to write")
    parser.add_argument("--batches", type=int, default=20, help="batches to time")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        loader = build_loader(LoaderSpec(cfg.data, "train", args.batch_size, seed=cfg.seed))
    except (ConfigError, ShardError) as e:
        print(f"preview: error: {e}", file=sys.stderr)
        return 2
    batches = loader.epoch(0)
    first = next(batches)
    start, count = time.perf_counter(), 0
    for _, batch in zip(range(args.batches), batches):
        count += batch["image"].shape[0]
    batches.close()
    rate = count / max(time.perf_counter() - start, 1e-9)
    out = Path(args.out)
    write_grid(first, cfg, loader.layout, out)
    backend = resolve_backend(cfg.data, torch.device("cpu"))
    print(
        f"preview: {backend} backend, {loader.batches_per_epoch} batches/epoch of "
        f"{args.batch_size}; {rate:.0f} samples/s over {count} samples; grid -> {out}"
    )
    return 0


def write_grid(batch: dict, cfg: Config, layout: KeypointLayout, out: Path) -> None:
    """Up to 8 samples of `batch`: each with its skeleton, then with its targets."""
    data = cfg.data
    size = heatmap_size(data.image_size, cfg.model.output_stride)
    targets, _ = HeatmapCodec.of(data, size).encode(batch["keypoints"])
    cells = []
    for i in range(min(8, batch["image"].shape[0])):
        image = to_bgr(batch["image"][i])
        cells.append(draw_skeleton(image, batch["keypoints"][i].numpy(), layout=layout))
        cells.append(overlay_heatmap(image, targets[i].amax(0).numpy()))
    grid = tile([cv2.resize(c, (c.shape[1] * 2, c.shape[0] * 2)) for c in cells], columns=8)
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), grid)


if __name__ == "__main__":
    sys.exit(main())
