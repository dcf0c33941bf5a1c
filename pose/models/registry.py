"""A plain registry of backbones: a dict filled by a decorator."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

BACKBONES: dict[str, Callable[[], tuple[nn.Module, int]]] = {}


def register_backbone(name: str):
    """Decorator: register a builder that returns (backbone module, output channels)."""

    def add(builder: Callable[[], tuple[nn.Module, int]]):
        if name in BACKBONES:
            raise ValueError(f"backbone '{name}' is registered twice")
        BACKBONES[name] = builder
        return builder

    return add
