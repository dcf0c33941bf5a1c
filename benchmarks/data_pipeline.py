"""Input pipeline throughput per CPU core, side by side in one run, on the same instances with
the same augmentation and output size (256x192, heatmaps 64x48):

- dali:        the DALI pipeline in CPU-only mode, one thread, + heatmap targets (torch)
- torch:       the torch fallback in process (no workers), + heatmap targets (torch); it decodes
               only the window of each crop that its warp reads (restart intervals)
- torch-whole: the same on shards written without restart intervals (--restart-mcus 0): every
               crop decoded whole, as before windows
- reference:   a reference-style loader, like the classic top-down dataset: reads the COCO
               annotation file, decodes the whole original image for every instance, flips and
               warps it with cv2, builds heatmaps in numpy one joint at a time, normalises.

    python benchmarks/data_pipeline.py [--images 300] [--ann ANN --image-dir DIR --repeat 20]
        [--epochs 2] [--rounds 5] [--detail 384x288] [--quality 95] [--json OUT] [--plot PNG]

Every loader runs on one core (torch and OpenCV limited to one thread), so samples/s is per core.
The process tunes its allocator as training does (`launch.keep_freed_memory`), for every loader.
The loaders take turns, `--epochs` each per round, for `--rounds` rounds; the median round counts,
so drift of the machine hits them alike.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import torch

from data_prep.synthetic import generate
from pose.caches import use_cache_folders
from pose.config import load_config
from pose.data.coco import box_to_center_scale, load_coco, training_instances
from pose.data.codec import HeatmapCodec
from pose.data.dali import DaliLoader
from pose.data.geometry import affine_points, get_affine_transform
from pose.data.layout import COCO_17
from pose.data.loader import IMAGENET_MEAN, IMAGENET_STD, LoaderSpec, draw_augmentation
from pose.data.sharding import ShardRequest, shard_dataset
from pose.data.torch_loader import TorchLoader
from pose.distributed import keep_freed_memory
from pose.timing import take_turns
from pose.viz.curves import throughput_bars

BATCH = 32


def reference_target(joints: np.ndarray, vis: np.ndarray, sigma: float = 2.0) -> np.ndarray:
    """The reference generate_target, one joint at a time (256x192 input, 64x48 heatmap)."""
    target = np.zeros((len(joints), 64, 48), np.float32)
    size = int(6 * sigma + 1)
    x = np.arange(0, size, 1, np.float32)
    g = np.exp(-((x - size // 2) ** 2 + (x[:, None] - size // 2) ** 2) / (2 * sigma**2))
    for j, (px, py) in enumerate(joints):
        mx, my = int(px / 4 + 0.5), int(py / 4 + 0.5)
        ul, br = (
            (int(mx - 3 * sigma), int(my - 3 * sigma)),
            (int(mx + 3 * sigma + 1), int(my + 3 * sigma + 1)),
        )
        if vis[j] <= 0 or ul[0] >= 48 or ul[1] >= 64 or br[0] < 0 or br[1] < 0:
            continue
        gx, gy = (max(0, -ul[0]), min(br[0], 48) - ul[0]), (max(0, -ul[1]), min(br[1], 64) - ul[1])
        ix, iy = (max(0, ul[0]), min(br[0], 48)), (max(0, ul[1]), min(br[1], 64))
        target[j, iy[0] : iy[1], ix[0] : ix[1]] = g[gy[0] : gy[1], gx[0] : gx[1]]
    return target


def run_reference(instances, image_dir: Path, cfg, epochs: int) -> tuple[int, float]:
    rng = np.random.default_rng(0)
    permutation = COCO_17.flip_permutation
    mean, std = np.float32(IMAGENET_MEAN), np.float32(IMAGENET_STD)
    count, start = 0, time.perf_counter()
    for _ in range(epochs):
        for inst in instances:
            image = cv2.imread(str(image_dir / inst.file_name), cv2.IMREAD_COLOR)
            center, scale = box_to_center_scale(inst.bbox, 192 / 256)
            joints, vis = inst.keypoints[:, :2].astype(np.float64), inst.keypoints[:, 2]
            s, r, flip, _, _ = draw_augmentation(rng, cfg)
            if flip:
                image = image[:, ::-1]
                joints = joints[permutation]
                vis = vis[permutation]
                joints[:, 0] = image.shape[1] - 1 - joints[:, 0]
                center = np.array([image.shape[1] - 1 - center[0], center[1]])
            m = get_affine_transform(center, scale * s, r, (192, 256))
            crop = cv2.warpAffine(
                np.ascontiguousarray(image), m, (192, 256), flags=cv2.INTER_LINEAR
            )
            joints = affine_points(m, joints)
            reference_target(joints, vis)
            rgb = crop[:, :, ::-1].astype(np.float32) / 255.0
            torch.from_numpy(((rgb - mean) / std).transpose(2, 0, 1).copy())
            count += 1
    return count, time.perf_counter() - start


def repeated_annotations(ann: Path, repeat: int, root: Path) -> Path:
    """A copy of a COCO annotation file with every annotation repeated (new ids), so that small
    fixture sets make epochs long enough to time."""
    data = json.loads(ann.read_text())
    anns = data["annotations"]
    data["annotations"] = [{**a, "id": a["id"] * repeat + k} for a in anns for k in range(repeat)]
    path = root / "repeated.json"
    path.write_text(json.dumps(data))
    return path


def run_loader(loader, epochs: int) -> tuple[int, float]:
    count, start = 0, time.perf_counter()
    for epoch in range(epochs):
        for batch in loader.epoch(epoch):
            HeatmapCodec((256, 192), (64, 48), 2.0).encode(batch["keypoints"])
            count += batch["image"].shape[0]
    return count, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=300, help="synthetic images to generate")
    parser.add_argument("--ann", help="a COCO annotation file instead of synthetic data")
    parser.add_argument("--image-dir", help="its image folder")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per loader and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--repeat", type=int, default=20, help="with --ann: repeat each annotation (longer epochs)"
    )
    parser.add_argument("--detail", default="384x288", help="shard detail (HxW)")
    parser.add_argument("--context-scale", type=float, default=1.35)
    parser.add_argument("--context-rotation", type=float, default=45.0)
    parser.add_argument("--quality", type=int, default=95, help="JPEG quality of the shards")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--plot", help="draw them here (PNG)")
    args = parser.parse_args()
    use_cache_folders()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    keep_freed_memory()  # as training processes do (launch.keep_freed_memory)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if args.ann:
            ann, image_dir = (
                repeated_annotations(Path(args.ann), args.repeat, root),
                Path(args.image_dir),
            )
        else:
            generate(root / "data", seed=0, train_images=args.images, val_images=0, progress=False)
            ann = root / "data" / "annotations" / "person_keypoints_train.json"
            image_dir = root / "data" / "images" / "train"
        for name, restart in (("shards", 4), ("whole", 0)):
            request = ShardRequest(
                annotations=ann,
                images=image_dir,
                out=root / name,
                shard_size=200,
                detail=tuple(int(v) for v in args.detail.split("x")),
                context_scale=args.context_scale,
                context_rotation=args.context_rotation,
                quality=args.quality,
                restart_mcus=restart,
                progress=False,
            )
            shard_dataset(request)
        overrides = [f"data.train_shards={root / 'shards'}", "data.num_workers=0"]
        cfg = load_config(None, overrides).data
        whole_cfg = replace(cfg, train_shards=str(root / "whole"))
        instances, _ = training_instances(load_coco(ann))
        batch = min(BATCH, len(instances))
        spec, whole = LoaderSpec(cfg, "train", batch), LoaderSpec(whole_cfg, "train", batch)
        runs = {
            "dali": lambda: run_loader(DaliLoader(spec), args.epochs),
            "torch": lambda: run_loader(TorchLoader(spec), args.epochs),
            "torch-whole": lambda: run_loader(TorchLoader(whole), args.epochs),
            "reference": lambda: run_reference(instances, image_dir, cfg, args.epochs),
        }
        measured = take_turns(runs, args.rounds)  # [(samples, seconds)] per loader
        rounds = {name: [count / seconds for count, seconds in m] for name, m in measured.items()}
        results = {}
        for name, rates in rounds.items():
            median = round(float(np.median(rates)), 1)
            results[name] = {
                "samples": measured[name][0][0],
                "rounds": [round(r, 1) for r in rates],
                "samples_per_s_per_core": median,
            }
    base = results["reference"]["samples_per_s_per_core"]
    print(
        f"\n{len(instances)} instances x {args.epochs} epochs, output 256x192 + 64x48 targets, "
        f"one core each; crops at {args.detail} detail, context for scale {args.context_scale}"
        f" / rotation {args.context_rotation}, quality {args.quality}"
    )
    print(f"{'loader':>12} {'samples/s/core':>15} {'vs reference':>13}   rounds")
    for name, row in results.items():
        row["ratio_vs_reference"] = round(row["samples_per_s_per_core"] / base, 2)
        print(
            f"{name:>12} {row['samples_per_s_per_core']:>15} {row['ratio_vs_reference']:>12}x"
            f"   {row['rounds']}"
        )
    fastest = max(("dali", "torch"), key=lambda k: results[k]["samples_per_s_per_core"])
    dali_vs_torch = round(
        results["dali"]["samples_per_s_per_core"] / results["torch"]["samples_per_s_per_core"], 2
    )
    print(
        f"faster CPU backend: {fastest} ({results[fastest]['ratio_vs_reference']}x the reference);"
        f" dali / torch: {dali_vs_torch}"
    )
    if args.plot:
        title = (
            f"Input pipelines, one core each: {len(instances)} instances, {args.detail} shard "
            f"crops\nto 256x192 inputs (the COCO recipes', not the demo's 128x96), context "
            f"x{args.context_scale} / {args.context_rotation:g}°, quality {args.quality}"
        )
        throughput_bars(
            rounds,
            Path(args.plot),
            title,
            "samples/s per core (median, range over rounds)",
            "reference",
        )
    if args.json:
        setup = {
            "instances": len(instances),
            "detail": args.detail,
            "quality": args.quality,
            "context_scale": args.context_scale,
            "context_rotation": args.context_rotation,
        }
        summary = {"faster_backend": fastest, "dali_vs_torch": dali_vs_torch}
        Path(args.json).write_text(json.dumps({**setup, **results, **summary}, indent=1))


if __name__ == "__main__":
    main()
