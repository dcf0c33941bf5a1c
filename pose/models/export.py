"""A trained model for deployment without posescale: ONNX (torch's dynamo exporter) and a
`torch.export` program, both with a dynamic batch dimension, and a check that each reproduces
the PyTorch model. Both take normalised RGB crops (N, 3, H, W) and return heatmaps
(N, joints, H/4, W/4); the attention maps stay behind.

TorchScript is not written: torch deprecates `torch.jit.trace`/`save`/`load` in favour of
`torch.export`."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from pose.config import save_config
from pose.data.geometry import crop_boxes
from pose.data.layout import save_layout
from pose.data.loader import normalise
from pose.data.union import save_union
from pose.files import atomic_write
from pose.folders import ExportFolder

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}

MAX_BATCH = 4096  # the dynamic batch dimension's upper bound in both programs
ONNX_OPSET = 18


class ExportError(RuntimeError):
    """An exporter failed, or an exported program does not reproduce the model."""


def require_export_tools(check: bool = True) -> None:
    """Fail before anything is written when the ONNX tools (onnx, onnxscript; onnxruntime for
    the check) are not installed, naming what is missing and the extra that brings it."""
    import importlib.util

    wanted = ["onnx", "onnxscript", *(["onnxruntime"] if check else [])]
    missing = [name for name in wanted if importlib.util.find_spec(name) is None]
    if missing:
        hint = " (or pass --no-check)" if missing == ["onnxruntime"] else ""
        raise ExportError(
            f"export needs {', '.join(missing)}, not installed here: install "
            f"posescale[export]{hint}"
        )


@dataclass
class ExportCheck:
    """How far an exported program's heatmaps are from the PyTorch model's, per batch size."""

    program: str  # "onnx" or "torch.export"
    batch: int
    max_abs_diff: float
    max_abs_output: float

    @property
    def relative(self) -> float:
        return self.max_abs_diff / max(self.max_abs_output, 1e-12)

    def ok(self, tolerance: float) -> bool:
        return math.isfinite(self.max_abs_diff) and self.relative <= tolerance


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> Path:
    """`model` as ONNX with input `images` and output `heatmaps`, batch dimension dynamic."""
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    chatter = io.StringIO()  # the exporter prints its progress; keep our output readable
    try:
        with contextlib.redirect_stdout(chatter), torch.no_grad():
            program = torch.onnx.export(
                model.eval(),
                (example,),
                dynamo=True,
                input_names=["images"],
                output_names=["heatmaps"],
                dynamic_shapes=({0: batch},),
                opset_version=ONNX_OPSET,
            )
    except ImportError as e:
        raise ExportError(
            f"ONNX export needs onnx and onnxscript ({e}); install posescale[export]"
        ) from e
    except Exception as e:  # the exporter's own errors carry no common base class
        raise ExportError(f"ONNX export failed: {e}\n{chatter.getvalue()[-2000:]}") from e
    path.parent.mkdir(parents=True, exist_ok=True)
    program.save(str(path))
    return path


def export_program(model: nn.Module, example: torch.Tensor, path: Path) -> Path:
    """`model` as a `torch.export` program (.pt2), batch dimension dynamic."""
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    with torch.no_grad():
        program = torch.export.export(model.eval(), (example,), dynamic_shapes=({0: batch},))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, str(path))
    return path


def check_exports(
    model: nn.Module, inputs: torch.Tensor, onnx_path: Path | None, program_path: Path | None
) -> list[ExportCheck]:
    """Run each exported file on the first 1 and on all of `inputs` (two batch sizes, so the
    dynamic dimension is exercised) and compare with the model."""
    model.eval()
    sizes = sorted({1, inputs.shape[0]})
    with torch.no_grad():
        expected = {n: model(inputs[:n]).float().numpy() for n in sizes}
    checks = []
    if onnx_path is not None:
        session = _onnx_session(onnx_path)
        for n in sizes:
            (got,) = session.run(["heatmaps"], {"images": inputs[:n].numpy()})
            checks.append(_compare("onnx", n, got, expected[n]))
    if program_path is not None:
        program = torch.export.load(str(program_path)).module()
        with torch.no_grad():
            for n in sizes:
                got = program(inputs[:n]).float().numpy()
                checks.append(_compare("torch.export", n, got, expected[n]))
    return checks


def _onnx_session(path: Path):
    try:
        import onnxruntime
    except ImportError as e:
        raise ExportError(
            "checking the ONNX file needs onnxruntime; install posescale[export] "
            "(or pass --no-check)"
        ) from e
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _compare(program: str, batch: int, got: np.ndarray, expected: np.ndarray) -> ExportCheck:
    if got.shape != expected.shape:
        raise ExportError(
            f"{program} at batch {batch} returned shape {got.shape}, expected {expected.shape}"
        )
    return ExportCheck(
        program, batch, float(np.abs(got - expected).max()), float(np.abs(expected).max())
    )


@dataclass
class ExportReport:
    folder: Path
    input: str  # what the check ran on: the images given, or "random"
    tolerance: float
    checks: list[ExportCheck]

    @property
    def failed(self) -> list[ExportCheck]:
        return [c for c in self.checks if not c.ok(self.tolerance)]

    def record(self) -> dict:
        checks = [c.__dict__ | {"relative": c.relative} for c in self.checks]
        return {"input": self.input, "tolerance": self.tolerance, "checks": checks}


def export_trained(
    trained, out: str | Path, images: str | None, tolerance: float, check: bool = True
) -> ExportReport:
    """Write `trained` (a pose.models.trained.TrainedModel) as an export folder at `out`
    (pose.folders.ExportFolder: weights, config, layout, ONNX, torch.export program and the
    check's figures): built in a new folder beside it and swapped into place when complete, so
    a failed export leaves `out` as it was. Checked on up to 4 of `images` (each whole image one
    person's crop; None: fixed random inputs)."""
    require_export_tools(check)
    inputs = check_inputs(images, tuple(trained.cfg.data.image_size))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = ExportFolder(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        save_layout(trained.layout, staging.layout)
        if trained.union is not None:
            save_union(trained.union, staging.union)
        save_config(trained.cfg, staging.config)
        buffer = io.BytesIO()
        torch.save(trained.model.state_dict(), buffer)
        atomic_write(staging.weights, buffer.getvalue())
        onnx_path = export_onnx(trained.model, inputs[:2], staging.onnx)
        program_path = export_program(trained.model, inputs[:2], staging.program)
        checks = check_exports(trained.model, inputs, onnx_path, program_path) if check else []
        report = ExportReport(out, images or "random", tolerance, checks)
        atomic_write(staging.check, json.dumps(report.record(), indent=1))
        _swap_into_place(staging.path, out)
    except BaseException:
        shutil.rmtree(staging.path, ignore_errors=True)
        raise
    return report


def check_inputs(images: str | None, image_size: tuple[int, int], count: int = 4) -> torch.Tensor:
    """Normalised crops of up to `count` images (each whole image one box), else fixed noise."""
    if not images:
        generator = torch.Generator().manual_seed(0)
        return torch.randn(count, 3, *image_size, generator=generator)
    path = Path(images)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    else:
        files = [path]
    crops = []
    for file in files[:count]:
        bgr = cv2.imread(str(file), cv2.IMREAD_COLOR)
        if bgr is None:
            raise FileNotFoundError(f"--image: '{file}' is not a readable image")
        (crop,), _ = crop_boxes(bgr, [(0.0, 0.0, bgr.shape[1], bgr.shape[0])], image_size)
        crops.append(crop[:, :, ::-1])
    if not crops:
        raise FileNotFoundError(f"--image: no JPEG or PNG at '{images}'")
    return normalise(torch.from_numpy(np.stack(crops).copy()))


def _swap_into_place(new: Path, out: Path) -> None:
    """`new` becomes `out`; an `out` there before (an earlier export) is removed after."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.replaced")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
    os.replace(new, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
