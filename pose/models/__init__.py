"""Pose models: plain nn.Modules that know nothing of distribution or DeepSpeed."""

from pose.models.build import build_model, load_pretrained
from pose.models.registry import BACKBONES, backbone_names, backbone_spec, register_backbone

__all__ = [
    "BACKBONES",
    "backbone_names",
    "backbone_spec",
    "build_model",
    "load_pretrained",
    "register_backbone",
]
