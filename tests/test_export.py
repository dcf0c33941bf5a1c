"""Export (launch/export.py, pose/models/export.py): a state dict, ONNX and a torch.export
program with a dynamic batch, checked by onnxruntime against the PyTorch model on real images."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import import_extra

from pose.config import load_config
from pose.data.layout import COCO_17
from pose.folders import ExportFolder
from pose.models import build_model
from pose.models.export import check_exports, export_onnx
from pose.models.trained import load_trained_model
from pose.models.weights import load_model_weights

onnxruntime = import_extra("onnxruntime", "export")
ROOT = Path(__file__).resolve().parents[1]


def test_export_a_trained_run_to_all_three_forms(shards, tmp_path, tiny_overrides, run_python):
    from launch.export import main as export_main

    run = tmp_path / "run"
    args = ["launch/train.py", "--config", "configs/demo.yaml"]
    done = run_python([*args, *tiny_overrides(shards, run, **{"train.max_steps": 2})])
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "export"
    assert export_main(["--checkpoint", str(run), "--out", str(out)]) == 0
    cfg = load_config(run / "config.yaml")
    model = build_model(cfg.model, 17).eval()
    load_model_weights(model, out / "model_state_dict.pth")
    x = torch.randn(2, 3, 96, 64)
    program = torch.export.load(str(out / "model.pt2")).module()
    with torch.no_grad():
        torch.testing.assert_close(program(x), model(x))
    assert {p.name for p in out.iterdir()} >= {"layout.yaml", "model.onnx", "export_check.json"}
    again = load_trained_model(out)  # the export folder is a checkpoint of its own
    assert again.cfg == cfg and again.layout.joints == COCO_17.joints
    assert again.weights == ExportFolder(out).weights


@pytest.mark.parametrize("attention", ["none", "holistic", "partwise"])
def test_onnxruntime_matches_pytorch_on_real_images_at_any_batch(
    attention, coco_fixtures, tmp_path
):
    """Every variant, a head with weights large enough that the heatmaps are far from zero,
    four real COCO images (checked at batch 1 and 4 by the CLI, at 3 here)."""
    from launch.export import main as export_main
    from pose.models.export import check_inputs

    overrides = [f"model.attention={attention}", "data.image_size=[96,64]"]
    cfg = load_config("configs/demo.yaml", overrides)
    torch.manual_seed(0)
    model = build_model(cfg.model, 17).eval()
    for name, p in model.named_parameters():
        if not name.startswith("backbone") and p.dim() > 1:
            torch.nn.init.normal_(p, std=0.05)
    torch.save(model.state_dict(), tmp_path / "weights.pth")
    out = tmp_path / "export"
    argv = ["--checkpoint", str(tmp_path / "weights.pth"), "--config", "configs/demo.yaml"]
    argv += ["--layout", "coco17", "--out", str(out), "--image", str(coco_fixtures), *overrides]
    assert export_main(argv) == 0
    report = json.loads((out / "export_check.json").read_text())
    assert {(c["program"], c["batch"]) for c in report["checks"]} == {
        ("onnx", 1),
        ("onnx", 4),
        ("torch.export", 1),
        ("torch.export", 4),
    }
    assert all(c["relative"] < 1e-4 and c["max_abs_output"] > 1e-2 for c in report["checks"])

    session = onnxruntime.InferenceSession(str(out / "model.onnx"))
    images = check_inputs(str(coco_fixtures), (96, 64))[:3]
    (heatmaps,) = session.run(["heatmaps"], {"images": images.numpy()})
    with torch.no_grad():
        expected = model(images).numpy()
    assert heatmaps.shape == (3, 17, 24, 16)
    np.testing.assert_allclose(heatmaps, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    # the same joints win: what a deployed model would report
    assert (heatmaps.reshape(3, 17, -1).argmax(-1) == expected.reshape(3, 17, -1).argmax(-1)).all()


def test_the_check_catches_a_file_that_is_not_the_model(tmp_path):
    cfg = load_config("configs/demo.yaml", ["data.image_size=[96,64]"])
    torch.manual_seed(0)
    exported, other = build_model(cfg.model, 17).eval(), build_model(cfg.model, 17).eval()
    x = torch.randn(2, 3, 96, 64)
    path = export_onnx(exported, x, tmp_path / "model.onnx")
    assert all(c.ok(1e-4) for c in check_exports(exported, x, path, None))
    assert not any(c.ok(1e-4) for c in check_exports(other, x, path, None))


def test_export_without_the_onnx_tools_says_which_and_writes_nothing(monkeypatch, tmp_path, capsys):
    """As on a node installed without the export extra: the error names the missing packages
    and the extra, before any file is written."""
    import importlib.util

    from launch import export

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "onnxscript" else real(name)
    )
    out = tmp_path / "export"
    assert export.main(["--checkpoint", str(tmp_path / "run"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "export needs onnxscript" in err and "install posescale[export]" in err
    assert not out.exists()


def test_the_docs_onnx_example_finds_what_posescale_finds(coco_fixtures, tmp_path):
    """docs/evaluation.md's example (crop, normalise, run, decode, map back) on an exported
    model and a real image gives posescale's keypoints without its refinement and flip test:
    within a quarter heatmap pixel, the quarter-pixel move posescale's argmax adds."""
    import re

    import cv2

    from launch.export import main as export_main
    from pose.inference.predictor import PosePredictor

    text = (ROOT / "docs" / "evaluation.md").read_text()
    example = re.search(r"```python\n(import cv2\nimport numpy.*?)```", text, re.S)[1]
    namespace: dict = {}
    exec(example, namespace)  # our own docs' code
    cfg = load_config("configs/demo.yaml", ["eval.flip_test=false", "eval.decode=argmax"])
    torch.manual_seed(0)
    model = build_model(cfg.model, 17).eval()
    for name, p in model.named_parameters():  # heatmaps with clear, positive maxima
        if name.startswith("final_layer"):
            torch.nn.init.normal_(p, std=0.5)
    torch.nn.init.constant_(model.final_layer.bias, 5.0)
    weights = tmp_path / "w.pth"
    torch.save(model.state_dict(), weights)
    out = tmp_path / "export"
    argv = [
        "--checkpoint",
        str(weights),
        "--config",
        "demo",
        "--layout",
        "coco17",
        "--out",
        str(out),
    ]
    assert export_main([*argv, "--no-check"]) == 0
    image = cv2.imread(str(coco_fixtures / "000000000785.jpg"))
    box = (280.79, 44.73, 218.7, 346.68)
    ours = namespace["keypoints_from_onnx"](out / "model.onnx", image, box, (128, 96))
    trained = load_trained_model(out, "demo", ["eval.flip_test=false", "eval.decode=argmax"])
    (person,) = PosePredictor(trained, None, "cpu")([image], [[box]])[0]
    image_per_heatmap_pixel = 346.68 * 1.25 / 32  # the box's padded height over 32 rows
    np.testing.assert_allclose(ours[:, 2], person.keypoints[:, 2], rtol=1e-4)
    assert (ours[:, 2] > 0).all()
    error = np.abs(ours[:, :2] - person.keypoints[:, :2]).max()
    assert error <= 0.25 * image_per_heatmap_pixel + 1e-3, error
