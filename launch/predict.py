"""Pose of the people in JPEG or PNG images: skeletons drawn over each image (PNG), keypoints in
COCO results format (JSON), and, for the attention variants, the attention maps over each crop.

    python launch/predict.py --checkpoint CKPT --image IMG_OR_DIR --out DIR
        [--boxes BOXES.json --box-thr 0.0 --ann ANNOTATIONS.json] [--config CFG]
        [--layout NAME_OR_FILE] [--device auto|cpu|cuda[:N]] [--batch-size 32] [--gif]
        [overrides]

CKPT is a run folder (its config and keypoint layout are used unless --config / --layout are
given), a checkpoint folder or a state dict (with --layout: its joints).
BOXES.json holds person boxes [x, y, w, h(, score)]: a list (one image), {file name: list}, or a
COCO detections file, whose image ids are matched to files through --ann's images or digit file
names (pose/eval/boxes.py); without boxes the whole image is one person. --gif animates the
attention pictures (or the skeletons) over a folder.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import torch
from tqdm import tqdm

from pose.caches import use_cache_folders
from pose.config import ConfigError
from pose.engine.errors import CheckpointError
from pose.engine.trained import load_trained_model
from pose.eval.boxes import BoxesError, read_boxes
from pose.eval.coco_eval import write_json
from pose.eval.inference import predict_people
from pose.models.weights import WeightsError
from pose.viz.attention import attention_panels
from pose.viz.skeleton import draw_skeleton

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}


def list_images(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not path.is_file():
        raise FileNotFoundError(f"no image or folder at '{path}'")
    return [path]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--image", required=True, help="an image, or a folder of images")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--boxes", help="person boxes JSON")
    parser.add_argument("--box-thr", type=float, default=0.0, help="drop boxes scored below this")
    parser.add_argument("--ann", help="COCO annotations whose images map file names to ids")
    parser.add_argument(
        "--layout",
        help="keypoint layout of a plain state dict (a preset such as coco17, or a file)",
    )
    parser.add_argument(
        "--config", help="config file or shipped name (default: the run's or export's own)"
    )
    parser.add_argument("--gif", action="store_true", help="an animation over the images")
    parser.add_argument("--limit", type=int, default=0, help="only the first N images")
    parser.add_argument(
        "--device", default="auto", help="auto (a GPU when there is one), cpu, cuda or cuda:N"
    )
    parser.add_argument("--batch-size", type=int, default=32, help="people per forward pass")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    use_cache_folders()
    try:
        trained = load_trained_model(args.checkpoint, args.config, args.overrides, args.layout)
        cfg, layout = trained.cfg, trained.layout
        device = pick_device(args.device)
        model = trained.model.to(device)
        images = list_images(Path(args.image))[: args.limit or None]
        boxes = read_boxes(args.boxes, images, args.box_thr, args.ann)
    except (
        ConfigError,
        WeightsError,
        CheckpointError,
        BoxesError,
        FileNotFoundError,
        ValueError,
    ) as e:
        print(f"predict: error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results, frames = [], []
    for index, path in enumerate(tqdm(images, desc="predict", disable=len(images) < 2)):
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            print(f"predict: skipped '{path}': not a readable image", file=sys.stderr)
            continue
        people = predict_people(
            model, image, boxes.of(path), cfg.eval, cfg.data, device, layout, args.batch_size
        )
        drawn = image
        for n, person in enumerate(people):
            drawn = draw_skeleton(drawn, person.keypoints, cfg.eval.keypoint_thr, layout=layout)
            results.append(
                {
                    "image_id": boxes.image_id(path, index),
                    "category_id": 1,
                    "keypoints": [round(float(v), 2) for v in person.keypoints.reshape(-1)],
                    "score": person.score,
                }
            )
            panel = attention_panels(person.crop, person.attention, layout)
            if panel is not None:
                cv2.imwrite(str(out / f"{path.stem}_person{n}_attention.png"), panel)
                frames.append(panel)
        cv2.imwrite(str(out / f"{path.stem}_pose.png"), drawn)
        if not any(p.attention for p in people):
            frames.append(drawn)
    write_json(out / "keypoints.json", results)
    if args.gif and frames:
        save_gif(frames, out / "animation.gif")
    print(f"predict: {len(results)} people in {len(images)} images on {device} -> {out}")
    return 0


def pick_device(name: str) -> torch.device:
    """`auto`: the first GPU when torch sees one, else the CPU; otherwise as named."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"--device '{name}': {e}") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: torch sees no CUDA GPU here")
    return device


def save_gif(frames: list, path: Path, fps: float = 2.0) -> None:
    from PIL import Image  # pillow comes with matplotlib and torchvision

    height = max(f.shape[0] for f in frames)
    width = max(f.shape[1] for f in frames)
    padded = [
        cv2.copyMakeBorder(f, 0, height - f.shape[0], 0, width - f.shape[1], cv2.BORDER_CONSTANT)
        for f in frames
    ]
    pictures = [Image.fromarray(f[:, :, ::-1]) for f in padded]
    pictures[0].save(
        path, save_all=True, append_images=pictures[1:], duration=int(1000 / fps), loop=0
    )


if __name__ == "__main__":
    sys.exit(main())
