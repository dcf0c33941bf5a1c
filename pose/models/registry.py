"""A plain registry of backbones (a dict filled by a decorator) and the one `build_model`."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from pose.config import ModelConfig

BACKBONES: dict[str, Callable[[], tuple[nn.Module, int]]] = {}


def register_backbone(name: str):
    """Decorator: register a builder that returns (backbone module, output channels)."""

    def add(builder: Callable[[], tuple[nn.Module, int]]):
        if name in BACKBONES:
            raise ValueError(f"backbone '{name}' is registered twice")
        BACKBONES[name] = builder
        return builder

    return add


def build_model(cfg: ModelConfig, num_joints: int) -> nn.Module:
    """The pose model named by `cfg` (backbone, attention variant, head), with the ImageNet
    weights of `cfg.pretrained` loaded into the backbone when given. A plain nn.Module."""
    from pose.models import backbones  # noqa: F401  (fills BACKBONES)
    from pose.models.simple_baseline import SimpleBaseline
    from pose.models.weights import load_backbone_weights

    if cfg.backbone not in BACKBONES:
        raise ValueError(
            f"model.backbone '{cfg.backbone}' is not registered; known: {', '.join(BACKBONES)}"
        )
    backbone, channels = BACKBONES[cfg.backbone]()
    if cfg.pretrained:
        load_backbone_weights(backbone, cfg.pretrained)
    return SimpleBaseline(cfg, num_joints, backbone, channels)
