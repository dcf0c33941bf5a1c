"""DeepSpeed behind names of ours: the generated DeepSpeed config (never hand-kept), the choice of
precision, and `TrainEngine`, the one object that wraps DeepSpeed's engine. Nothing else in the
project touches DeepSpeed's attributes or file names.

Mixed precision uses DeepSpeed's `torch_autocast` section, not its `bf16`/`fp16` sections: those
cast the whole module, BatchNorm included (its running statistics then break), while autocast
keeps fp32 weights and BatchNorm in fp32 and runs convolutions in the lower precision.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from pose.config import ConfigError, EngineConfig, TrainConfig
from pose.folders import MODEL_STATES_FILE


def resolve_precision(requested: str, device: torch.device) -> str:
    """`auto`: bf16 on a GPU that has it, else fp32 (CPUs without bf16 instructions run bf16
    convolutions far slower than fp32: BENCHMARKS.md). fp16 needs a GPU."""
    if requested == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return "bf16"
        return "fp32"
    if requested == "fp16" and device.type != "cuda":
        raise ConfigError("config key 'engine.precision': fp16 needs a GPU; use fp32 or bf16")
    return requested


def deepspeed_config(
    train: TrainConfig, engine: EngineConfig, grad_clip: float, world_size: int, precision: str
) -> dict:
    """DeepSpeed's config for the batch of `train`, the ZeRO stage of `engine`, gradient
    clipping at `grad_clip` and the resolved `precision`."""
    if precision == "fp16" and engine.zero_stage != 0:
        raise ConfigError(
            "config key 'engine.precision': fp16 takes its dynamic loss scaling from DeepSpeed's "
            "autocast grad scaler, which exists for engine.zero_stage=0 only; use bf16 with ZeRO"
        )
    config = {
        "train_micro_batch_size_per_gpu": train.batch_size,
        "gradient_accumulation_steps": train.grad_accum,
        "train_batch_size": train.batch_size * train.grad_accum * world_size,
        "zero_optimization": zero_config(engine),
        "steps_per_print": 10**9,  # we log ourselves
        "wall_clock_breakdown": False,
        # Always written: DeepSpeed's default clips at norm 1.0, and 0 must mean no clipping.
        "gradient_clipping": grad_clip,
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


def zero_config(cfg: EngineConfig) -> dict:
    """DeepSpeed's zero_optimization section. At stages 1 to 3 it carries the overlap and the
    bucket size; at stage 0 DeepSpeed has no overlap of its own (`overlap_gradient_reduction`
    does it outside DeepSpeed)."""
    if cfg.zero_stage == 0:
        return {"stage": 0}
    elements = cfg.bucket_mb * 2**20 // 4  # DeepSpeed counts fp32 elements
    config = {
        "stage": cfg.zero_stage,
        "overlap_comm": cfg.overlap_comm,
        "reduce_bucket_size": elements,
        "allgather_bucket_size": elements,
    }
    if cfg.zero_stage == 3:
        config["stage3_prefetch_bucket_size"] = elements
    return config


class TrainEngine:
    """A model, its optimizer and lr schedule, trained by DeepSpeed: forward, backward, an
    optimizer step at each gradient-accumulation boundary, checkpoints of all of it."""

    def __init__(self, engine):
        self._engine = engine

    @property
    def model(self) -> torch.nn.Module:
        """The plain module being trained (no DeepSpeed wrapper)."""
        return self._engine.module

    @property
    def optimizer_steps(self) -> int:
        """Optimizer steps taken (micro-batches / gradient accumulation)."""
        return self._engine.global_steps

    @property
    def gradient_clipping(self) -> float:
        return self._engine.gradient_clipping()

    @property
    def partitions_weights(self) -> bool:
        """ZeRO-3: each rank holds a slice of every weight, and a forward pass is a collective
        (the ranks gather each layer's weights as it runs)."""
        return self._engine.zero_optimization_stage() == 3

    def local_weights(self) -> list[torch.Tensor]:
        """The weights this rank holds: all of them, or under ZeRO-3 its slices."""
        params = self._engine.module.parameters()
        if self.partitions_weights:
            return [p.ds_tensor for p in params]
        return [p.detach() for p in params]

    def parameter_count(self) -> int:
        return sum(getattr(p, "ds_numel", p.numel()) for p in self._engine.module.parameters())

    def full_state_dict(self, keep: bool = True) -> dict[str, torch.Tensor] | None:
        """The whole model's state dict (a collective under ZeRO-3: every rank takes part in
        gathering the weights, and the ranks that `keep` copy them out while gathered; the
        others get None)."""
        module = self._engine.module
        if not self.partitions_weights:
            return module.state_dict() if keep else None
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(module.parameters())):
            if not keep:
                return None
            return {k: v.detach().clone() for k, v in module.state_dict().items()}

    def __call__(self, images: torch.Tensor, **kwargs) -> torch.Tensor:
        """The model's forward pass (`kwargs`: the model's own, such as `dataset`)."""
        sync = getattr(self._engine.module, "set_requires_gradient_sync", None)
        if sync is not None:  # the overlapped reduction runs at accumulation boundaries only
            sync(self._engine.is_gradient_accumulation_boundary())
        return self._engine(images, **kwargs)

    def backward(self, loss: torch.Tensor) -> None:
        self._engine.backward(loss)

    def step(self) -> None:
        """The optimizer and lr schedule step (at an accumulation boundary; else nothing)."""
        self._engine.step()

    def loss_scale(self) -> torch.Tensor | None:
        """The fp16 grad scaler's current scale (a device tensor, no sync), or None without
        one. The scaler halves it when it skips a step whose gradients overflowed."""
        scaler = getattr(self._engine, "torch_autocast_z0_gradscaler", None)
        scale = getattr(scaler, "_scale", None) if scaler is not None else None
        return scale.clone() if scale is not None else None

    def save(self, folder: Path, tag: str, client_state: dict) -> None:
        """Every rank writes its part of checkpoint `tag` under `folder` (a collective, which
        returns when all ranks have written theirs); `latest` is left to the caller."""
        self._engine.save_checkpoint(
            str(folder), tag=tag, client_state=client_state, save_latest=False
        )
        if self.partitions_weights:  # the gathered weights where readers look, as DeepSpeed's
            writer = self._engine.global_rank == 0  # model states file holds them
            whole = self.full_state_dict(keep=writer)
            if writer:
                path = str(folder / tag / MODEL_STATES_FILE)
                self._engine.checkpoint_engine.save({"module": whole}, path)

    def load(self, folder: Path, tag: str) -> dict | None:
        """Restore model, optimizer, schedule and loss scaler from checkpoint `tag`; returns
        the client state saved with it, or None when DeepSpeed found nothing to load."""
        path, client_state = self._engine.load_checkpoint(str(folder), tag=tag)
        return None if path is None else (client_state or {})


