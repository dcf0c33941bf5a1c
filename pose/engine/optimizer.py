"""The optimizer of a training run: Adam or AdamW over the model's parameters, in one group, or
with `optimizer.layer_decay` < 1 in ViTPose's groups (Xu et al. 2022; its
LayerDecayOptimizerConstructor): block i of D at lr x decay^(D - i), the embeddings at
lr x decay^(D + 1), the final norm and the head at lr, and no weight decay for biases, norms
and the position embedding."""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import nn

from pose.config import OptimizerConfig

NO_WEIGHT_DECAY = ("pos_embed",)  # besides every 1-D parameter (biases, norms)


def build_optimizer(model: nn.Module, cfg: OptimizerConfig, lr: float) -> torch.optim.Optimizer:
    optimizer_cls = torch.optim.AdamW if cfg.name == "adamw" else torch.optim.Adam
    if cfg.layer_decay == 1:
        return optimizer_cls(model.parameters(), lr=lr, weight_decay=cfg.weight_decay)
    return optimizer_cls(layer_decay_groups(model, cfg, lr), lr=lr)


def layer_decay_groups(model: nn.Module, cfg: OptimizerConfig, lr: float) -> list[dict]:
    """One group per (layer, weight decay or not), each with its own lr; the backbone tells each
    parameter's layer (`layer_of`, `top_layer`), everything after the backbone is the top."""
    backbone = model.backbone
    top = backbone.top_layer
    groups: dict[tuple[int, bool], list[nn.Parameter]] = defaultdict(list)
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        inside = name.startswith("backbone.")
        layer = backbone.layer_of(name.removeprefix("backbone.")) if inside else top
        decays = param.ndim > 1 and not name.endswith(NO_WEIGHT_DECAY)
        groups[(layer, decays)].append(param)
    return [
        {
            "params": params,
            "lr": lr * cfg.layer_decay ** (top - layer),
            "weight_decay": cfg.weight_decay if decays else 0.0,
        }
        for (layer, decays), params in sorted(groups.items())
    ]
