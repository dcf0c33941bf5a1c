"""Export a checkpoint as a plain state dict and a TorchScript module (no DeepSpeed needed to
load either).

    python launch/export.py --checkpoint CKPT --out DIR [--config CFG] [overrides]

CKPT is a run directory (its config is used unless --config is given), a DeepSpeed checkpoint
folder or a state dict. Writes DIR/model_state_dict.pth and DIR/model_torchscript.pt (traced at
the config's input size; it returns heatmaps), and checks that the traced module reproduces the
model's output.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from pose.caches import use_cache_folders
from pose.config import ConfigError, load_config
from pose.data.layout import KeypointLayout, save_layout
from pose.engine.checkpoint import layout_to_use, resolve_checkpoint
from pose.engine.errors import CheckpointError
from pose.models import build_model
from pose.models.weights import WeightsError, load_model_weights
from pose.run_folder import RunFolder


class HeatmapsOnly(torch.nn.Module):
    """Tracing wants a tensor out; the attention maps stay behind."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)


def export(checkpoint: str, out: Path, cfg, layout: KeypointLayout) -> tuple[Path, ...]:
    model = build_model(cfg.model, layout.num_joints)
    load_model_weights(model, resolve_checkpoint(checkpoint))
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    save_layout(layout, out / "layout.yaml")  # what each output channel is
    state_path, script_path = out / "model_state_dict.pth", out / "model_torchscript.pt"
    torch.save(model.state_dict(), state_path)
    example = torch.randn(1, 3, *cfg.data.image_size)
    with torch.no_grad():
        traced = torch.jit.trace(HeatmapsOnly(model), example)
        torch.jit.save(traced, str(script_path))
        reloaded = torch.jit.load(str(script_path))
        if not torch.allclose(reloaded(example), model(example), atol=1e-5):
            raise RuntimeError("the traced module does not reproduce the model's output")
    return state_path, script_path, out / "layout.yaml"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--config", help="config (default: the run directory's config.yaml)")
    parser.add_argument("--layout", help="keypoint layout of a plain state dict (default coco17)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    use_cache_folders()
    try:
        config = args.config or RunFolder(args.checkpoint).config
        cfg = load_config(config if Path(config).is_file() else None, args.overrides)
        layout = layout_to_use(args.checkpoint, args.layout)
        paths = export(args.checkpoint, Path(args.out), cfg, layout)
    except (ConfigError, WeightsError, CheckpointError) as e:
        print(f"export: error: {e}", file=sys.stderr)
        return 2
    print("export: wrote " + ", ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
