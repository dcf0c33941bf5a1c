"""The registry of backbones, the one list of their names: each name maps to a spec (its
builder, output channels and output stride). `model.backbone` is checked against it when a
config loads, the head and the heatmap size read the stride from it, and tests parametrise over
it. A backbone is added as one file of pose/models whose builder carries `@register_backbone`;
the package (pose/models/__init__.py) imports every such file, so the registry is full whenever
this module has been imported (which runs the package first), timm's way.

This module imports nothing of the project (the config checks names against it)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn


@runtime_checkable
class Backbone(Protocol):
    """What every backbone module offers besides `forward` (image -> feature maps)."""

    def from_classifier_naming(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A classifier's weights (torchvision's or timm's naming) in this module's naming,
        what the backbone has no use for dropped (pose/models/weights.py loads them)."""
        ...


@runtime_checkable
class LayeredBackbone(Backbone, Protocol):
    """A backbone of `layers` blocks (a transformer): layer-wise lr decay asks each parameter's
    layer, and activation checkpointing recomputes the blocks."""

    @property
    def top_layer(self) -> int:
        """The layer of what comes after the blocks (the final norm; the head above it)."""
        ...

    def layer_of(self, name: str) -> int:
        """The layer (0: the embeddings, 1..D: the blocks) of a parameter, by its name."""
        ...

    def set_grad_checkpointing(self, enable: bool = True) -> None: ...


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    # (the model config: ModelConfig) -> the module (a Backbone; a LayeredBackbone when it has
    # `layers`), image -> feature maps, randomly initialised
    builder: Callable[[Any], nn.Module]
    channels: int  # of its output features
    stride: int  # input pixels per output feature pixel
    # blocks for layer-wise lr decay (optimizer.layer_decay), the module telling each parameter's
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
    return list(BACKBONES)


def backbone_spec(name: str) -> BackboneSpec:
    """The spec of a registered backbone; KeyError naming the known ones otherwise."""
    if name not in BACKBONES:
        raise KeyError(f"backbone '{name}' is not registered; known: {', '.join(BACKBONES)}")
    return BACKBONES[name]
