"""Pose models: plain nn.Modules that know nothing of distribution or DeepSpeed."""

from pose.models.build import build_model, load_pretrained
from pose.models.registry import BACKBONES, register_backbone

__all__ = ["BACKBONES", "build_model", "load_pretrained", "register_backbone"]
