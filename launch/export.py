"""Export a checkpoint for deployment: a plain state dict, ONNX and a `torch.export` program (both
with a dynamic batch dimension), checked against the PyTorch model. No DeepSpeed is needed to
load any of them, and no posescale to run the ONNX file.

    python launch/export.py --checkpoint CKPT --out DIR [--image IMG_OR_DIR] [--config CFG]
        [--layout NAME_OR_FILE] [--no-check] [overrides]

CKPT is a run directory (its config is used unless --config is given), a DeepSpeed checkpoint
folder or a state dict. DIR becomes an export folder (pose/folders.py, ExportFolder): the
weights, the ONNX file, the program, the config and layout (what each heatmap channel is) and
the check's figures; it is itself a CKPT for eval, predict and export, and is replaced only by
a complete export. Inputs of both programs: normalised RGB crops (N, 3, H, W) at the config's
data.image_size; output: heatmaps. The check runs onnxruntime and the reloaded program on up to
4 images of --image (each whole image as one person's crop; without --image, on fixed random
inputs) at batch 1 and at all of them, and fails when the heatmaps differ by more than
--tolerance of their largest value.
"""

from __future__ import annotations

import argparse
import sys

from pose.caches import use_cache_folders
from pose.config import ConfigError
from pose.folders import ExportFolder, TrainedModelError
from pose.models.export import ExportError, export_trained, require_export_tools
from pose.models.trained import load_trained_model
from pose.models.weights import WeightsError

ERRORS = (ConfigError, WeightsError, TrainedModelError, ExportError, FileNotFoundError)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    use_cache_folders()
    try:
        require_export_tools(check=not args.no_check)  # before any work
        trained = load_trained_model(args.checkpoint, args.config, args.overrides, args.layout)
        report = export_trained(trained, args.out, args.image, args.tolerance, not args.no_check)
    except ERRORS as e:
        print(f"export: error: {e}", file=sys.stderr)
        return 2
    for c in report.checks:
        print(
            f"export: {c.program:12s} batch {c.batch}: max |diff| {c.max_abs_diff:.2e} "
            f"({c.relative:.1e} of the largest heatmap value)"
        )
    out = ExportFolder(args.out)
    written = (out.weights, out.onnx, out.program, out.config, out.layout)
    print(f"export: wrote {out.path}/ ({', '.join(p.name for p in written)})")
    if report.failed:
        print(
            f"export: error: {len(report.failed)} check(s) beyond tolerance {args.tolerance}",
            file=sys.stderr,
        )
        return 1
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--config", help="config file or shipped name (default: the run's own)")
    p.add_argument("--layout", help="keypoint layout of a plain state dict (coco17, a file)")
    p.add_argument("--image", help="image or folder to check the exports on")
    p.add_argument("--tolerance", type=float, default=1e-4, help="relative; default 1e-4")
    p.add_argument("--no-check", action="store_true", help="write without checking")
    p.add_argument("overrides", nargs="*")
    return p


if __name__ == "__main__":
    sys.exit(main())
