"""The DeepSpeed configuration, generated from our config tree (never hand-kept), and the
choice of precision.

Mixed precision uses DeepSpeed's `torch_autocast` section, not its `bf16`/`fp16` sections: those
cast the whole module, BatchNorm included (its running statistics then break), while autocast
keeps fp32 weights and BatchNorm in fp32 and runs convolutions in the lower precision.
"""

from __future__ import annotations

import torch

from pose.config import Config, ConfigError


def resolve_precision(requested: str, device: torch.device) -> str:
    """`auto`: bf16 on a GPU that has it, else fp32 (this kind of CPU has no bf16 instructions:
    bf16 convolutions run ~25x slower than fp32). fp16 needs a GPU."""
    if requested == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return "bf16"
        return "fp32"
    if requested == "fp16" and device.type != "cuda":
        raise ConfigError("config key 'train.precision': fp16 needs a GPU; use fp32 or bf16")
    return requested


def deepspeed_config(cfg: Config, world_size: int, precision: str) -> dict:
    train = cfg.train
    if precision == "fp16" and train.zero_stage != 0:
        raise ConfigError(
            "config key 'train.precision': fp16 takes its dynamic loss scaling from DeepSpeed's "
            "autocast grad scaler, which exists for train.zero_stage=0 only; use bf16 with ZeRO"
        )
    config = {
        "train_micro_batch_size_per_gpu": train.batch_size,
        "gradient_accumulation_steps": train.grad_accum,
        "train_batch_size": train.batch_size * train.grad_accum * world_size,
        "zero_optimization": {"stage": train.zero_stage},
        "steps_per_print": 10**9,  # we log ourselves
        "wall_clock_breakdown": False,
        # Always written: DeepSpeed's default clips at norm 1.0, and 0 must mean no clipping.
        "gradient_clipping": train.grad_clip,
    }
    if precision in ("bf16", "fp16"):
        config["torch_autocast"] = {
            "enabled": True,
            "dtype": "bfloat16" if precision == "bf16" else "float16",
            "lower_precision_safe_modules": [
                "torch.nn.modules.conv.Conv2d",
                "torch.nn.modules.conv.ConvTranspose2d",
                "torch.nn.modules.linear.Linear",
            ],
        }
    return config


def build_engine(model, optimizer, scheduler, cfg: Config, world_size: int, precision: str):
    """The one function that wraps a plain model in DeepSpeed (with our torch optimizer and
    per-iteration schedule). With one rank there is nothing to all-reduce, so DeepSpeed's
    gradient bucketing (flattening and copying every gradient each step) is switched off; without
    ZeRO, gradients are zeroed in place rather than freed."""
    import deepspeed

    engine, _, _, _ = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        lr_scheduler=scheduler,
        config=deepspeed_config(cfg, world_size, precision),
    )
    if world_size == 1:
        engine.enable_backward_allreduce = False
    if not engine.zero_optimization():
        engine.zero_grad = _zero_grads_in_place(engine.module)
    return engine


def _zero_grads_in_place(module: torch.nn.Module):
    """DeepSpeed frees every gradient after the optimizer step (grad = None), so the next
    backward allocates them afresh, after the forward has taken the freed memory: on a CPU that
    costs page faults, 7% of a ResNet-50 step here. Zeroing them in place keeps the buffers (a
    parameter that never got a gradient keeps None, so the optimizer still skips it)."""
    params = [p for p in module.parameters() if p.requires_grad]

    def zero_grad() -> None:
        grads = [p.grad for p in params if p.grad is not None]
        if grads:
            torch._foreach_zero_(grads)

    return zero_grad
