"""Loading weights: a backbone's from a local file (torchvision or timm ImageNet weights, or a
trained pose model's) or from timm's published weights by name (`timm:NAME`, downloaded and
cached by timm through the Hugging Face hub); whole-model state dicts, ours or the reference
Simple Baselines `pose_resnet` naming. Files are read as safetensors or with
`torch.load(..., weights_only=True)`: nothing loaded runs code.

A backbone built on a timm or torchvision classifier maps that classifier's naming onto its own
with `from_classifier_naming(state)` (dropping the classifier, laying out position embeddings);
the result must then fit exactly."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from pose.files import refused_pickle

REFERENCE_BACKBONE_PREFIXES = ("conv1.", "bn1.", "layer1.", "layer2.", "layer3.", "layer4.")
TIMM_PREFIX = "timm:"  # model.pretrained=timm:NAME names timm's published weights


class WeightsError(ValueError):
    """A weights file is missing or does not fit the model; the message lists the keys."""


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a local file: safetensors, or a torch file with a bare one or one under
    'state_dict' / 'model' / 'module'."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file '{path}' does not exist")
    if path.suffix != ".safetensors":
        with open(path, "rb") as f:
            head = f.read(4)
        if not head.startswith((b"PK\x03\x04", b"\x80")):  # torch's zip archive, legacy pickle
            raise WeightsError(
                f"weights file '{path}' is not a torch weights file (nor named .safetensors): "
                f"it begins {head!r}"
            )
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            data = load_file(path, device="cpu")
        else:
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


def is_timm_name(pretrained: str | Path) -> bool:
    return str(pretrained).startswith(TIMM_PREFIX)


def timm_source(name: str):
    """timm's pretrained config of `name` (architecture.tag): where its weights are published."""
    from timm.models import get_pretrained_cfg

    source = get_pretrained_cfg(name) if "." in name else None
    if source is None or not (source.hf_hub_id or source.url):
        raise WeightsError(
            f"'{TIMM_PREFIX}{name}': timm publishes no such weights (names are architecture.tag, "
            "as timm.list_pretrained() lists them, e.g. timm:vit_base_patch16_224.mae)"
        )
    return source


HUB_FILES = ("model.safetensors", "pytorch_model.bin")  # what timm's hub repositories hold


def cached_timm_file(name: str) -> Path | None:
    """The local file of timm's weights `name`: in the Hugging Face hub's cache
    (`HF_HUB_CACHE`) or, for weights published by URL only, torch.hub's (`TORCH_HOME`); None
    when they are not there. Never touches the network."""
    source = timm_source(name)
    if source.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        for filename in HUB_FILES:
            found = try_to_load_from_cache(source.hf_hub_id, filename)
            if isinstance(found, str):
                return Path(found)
        return None
    path = _url_cache_path(source.url)
    return path if path.is_file() else None


def fetch_timm_weights(name: str) -> Path:
    """Download timm's weights `name` into its cache (once; `posescale-fetch-weights`), and
    return the file. WeightsError, naming where they come from, when that fails."""
    found = cached_timm_file(name)
    if found is not None:
        return found
    source = timm_source(name)
    try:
        if source.hf_hub_id:
            from huggingface_hub import hf_hub_download
            from huggingface_hub.errors import EntryNotFoundError

            try:
                return Path(hf_hub_download(source.hf_hub_id, HUB_FILES[0]))
            except EntryNotFoundError:
                return Path(hf_hub_download(source.hf_hub_id, HUB_FILES[1]))
        path = _url_cache_path(source.url)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(source.url, str(path), progress=False)
        return path
    except Exception as e:  # the hub's and urllib's errors for offline, missing, refused
        where = source.hf_hub_id or source.url
        first = str(e).splitlines()[0] if str(e) else ""
        raise WeightsError(
            f"'{TIMM_PREFIX}{name}': timm's weights ({where}) could not be downloaded "
            f"({type(e).__name__}: {first}); this needs a machine that is online"
        ) from None


def timm_weights(name: str) -> dict[str, torch.Tensor]:
    """timm's published weights `name` in timm's naming, from the local cache only: a run never
    downloads. Not there, the error names the two ways in."""
    path = cached_timm_file(name)
    if path is None:
        source = timm_source(name)
        raise WeightsError(
            f"'{TIMM_PREFIX}{name}': timm's weights ({source.hf_hub_id or source.url}) are not in "
            f"the local cache: fetch them once on a machine that is online, `posescale-fetch-"
            f"weights {TIMM_PREFIX}{name}` (the cache can then be copied), or give "
            "model.pretrained a local file in timm's format (.safetensors or .pth)"
        )
    return read_state_dict(path)


def _url_cache_path(url: str) -> Path:
    from urllib.parse import urlparse

    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name


@dataclass
class LoadedWeights:
    """What a backbone took from its weights: how many tensors, and the source's tensors it had
    no use for (a classifier's head, the class token, a pose model's head)."""

    source: str
    loaded: int
    dropped: list[str]

    def describe(self) -> str:
        shown = ", ".join(self.dropped[:6]) + (", ..." if len(self.dropped) > 6 else "")
        left = f"; left out {len(self.dropped)}: {shown}" if self.dropped else ""
        return f"backbone weights from {self.source}: {self.loaded} tensors{left}"


def load_backbone_weights(backbone: nn.Module, source: str | Path) -> LoadedWeights:
    """A backbone's weights from `source`: `timm:NAME`, or a file of a classifier's weights
    (torchvision's or timm's naming: the backbone's `from_classifier_naming` maps them) or of a
    whole pose model (a checkpoint's model states, an export's weights, or the reference
    `pose_resnet` naming), of which the backbone is taken and the head and attention dropped.
    Returns what was loaded and what was left out."""
    if is_timm_name(source):
        name = str(source).removeprefix(TIMM_PREFIX)
        state, what = timm_weights(name), f"timm weights '{name}'"
    else:
        state, what = read_state_dict(source), f"backbone weights '{source}'"
    original = list(state)
    if "conv1.weight" in state and "final_layer.weight" in state:
        state = from_reference_naming(state)
    if any(k.startswith("backbone.") for k in state):
        state = {
            k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")
        }
    else:
        state = backbone.from_classifier_naming(state)
    load_checked(backbone, state, what)
    check = getattr(backbone, "check_timm_architecture", None)
    if is_timm_name(source) and check is not None:
        check(str(source).removeprefix(TIMM_PREFIX).split(".")[0])
    kept = list(state)
    dropped = [k for k in original if not any(key.endswith(k) for key in kept)]
    return LoadedWeights(str(source), len(state), sorted(dropped))


def drop_unused(
    state: dict[str, torch.Tensor], module: nn.Module, prefixes: tuple[str, ...]
) -> dict[str, torch.Tensor]:
    """`state` without the keys under `prefixes` that `module` does not have (a classifier's
    head, say); every other key is kept, so a real mismatch still fails the strict load."""
    own = module.state_dict()
    return {k: v for k, v in state.items() if k in own or not k.startswith(prefixes)}


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
