"""Pose of the people in images and videos: skeletons drawn over each image (PNG) or video (MP4),
keypoints in COCO results format (JSON), and, for the attention variants, the attention maps of
each person. The people are found by a detector, read from a boxes file, or taken to fill each
image, as you say:

    python launch/predict.py --checkpoint CKPT --input IMAGE|FOLDER|GLOB|VIDEO --out DIR
        (--detector NAME [--detector-weights FILE] | --boxes FILE [--ann COCO.json]
         | --whole-image) [--box-thr 0.3] [--nms-thr 0.3] [--as-video [--fps 25]]
        [--config CFG] [--layout NAME_OR_FILE] [--device auto] [--batch-size 32]
        [--frames 8] [--limit N] [--gif] [overrides]

CKPT is a run folder (its config and keypoint layout are used unless --config / --layout are
given), a checkpoint folder, an export folder or a state dict (with --config and --layout).
Boxes are x, y, w, h[, score] in image pixels (pose/inference/boxes.py). The Python API is
pose.inference.PosePredictor. Exit 2 when it cannot start (the message says why).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pose.caches import use_cache_folders
from pose.config import ConfigError
from pose.folders import TrainedModelError
from pose.inference.boxes import BoxesError
from pose.inference.detector import DEFAULT_NMS_THR, DEFAULT_SCORE_THR, DetectorError
from pose.inference.run import PredictError, PredictRequest, predict_files
from pose.models.weights import WeightsError

STARTUP_ERRORS = (
    ConfigError,
    WeightsError,
    TrainedModelError,
    BoxesError,
    DetectorError,
    PredictError,
    FileNotFoundError,
    ValueError,
)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    use_cache_folders()
    options = {k: v for k, v in vars(args).items() if k not in ("input", "ann")}
    request = PredictRequest(inputs=args.input, annotations=args.ann, **options)
    try:
        result = predict_files(request)
    except STARTUP_ERRORS as e:
        print(f"predict: error: {e}", file=sys.stderr)
        return 2
    nobody = f"; nobody found in {result.without_people}" if result.without_people else ""
    print(
        f"predict: {result.people} people in {result.images} images or frames{nobody} "
        f"-> {request.out}"
    )
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--input", "--image", required=True, help="image, folder, glob or video")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--detector", help="a torchvision detector, e.g. fasterrcnn_resnet50_fpn_v2")
    p.add_argument("--detector-weights", help="its weights file (default: torchvision's cache)")
    p.add_argument("--boxes", help="person boxes: a list, {file name: boxes}, COCO detections")
    p.add_argument("--whole-image", action="store_true", help="one person fills each image")
    p.add_argument("--box-thr", type=float, default=DEFAULT_SCORE_THR, help="min box score")
    p.add_argument("--nms-thr", type=float, default=DEFAULT_NMS_THR, help="box NMS IoU")
    p.add_argument("--ann", help="COCO annotations: image ids, and the people no box found")
    p.add_argument("--layout", help="keypoint layout of a plain state dict (coco17, a file)")
    p.add_argument(
        "--dataset", default="", help="a model of several datasets: predict one's joints"
    )
    p.add_argument("--config", help="config file or shipped name (default: the run's own)")
    p.add_argument("--device", default="auto", help="auto (a GPU if any), cpu, cuda or cuda:N")
    p.add_argument("--batch-size", type=int, default=32, help="people per forward pass")
    p.add_argument("--frames", type=int, default=8, help="images or frames per batch")
    p.add_argument("--as-video", action="store_true", help="a folder of images is one video")
    p.add_argument("--fps", type=float, default=25.0, help="of a video made of frames")
    p.add_argument("--limit", type=int, default=0, help="only the first N of each input")
    p.add_argument("--gif", action="store_true", help="an animation over the images")
    p.add_argument("overrides", nargs="*")
    return p


if __name__ == "__main__":
    sys.exit(main())
