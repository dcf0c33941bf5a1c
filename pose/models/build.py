"""The one `build_model`: backbone from the registry, attention variant, head."""

from __future__ import annotations

from torch import nn

from pose.config import ModelConfig
from pose.models import backbones  # noqa: F401  (its decorators fill BACKBONES)
from pose.models.registry import BACKBONES
from pose.models.simple_baseline import SimpleBaseline
from pose.models.weights import load_backbone_weights


def build_model(cfg: ModelConfig, num_joints: int) -> nn.Module:
    """The pose model named by `cfg`, freshly initialised: a plain nn.Module. `cfg.pretrained`
    is not read here: a training that starts fresh loads it (`load_pretrained`), and a trained
    model gets every weight from its checkpoint."""
    if cfg.backbone not in BACKBONES:
        raise ValueError(
            f"model.backbone '{cfg.backbone}' is not registered; known: {', '.join(BACKBONES)}"
        )
    backbone, channels = BACKBONES[cfg.backbone]()
    return SimpleBaseline(cfg, num_joints, backbone, channels)


def load_pretrained(model: nn.Module, cfg: ModelConfig) -> None:
    """The weights of `cfg.pretrained` (ImageNet, or a pose model's backbone) into the backbone
    of a model `build_model` made; nothing when it names none."""
    if cfg.pretrained:
        load_backbone_weights(model.backbone, cfg.pretrained)
