"""Export a checkpoint for deployment: a plain state dict, ONNX and a `torch.export` program (both
with a dynamic batch dimension), checked against the PyTorch model. No DeepSpeed is needed to
load any of them, and no posescale to run the ONNX file.

    python launch/export.py --checkpoint CKPT --out DIR [--image IMG_OR_DIR] [--config CFG]
        [--layout NAME_OR_FILE] [--no-check] [overrides]

CKPT is a run directory (its config is used unless --config is given), a DeepSpeed checkpoint
folder or a state dict. DIR becomes an export folder (pose/folders.py, ExportFolder): the
weights, the ONNX file, the program, the config and layout (what each heatmap channel is) and
the check's figures; it is itself a CKPT for eval, predict and export. Inputs of both
programs: normalised RGB crops (N, 3, H, W) at the config's data.image_size; output: heatmaps.
The check runs onnxruntime and the reloaded program on up to 4 images of --image (each whole
image as one person's crop; without --image, on fixed random inputs) at batch 1 and at all of
them, and fails when the heatmaps differ by more than --tolerance of their largest value.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import torch

from pose.caches import use_cache_folders
from pose.config import ConfigError, save_config
from pose.data.layout import save_layout
from pose.data.loader import normalise
from pose.engine.errors import CheckpointError
from pose.engine.trained import load_trained_model
from pose.eval.inference import crop_boxes
from pose.files import atomic_write
from pose.folders import ExportFolder
from pose.models.export import (
    ExportError,
    check_exports,
    export_onnx,
    export_program,
    require_export_tools,
)
from pose.models.weights import WeightsError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}


def check_inputs(image: str | None, image_size: tuple[int, int], count: int = 4) -> torch.Tensor:
    """Normalised crops of up to `count` images (each whole image one box), else fixed noise."""
    if not image:
        generator = torch.Generator().manual_seed(0)
        return torch.randn(count, 3, *image_size, generator=generator)
    path = Path(image)
    files = (
        sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if (path.is_dir())
        else [path]
    )
    crops = []
    for file in files[:count]:
        bgr = cv2.imread(str(file), cv2.IMREAD_COLOR)
        if bgr is None:
            raise FileNotFoundError(f"--image: '{file}' is not a readable image")
        (crop,), _ = crop_boxes(bgr, [(0.0, 0.0, bgr.shape[1], bgr.shape[0])], image_size)
        crops.append(crop[:, :, ::-1])
    if not crops:
        raise FileNotFoundError(f"--image: no JPEG or PNG at '{image}'")
    return normalise(torch.from_numpy(np.stack(crops).copy()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument(
        "--config", help="config file or shipped name (default: the run's or export's own)"
    )
    parser.add_argument(
        "--layout",
        help="keypoint layout of a plain state dict (a preset such as coco17, or a file)",
    )
    parser.add_argument("--image", help="image or folder to check the exports on")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="relative; default 1e-4")
    parser.add_argument("--no-check", action="store_true", help="write without checking")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    use_cache_folders()
    out = ExportFolder(args.out)
    try:
        require_export_tools(check=not args.no_check)
        trained = load_trained_model(args.checkpoint, args.config, args.overrides, args.layout)
        cfg, layout, model = trained.cfg, trained.layout, trained.model
        inputs = check_inputs(args.image, tuple(cfg.data.image_size))
        out.path.mkdir(parents=True, exist_ok=True)
        save_layout(layout, out.layout)
        save_config(cfg, out.config)
        torch.save(model.state_dict(), out.weights)
        onnx_path = export_onnx(model, inputs[:2], out.onnx)
        program_path = export_program(model, inputs[:2], out.program)
        checks = [] if args.no_check else check_exports(model, inputs, onnx_path, program_path)
    except (ConfigError, WeightsError, CheckpointError, ExportError, FileNotFoundError) as e:
        print(f"export: error: {e}", file=sys.stderr)
        return 2
    report = {
        "input": args.image or "random",
        "tolerance": args.tolerance,
        "checks": [c.__dict__ | {"relative": c.relative} for c in checks],
    }
    atomic_write(out.check, json.dumps(report, indent=1))
    for c in checks:
        print(
            f"export: {c.program:12s} batch {c.batch}: max |diff| {c.max_abs_diff:.2e} "
            f"({c.relative:.1e} of the largest heatmap value)"
        )
    written = (out.weights, out.onnx, out.program, out.config, out.layout)
    print(f"export: wrote {out.path}/ ({', '.join(p.name for p in written)})")
    failed = [c for c in checks if not c.ok(args.tolerance)]
    if failed:
        print(
            f"export: error: {len(failed)} check(s) beyond tolerance {args.tolerance}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
