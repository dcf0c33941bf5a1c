"""Export (launch/export.py): a run to a plain state dict and a TorchScript module."""

import torch

from pose.config import load_config
from pose.models import build_model
from pose.models.weights import load_model_weights


def test_export_a_run_to_a_plain_state_dict_and_torchscript(
    shards, tmp_path, tiny_overrides, run_python
):
    from launch.export import main as export_main

    run = tmp_path / "run"
    args = ["launch/train.py", "--config", "configs/demo.yaml"]
    done = run_python([*args, *tiny_overrides(shards, run, **{"train.max_steps": 2})])
    assert done.returncode == 0, done.stderr[-3000:]
    assert export_main(["--checkpoint", str(run), "--out", str(tmp_path / "export")]) == 0
    cfg = load_config(run / "config.yaml")
    model = build_model(cfg.model, 17).eval()
    load_model_weights(model, tmp_path / "export" / "model_state_dict.pth")
    scripted = torch.jit.load(str(tmp_path / "export" / "model_torchscript.pt"))
    x = torch.randn(2, 3, 96, 64)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x))
