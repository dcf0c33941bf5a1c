"""Pose models: plain nn.Modules that know nothing of distribution or DeepSpeed."""

from pose.models.registry import BACKBONES, build_model, register_backbone

__all__ = ["BACKBONES", "build_model", "register_backbone"]
