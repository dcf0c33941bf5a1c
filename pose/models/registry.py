"""The registry of backbones, the one list of their names: each name maps to a spec (its
builder, output channels and output stride). `model.backbone` is checked against it when a
config loads, the head and the heatmap size read the stride from it, and tests parametrise over
it. A backbone is added as one file whose builder carries `@register_backbone`, imported by
`_register_builtin` below.

This module imports nothing of the project (the config checks names against it)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    # (the model config: ModelConfig) -> the module, image -> feature maps, randomly initialised
    builder: Callable[[Any], nn.Module]
    channels: int  # of its output features
    stride: int  # input pixels per output feature pixel
    # blocks for layer-wise lr decay (train.layer_decay), the module telling each parameter's
    # through `layer_of(name)`; 0: the backbone has no such layers
    layers: int = 0


BACKBONES: dict[str, BackboneSpec] = {}


def register_backbone(name: str, channels: int, stride: int, layers: int = 0):
    """Decorator: register a builder (returning the backbone module) under `name`."""

    def add(builder: Callable[[Any], nn.Module]):
        if name in BACKBONES:
            raise ValueError(f"backbone '{name}' is registered twice")
        if channels <= 0 or stride <= 0 or stride & (stride - 1):
            raise ValueError(
                f"backbone '{name}': channels must be positive and stride a power of two "
                f"(got {channels}, {stride})"
            )
        BACKBONES[name] = BackboneSpec(name, builder, channels, stride, layers)
        return builder

    return add


def backbone_names() -> list[str]:
    _register_builtin()
    return list(BACKBONES)


def backbone_spec(name: str) -> BackboneSpec:
    """The spec of a registered backbone; KeyError naming the known ones otherwise."""
    _register_builtin()
    if name not in BACKBONES:
        raise KeyError(f"backbone '{name}' is not registered; known: {', '.join(BACKBONES)}")
    return BACKBONES[name]


def _register_builtin() -> None:
    """Import the modules whose decorators register the built-in backbones (once)."""
    import pose.models.backbones
    import pose.models.hrnet
    import pose.models.vitpose  # noqa: F401  (timm ViTs as ViTPose uses them)