def build_engine(
    model: torch.nn.Module,
    optimizer,
    scheduler,
    train: TrainConfig,
    cfg: EngineConfig,
    grad_clip: float,
    world_size: int,
    precision: str,
    collective_timeout_s: float | None = None,
) -> TrainEngine:
    """The one function that wraps a plain model in DeepSpeed (with our torch optimizer and
    per-iteration schedule). With one rank there is nothing to all-reduce, so DeepSpeed's
    gradient bucketing (flattening and copying every gradient each step) is switched off; without
    ZeRO, gradients are zeroed in place rather than freed. With several, the gradient all-reduce
    waits at most `collective_timeout_s` for a peer (else torch's default: 30 min for gloo), and
    at stage 0 with `cfg.overlap_comm` it runs during the backward pass."""
    import deepspeed

    _skip_shared_memory_allreduce_op()
    if world_size > 1 and collective_timeout_s is not None:
        _bound_data_parallel_group(collective_timeout_s)
    overlap = world_size > 1 and cfg.zero_stage == 0 and cfg.overlap_comm
    if overlap:
        overlap_gradient_reduction(model, cfg.bucket_mb)
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        lr_scheduler=scheduler,
        config=deepspeed_config(train, cfg, grad_clip, world_size, precision),
    )
    if world_size == 1 or overlap:  # nothing to reduce, or reduced during the backward pass
        engine.enable_backward_allreduce = False
    if not engine.zero_optimization():
        engine.zero_grad = _zero_grads_in_place(engine.module)
    engine.checkpoint_engine = SafeCheckpointFiles(engine.checkpoint_engine)
    return TrainEngine(engine)


