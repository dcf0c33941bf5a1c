"""The one `build_model`: backbone from the registry, attention variant, head."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from pose.config import ModelConfig
from pose.models.registry import backbone_spec
from pose.models.simple_baseline import SimpleBaseline
from pose.models.weights import LoadedWeights, load_backbone_weights


def build_model(
    cfg: ModelConfig, num_joints: int, dataset_channels: tuple[tuple[int, ...], ...] = ()
) -> nn.Module:
    """The pose model named by `cfg`, freshly initialised: a plain nn.Module. `cfg.pretrained`
    is not read here: a training that starts fresh loads it (`load_pretrained`), and a trained
    model gets every weight from its checkpoint. `dataset_channels`: each dataset's union
    channels, for model.heads=per_dataset (one final layer per dataset; required there)."""
    if cfg.heads == "per_dataset" and not dataset_channels:
        raise ValueError("model.heads=per_dataset needs each dataset's joints (the union layout)")
    if cfg.heads == "shared":
        dataset_channels = ()
    try:
        spec = backbone_spec(cfg.backbone)
    except KeyError as e:
        raise ValueError(f"model.backbone: {e.args[0]}") from None
    return SimpleBaseline(cfg, num_joints, spec.builder(cfg), spec.channels, dataset_channels)


def load_pretrained(model: nn.Module, weights: str | Path) -> LoadedWeights:
    """The backbone weights `weights` (timm:NAME, or a file of ImageNet weights or of a pose
    model) into the backbone of a model `build_model` made; what was loaded and left out."""
    return load_backbone_weights(model.backbone, weights)
