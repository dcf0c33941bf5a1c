"""Choosing the input backend: DALI on a GPU, the torch backend on a CPU (the faster one there,
BENCHMARKS.md), or what `data.backend` says."""

from __future__ import annotations

import torch

from pose.config import DataConfig
from pose.data.loader import Loader, LoaderSpec


def resolve_backend(cfg: DataConfig, device: torch.device) -> str:
    if cfg.backend != "auto":
        return cfg.backend
    return "dali" if device.type == "cuda" else "torch"


def build_loader(spec: LoaderSpec) -> Loader:
    """The input pipeline `spec` asks for."""
    if resolve_backend(spec.data, spec.device) == "dali":
        from pose.data.dali import DaliLoader

        return DaliLoader(spec)
    from pose.data.torch_loader import TorchLoader

    return TorchLoader(spec)
