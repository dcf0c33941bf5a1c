"""Pose models: plain nn.Modules that know nothing of distribution or DeepSpeed. Importing the
package registers every backbone family (pose/models/registry.py)."""

from pose.models import backbones, hrnet, vitpose  # noqa: F401  (each registers its backbones)
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
