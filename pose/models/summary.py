"""Parameters and multiply-adds of a configured model, per input size.

    python -m pose.models.summary --config configs/coco_res50_256x192.yaml [overrides]
        [--sizes 256x192 384x288] [--json OUT.json]

Multiply-adds are true ones, from torch's own flop counter (flops / 2). The GFLOPs published
with Simple Baselines (8.9 for ResNet-50 at 256x192) came from a hook-based counter that counts a
transposed convolution as weight size x output size, four times its real work for a stride-2
deconvolution; torch counts 5.43 G multiply-adds for the same model. ViTPose's published
GFLOPs (5.26 / 17.85 / 59.78 / 122.85 for S/B/L/H at 256x192) are multiply-adds of its modules
without the products inside attention (queries x keys, weights x values); the `attention` column
is those products, so GMACs minus it is what ViTPose published.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from pose.config import ConfigError, ModelConfig, load_config
from pose.data.layout import load_layout
from pose.files import atomic_write
from pose.models.build import build_model


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# The products of attention (queries x keys, weights x values): torch counts them, the counters
# behind ViTPose's published GFLOPs (mmcv's, which count modules) do not.
ATTENTION_OPS = ("bmm", "_scaled_dot_product")


def forward_gmacs(model: torch.nn.Module, size: tuple[int, int]) -> tuple[float, torch.Tensor]:
    """True multiply-adds (G) of one forward pass of one image of `size` (height, width), and
    the output: the project's one FLOP count (torch's flop counter / 2). Build the model under
    `torch.device("meta")` to count without memory or weights."""
    gmacs, _, out = _count(model, size)
    return gmacs, out


def _count(model: torch.nn.Module, size: tuple[int, int]) -> tuple[float, float, torch.Tensor]:
    """(all multiply-adds, those of attention products) in G, and the output."""
    device = next(model.parameters()).device
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        out = model.eval()(torch.empty(1, 3, *size, device=device))
    by_op = counter.get_flop_counts().get("Global", {})
    attention = sum(v for op, v in by_op.items() if any(a in str(op) for a in ATTENTION_OPS))
    return counter.get_total_flops() / 2 / 1e9, attention / 2 / 1e9, out


def summarize(cfg: ModelConfig, num_joints: int, size: tuple[int, int]) -> dict:
    """{'params', 'gmacs', 'input', 'heatmap'} for one input size (height, width). The model is
    built on the meta device: no memory, no weights, exact counts."""
    with torch.device("meta"):
        model = build_model(cfg, num_joints)
    gmacs, attention, out = _count(model, size)
    return {
        "params": count_parameters(model),
        "gmacs": gmacs,
        "gmacs_attention": attention,  # of `gmacs`: attention's products (transformers)
        "input": list(size),
        "heatmap": list(out.shape[-2:]),
    }


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"size '{text}' is not HEIGHTxWIDTH, e.g. 256x192"
        ) from None
    return h, w


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Parameters and multiply-adds of a model.")
    parser.add_argument("--config", help="YAML config (default: built-in defaults)")
    parser.add_argument("--sizes", nargs="+", type=_size, help="input sizes HxW (default: config)")
    parser.add_argument("--json", help="write the numbers to this JSON file")
    parser.add_argument(
        "--layout",
        default="coco17",
        help="keypoint layout (a preset or file) when data.layout is ''",
    )
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. model.attention=none")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        parser.error(str(e))
    sizes = args.sizes or [cfg.data.image_size]
    joints = load_layout(cfg.data.layout or args.layout).num_joints
    rows = [summarize(cfg.model, joints, size) for size in sizes]
    name = f"{cfg.model.backbone} + deconv, attention={cfg.model.attention}"
    header = f"{'input':>10} {'heatmap':>10} {'params (M)':>11} {'GMACs':>8} {'attention':>10}"
    print(f"{name}\n{header}")
    for row in rows:
        h, w = row["input"]
        hh, hw = row["heatmap"]
        print(
            f"{f'{h}x{w}':>10} {f'{hh}x{hw}':>10} {row['params'] / 1e6:>11.2f} "
            f"{row['gmacs']:>8.2f} {row['gmacs_attention']:>10.2f}"
        )
    print(
        "GMACs: true multiply-adds (torch flop counter / 2), attention's products included; "
        "see the module docstring."
    )
    if args.json:
        payload = {"model": name, **rows[0], "sizes": rows}
        atomic_write(Path(args.json), json.dumps(payload, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
