"""Loading weights from local files: torchvision ImageNet ResNets into a backbone, and whole-model
state dicts, ours or the reference Simple Baselines `pose_resnet` naming. Nothing is downloaded;
every file is read with `torch.load(..., weights_only=True)`."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from pose.files import refused_pickle

REFERENCE_BACKBONE_PREFIXES = ("conv1.", "bn1.", "layer1.", "layer2.", "layer3.", "layer4.")


class WeightsError(ValueError):
    """A weights file is missing or does not fit the model; the message lists the keys."""


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a local file (a bare one, or under 'state_dict' / 'model')."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file '{path}' does not exist (weights are never downloaded)")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling errors come in many types
        why = refused_pickle(e) or e
        raise WeightsError(
            f"weights file '{path}' could not be read as a state dict: {why}"
        ) from None
    for key in ("state_dict", "model", "module"):  # plain, wrapped, DeepSpeed model states
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise WeightsError(f"weights file '{path}' does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in data.items()}


def load_backbone_weights(backbone: nn.Module, path: str | Path) -> None:
    """A backbone's weights from torchvision ImageNet weights (its classifier `fc.*` is dropped)
    or from a whole pose model's (a checkpoint's model states, an export's weights,
    or the reference `pose_resnet` naming): its backbone, the head and any attention dropped."""
    state = read_state_dict(path)
    if "conv1.weight" in state and "final_layer.weight" in state:
        state = from_reference_naming(state)
    if any(k.startswith("backbone.") for k in state):
        state = {
            k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")
        }
    else:
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    load_checked(backbone, state, f"backbone weights '{path}'")


def from_reference_naming(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map the reference `pose_resnet` naming (conv1, layer1..4, deconv_layers, final_layer)
    onto ours (the backbone under `backbone.`; head names are the same)."""
    return {
        (f"backbone.{k}" if k.startswith(REFERENCE_BACKBONE_PREFIXES) else k): v
        for k, v in state.items()
    }


def load_model_weights(model: nn.Module, source: str | Path | dict[str, torch.Tensor]) -> None:
    """A whole-model state dict, in our naming or the reference's, from a file or a dict."""
    state = read_state_dict(source) if not isinstance(source, dict) else dict(source)
    if "conv1.weight" in state and "final_layer.weight" in state:
        state = from_reference_naming(state)
    where = "a state dict" if isinstance(source, dict) else f"'{source}'"
    load_checked(model, state, f"model weights from {where}")


def load_checked(module: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """Strict load whose error lists missing, unexpected and mis-shaped keys."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(expected) & set(state))
        if state[k].shape != expected[k].shape
    ]
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)):
        if keys:
            shown = ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")
            problems.append(f"{label}: {shown}")
    if problems:
        raise WeightsError(f"{what} do not fit the model ({'; '.join(problems)})")
    module.load_state_dict(state, strict=True)
