"""Inference throughput, side by side in one run: the person detector alone on a batch of
images, the pose model alone on the same images with known boxes (`--people` a image), and the
two in turn (detect, then crop, pose and decode the known boxes: a random detector finds no
people to pose); images/s of each, and people/s of the pose stage. The detector has random
weights (its cost hardly depends on them: the RoI heads see a fixed number of proposals) and the
images are noise of COCO's typical size, so nothing is downloaded; the pose model is
`--config`'s with random weights.

    python benchmarks/inference.py [--detector fasterrcnn_resnet50_fpn_v2] [--config demo]
        [--batch 4] [--people 5] [--rounds 3] [--json OUT] [overrides]
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import numpy as np
import torch
import torchvision

from pose.caches import use_cache_folders
from pose.config import load_config
from pose.data.layout import COCO_17
from pose.inference import PersonDetector, PosePredictor
from pose.inference.predictor import pick_device
from pose.models import build_model
from pose.models.trained import TrainedModel
from pose.timing import interleaved

IMAGE_SIZE = (427, 640)  # height, width: COCO's most common


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--detector", default="fasterrcnn_resnet50_fpn_v2")
    parser.add_argument("--config", default="demo", help="the pose model's config")
    parser.add_argument("--batch", type=int, default=4, help="images per call")
    parser.add_argument("--people", type=int, default=5, help="boxes per image (pose stage)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    use_cache_folders()
    device = pick_device(args.device)
    torch.manual_seed(0)
    detector_file = random_detector(args.detector)
    detector = PersonDetector(args.detector, detector_file, device, score_thr=0.0, nms_thr=1.0)
    cfg = load_config(args.config, ["log.wandb=off", *args.overrides])
    model = build_model(cfg.model, COCO_17.num_joints)
    trained = TrainedModel(cfg, COCO_17, model, None)
    pose = PosePredictor(trained, None, device)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (*IMAGE_SIZE, 3), dtype=np.uint8) for _ in range(args.batch)]
    boxes = [people_boxes(rng, args.people) for _ in images]
    found = [len(b) for b in detector(images)]
    seconds = interleaved(
        {
            "detector": lambda: detector(images),
            "pose": lambda: pose(images, boxes),
            "whole": lambda: (detector(images), pose(images, boxes)),
        },
        steps=1,
        rounds=args.rounds,
        warmup=1,
    )
    result = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
        },
        "device": str(device),
        "detector": args.detector,
        "pose_model": f"{cfg.model.backbone} " + "x".join(map(str, cfg.data.image_size)),
        "flip_test": cfg.eval.flip_test,
        "batch": args.batch,
        "people_per_image": args.people,
        "boxes_found_by_the_random_detector": found,
        **{f"{k}_images_per_s": round(args.batch / v, 2) for k, v in seconds.items()},
        "pose_people_per_s": round(args.batch * args.people / seconds["pose"], 1),
    }
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return result


def random_detector(name: str) -> Path:
    """The detector's architecture with random weights, saved under the cache folder."""
    from pose.caches import cache_folder

    path = cache_folder() / "benchmarks" / f"{name}-random.pth"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        model = torchvision.models.get_model(name, weights=None, weights_backbone=None)
        torch.save(model.state_dict(), path)
    return path


def people_boxes(rng: np.random.Generator, count: int) -> np.ndarray:
    """`count` person-sized boxes (x, y, w, h, score) inside the image."""
    height, width = IMAGE_SIZE
    h = rng.uniform(0.3, 0.9, count) * height
    w = h * rng.uniform(0.3, 0.6, count)
    x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
    return np.column_stack([x, y, w, h, np.ones(count)])


if __name__ == "__main__":
    main()
