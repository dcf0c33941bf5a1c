"""The one `build_model`: backbone from the registry, attention variant, head."""

from __future__ import annotations

from torch import nn

from pose.config import ModelConfig
from pose.models import backbones  # noqa: F401  (its decorators fill BACKBONES)
from pose.models.registry import BACKBONES
from pose.models.simple_baseline import SimpleBaseline
from pose.models.weights import load_backbone_weights


def build_model(cfg: ModelConfig, num_joints: int) -> nn.Module:
    """The pose model named by `cfg`, with the ImageNet weights of `cfg.pretrained` loaded into
    the backbone when given. A plain nn.Module."""
    if cfg.backbone not in BACKBONES:
        raise ValueError(
            f"model.backbone '{cfg.backbone}' is not registered; known: {', '.join(BACKBONES)}"
        )
    backbone, channels = BACKBONES[cfg.backbone]()
    if cfg.pretrained:
        load_backbone_weights(backbone, cfg.pretrained)
    return SimpleBaseline(cfg, num_joints, backbone, channels)
