"""Building what trains, in one function that the trainer, the benchmarks and the GPU tests all
call, because the order of its steps is a rule, not a choice:

1. the model from its config, its backbone's activation checkpointing, the pretrained backbone
   (only for a run that starts fresh: a resumed run's weights are in its checkpoint), and
   SyncBatchNorm over several ranks;
2. `prepare_model`: on the device, compiled when asked (Module.compile keeps the names);
3. the optimizer over the prepared model's parameters (they must be the device's, not copies
   that `.to(device)` would leave behind), and the lr schedule laid over the run's plan;
4. the DeepSpeed engine around them;
5. `apply_memory_format` last: DeepSpeed broadcasts the parameters viewed as bytes at its start,
   which a channels_last weight refuses, and ZeRO flattens them into buffers that a conversion
   would detach them from. The conversion keeps the parameters the same objects, so the
   optimizer still holds them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from pose.config import Config, EngineConfig
from pose.distributed import DistEnv, use_sync_batchnorm
from pose.engine.deepspeed_adapter import TrainEngine, build_engine, resolve_precision
from pose.engine.optimizer import build_optimizer
from pose.engine.schedule import StepPlan, base_lr, lr_factor
from pose.folders import resolve_trained
from pose.models import build_model, load_pretrained
from pose.models.weights import is_timm_name


@dataclass
class Training:
    """The model being trained (the plain module inside the engine), its optimizer, the engine
    that steps them, and the precision it runs in."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    engine: TrainEngine
    precision: str


def build_training(
    cfg: Config,
    num_joints: int,
    env: DistEnv,
    plan: StepPlan | None = None,
    pretrained: bool = False,
    dataset_channels: tuple[tuple[int, ...], ...] = (),
) -> Training:
    """The model of `cfg.model` for `num_joints` joints trained as `cfg` says on `env`'s device
    and ranks, in the order above. `plan`: the run's steps, over which the lr schedule is laid
    (None: the base lr throughout, as the benchmarks train); `pretrained`: load
    `model.pretrained` (a run that starts fresh); `dataset_channels`: each dataset's joints
    in the union, for one head per dataset (model.heads=per_dataset)."""
    precision = resolve_precision(cfg.engine.precision, env.device)
    model = build_model(cfg.model, num_joints, dataset_channels)
    if cfg.engine.activation_checkpointing:  # the config lets only layered backbones ask
        model.backbone.set_grad_checkpointing(True)
    if pretrained and cfg.model.pretrained:
        loaded = load_pretrained(model, pretrained_source(cfg.model.pretrained))
        if env.is_main:
            print(f"train: {loaded.describe()}", flush=True)
    model = use_sync_batchnorm(model, cfg.model.sync_bn, env)
    model = prepare_model(model, cfg.engine, env.device)
    lr = base_lr(cfg.optimizer, cfg.train, env.world_size)
    optimizer = build_optimizer(model, cfg.optimizer, lr)
    schedule = None
    if plan is not None:
        factor = lr_factor(cfg.schedule, cfg.train, plan)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    engine = build_engine(
        model,
        optimizer,
        schedule,
        cfg.train,
        cfg.engine,
        cfg.optimizer.grad_clip,
        env.world_size,
        precision,
        cfg.launch.collective_timeout_s,
    )
    apply_memory_format(model, cfg.engine, env.device)
    return Training(model, optimizer, engine, precision)


def pretrained_source(pretrained: str) -> str | Path:
    """model.pretrained as `load_pretrained` takes it: timm:NAME as it is, a path resolved as
    --checkpoint is (a run, checkpoint or export folder to its weights file)."""
    return pretrained if is_timm_name(pretrained) else resolve_trained(pretrained).weights


def prepare_model(model: nn.Module, engine: EngineConfig, device: torch.device) -> nn.Module:
    """The model on `device`, compiled when `engine.compile` is set (on its first call)."""
    model = model.to(device)
    if engine.compile:
        model.compile()
    return model


def apply_memory_format(model: nn.Module, engine: EngineConfig, device: torch.device):
    """channels_last weights as `engine.memory_format` says (auto: on a GPU, without ZeRO), once
    the engine is built (step 5 above)."""
    wanted = engine.memory_format == "channels_last" or (
        engine.memory_format == "auto" and device.type == "cuda" and engine.zero_stage == 0
    )
    if wanted:
        model.to(memory_format=torch.channels_last)
    return model