def overlap_gradient_reduction(model: torch.nn.Module, bucket_mb: int) -> None:
    """Average `model`'s gradients over the ranks during its backward pass: torch DDP's reducer,
    applied in place (`replicate`: no wrapper, so parameter names and checkpoints stay as they
    are). Buckets of `bucket_mb` MiB start their all-reduce as soon as their gradients exist,
    asynchronously (NCCL's stream on a GPU, gloo's own thread on a CPU), while earlier layers'
    gradients are still computed; the backward pass returns once all are averaged. BatchNorm
    buffers are not broadcast (BatchNormAverage averages them), gradients live in the buckets
    (no copy), and the reduction goes over the group `_bound_data_parallel_group` made, with its
    timeout, when there is one."""
    import deepspeed.utils.groups as groups
    from torch.distributed._composable.replicate import replicate

    device = next(model.parameters()).device
    replicate(
        model,
        device_id=device,
        process_group=groups._WORLD_GROUP,  # the bounded clone, or None: torch's world group
        bucket_cap_mb=bucket_mb,
        broadcast_buffers=False,
        gradient_as_bucket_view=True,
    )
    replicate.state(model).lazy_init()  # now, a collective every rank makes, not at a forward


def _bound_data_parallel_group(timeout_s: float) -> None:
    """DeepSpeed reduces gradients over its own clone of the world group, made once with
    `new_group` and no timeout, so a hung peer would hold the others for torch's default
    (30 min for gloo) whatever the world group's timeout. Make that clone here, with ours."""
    from datetime import timedelta

    import deepspeed.utils.groups as groups
    import torch.distributed as dist

    if groups._WORLD_GROUP is None:
        ranks = list(range(dist.get_world_size()))
        groups._WORLD_GROUP = dist.new_group(ranks=ranks, timeout=timedelta(seconds=timeout_s))


def _skip_shared_memory_allreduce_op() -> None:
    """On a CPU, DeepSpeed's communication layer compiles a C++ shared-memory all-reduce op
    the first time it starts: minutes, a C++ compiler, and a compile killed midway (a host
    lost, a job cancelled) leaves a lock that makes every later start wait for ever. The op
    serves only DeepSpeed's `inference_all_reduce` (tensor-parallel inference), never a
    training step's reductions, which go through torch.distributed: mark it unavailable, so
    DeepSpeed compiles nothing."""
    import deepspeed.ops

    compatible = getattr(deepspeed.ops, "__compatible_ops__", None)
    if isinstance(compatible, dict):
        compatible["deepspeed_shm_comm"] = False


def _deepspeed_checkpoint_classes() -> list:
    """The classes of DeepSpeed's own that its checkpoint files hold (ZeRO's optimizer
    states): plain data, allowed through the weights-only unpickler."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, ZeroStageEnum, fragment_address]


class SafeCheckpointFiles:
    """DeepSpeed's checkpoint engine with our reading and writing: files are read with
    `torch.load(weights_only=True)` (tensors, plain containers and the few DeepSpeed data
    classes above; a pickle that would run code is refused) and flushed to disk before DeepSpeed
    goes on. Everything else is DeepSpeed's own."""

    def __init__(self, inner):
        self._inner = inner

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def save(self, state_dict, path: str) -> None:
        with open(path, "wb") as f:
            torch.save(state_dict, f)
            f.flush()
            os.fsync(f.fileno())

    def load(self, path: str, map_location=None):
        with torch.serialization.safe_globals(_deepspeed_checkpoint_classes()):
            return torch.load(path, map_location=map_location, weights_only=True)


def _zero_grads_in_place(module: torch.nn.Module):
    """DeepSpeed frees every gradient after the optimizer step (grad = None), so the next
    backward allocates them afresh, after the forward has taken the freed memory: on a CPU that
    costs page faults (BENCHMARKS.md, training step). Zeroing them in place keeps the buffers (a
    parameter that never got a gradient keeps None, so the optimizer still skips it)."""
    params = [p for p in module.parameters() if p.requires_grad]

    def zero_grad() -> None:
        grads = [p.grad for p in params if p.grad is not None]
        if grads:
            torch._foreach_zero_(grads)

    return zero_grad
