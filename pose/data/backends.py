"""Choosing the input backend: DALI on a GPU, the torch backend on a CPU (the faster one there,
BENCHMARKS.md), or what `data.backend` says."""

from __future__ import annotations

import importlib.util

import torch

from pose.config import ConfigError, DataConfig
from pose.data.loader import Loader, LoaderSpec

DALI_EXTRAS = (
    "pip install 'posescale[dali-cuda13]' for CUDA 13 or 'posescale[dali-cuda12]' for CUDA 12"
)


def dali_installed() -> bool:
    return importlib.util.find_spec("nvidia.dali") is not None


def resolve_backend(cfg: DataConfig, device: torch.device) -> str:
    """`data.backend`; auto: DALI on a GPU when it is installed, else the torch backend."""
    if cfg.backend == "dali" and not dali_installed():
        raise ConfigError(
            f"config key 'data.backend': dali, but NVIDIA DALI is not installed; {DALI_EXTRAS}, "
            "or set data.backend=torch"
        )
    if cfg.backend != "auto":
        return cfg.backend
    return "dali" if device.type == "cuda" and dali_installed() else "torch"


def build_loader(spec: LoaderSpec) -> Loader:
    """The input pipeline `spec` asks for."""
    if resolve_backend(spec.data, spec.device) == "dali":
        from pose.data.dali import DaliLoader

        return DaliLoader(spec)
    from pose.data.torch_loader import TorchLoader

    return TorchLoader(spec)
