"""Training memory per GPU of a model, by ZeRO stage and activation checkpointing, against a
GPU's memory: the estimate BENCHMARKS.md gives for ViTPose-H on an 80 GB GPU.

- Model states: mixed precision through autocast keeps fp32 weights and fp32 gradients, and
  Adam two fp32 moments: 16 bytes a parameter. ZeRO-1 splits the moments over the ranks,
  ZeRO-2 the gradients too, ZeRO-3 the weights too (Rajbhandari et al. 2020).
- Activations: the bytes autograd saves for the backward pass, counted on the meta device (no
  memory, no compute) with saved-tensor hooks, each storage once and the weights left out, in
  fp32. bf16 autocast saves the inputs of matrix products in bf16, so fp32 is an upper bound.
  With activation checkpointing only each transformer block's input is kept, and one block's
  activations exist again while it is recomputed.
- Not counted: the CUDA context and allocator slack (`--reserve-gb`), and transient buffers
  of the backward pass.

    python benchmarks/memory_estimate.py [--model vitpose_h] [--batch 64] [--gpus 8]
        [--gpu-gb 80] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from pose.config import ModelConfig
from pose.models import build_model

GIB = 2**30


def model_state_bytes(params: int, zero_stage: int, ranks: int) -> float:
    """fp32 weights (4), fp32 gradients (4) and Adam's moments (8) per parameter, the parts
    ZeRO partitions divided over `ranks`."""
    weights, grads, moments = 4.0 * params, 4.0 * params, 8.0 * params
    if zero_stage >= 1:
        moments /= ranks
    if zero_stage >= 2:
        grads /= ranks
    if zero_stage >= 3:
        weights /= ranks
    return weights + grads + moments


def saved_activation_bytes(cfg: ModelConfig, batch: int, checkpointing: bool) -> int:
    """Bytes autograd saves for the backward pass of one training forward at 256x192."""
    with torch.device("meta"):
        model = build_model(cfg, 17)
    if checkpointing:
        model.backbone.set_grad_checkpointing(True)
    owned = {t.untyped_storage()._cdata for t in [*model.parameters(), *model.buffers()]}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage._cdata not in owned:
            saved[storage._cdata] = storage.nbytes()
        return tensor

    image = torch.randn(batch, 3, 256, 192, device="meta")
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(image)
    return sum(saved.values())


def estimate(backbone: str, batch: int, gpus: int, gpu_gb: float, reserve_gb: float) -> dict:
    cfg = ModelConfig(backbone=backbone, deconv_layers=2)
    with torch.device("meta"):
        params = sum(p.numel() for p in build_model(cfg, 17).parameters())
    probe = 4  # images the activations are counted on; per image, then times the batch
    per_image = {c: saved_activation_bytes(cfg, probe, c) / probe for c in (False, True)}
    blocks = cfg.backbone_layers
    recompute = per_image[False] / blocks  # one block's activations, again, in the backward
    usable = gpu_gb * 1e9 - reserve_gb * GIB
    rows = []
    for checkpointing in (False, True):
        activation = batch * (per_image[checkpointing] + (recompute if checkpointing else 0))
        for stage in (0, 1, 2, 3):
            states = model_state_bytes(params, stage, gpus)
            fits = int((usable - states) / (activation / batch))
            rows.append(
                {
                    "zero_stage": stage,
                    "activation_checkpointing": checkpointing,
                    "model_states_gib": states / GIB,
                    "activations_gib": activation / GIB,
                    "total_gib": (states + activation) / GIB,
                    "largest_batch": fits,
                }
            )
    return {
        "model": backbone,
        "params": params,
        "batch_per_gpu": batch,
        "gpus": gpus,
        "gpu_gb": gpu_gb,
        "reserve_gib": reserve_gb,
        "activation_mib_per_image": {str(k): v / 2**20 for k, v in per_image.items()},
        "rows": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="vitpose_h")
    parser.add_argument("--batch", type=int, default=64, help="images per GPU (the recipe's)")
    parser.add_argument("--gpus", type=int, default=8, help="ranks ZeRO partitions over")
    parser.add_argument("--gpu-gb", type=float, default=80.0)
    parser.add_argument("--reserve-gb", type=float, default=3.0, help="context, allocator slack")
    parser.add_argument("--json", help="write the estimate here")
    args = parser.parse_args()
    report = estimate(args.model, args.batch, args.gpus, args.gpu_gb, args.reserve_gb)
    mib = report["activation_mib_per_image"]
    print(
        f"{args.model}: {report['params'] / 1e6:.2f} M parameters; activations "
        f"{mib['False']:.0f} MiB an image, {mib['True']:.0f} MiB with checkpointing (fp32)"
    )
    for row in report["rows"]:
        print(
            f"ZeRO-{row['zero_stage']} checkpointing {row['activation_checkpointing']!s:5}: "
            f"states {row['model_states_gib']:5.2f} GiB + activations "
            f"{row['activations_gib']:5.2f} GiB = {row['total_gib']:5.2f} GiB at batch "
            f"{args.batch}; largest batch on {args.gpu_gb:.0f} GB: {row['largest_batch']}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
