"""Where tools that keep caches (torch extensions, wandb, matplotlib, triton, downloaded
weights) write them: the project's `.cache/` when running from a source checkout, else the
user's cache folder (`$XDG_CACHE_HOME/posescale`, by default `~/.cache/posescale`); never
site-packages.
`POSESCALE_CACHE` overrides both, and a variable the user set is left as it is."""

from __future__ import annotations

import os
from pathlib import Path

SOURCE_ROOT = Path(__file__).resolve().parents[1]
CACHE_VARIABLES = {
    "TORCH_EXTENSIONS_DIR": "torch_extensions",
    "WANDB_DIR": "wandb",
    "WANDB_CACHE_DIR": "wandb/cache",
    "WANDB_CONFIG_DIR": "wandb/config",
    "WANDB_DATA_DIR": "wandb/data",
    "MPLCONFIGDIR": "matplotlib",
    "TRITON_CACHE_DIR": "triton",
    "HF_HUB_CACHE": "huggingface/hub",  # timm's published weights (model.pretrained=timm:NAME)
    # torch.hub's downloads: timm weights published by URL only, torchvision's detector weights
    "TORCH_HOME": "torch",
}


def cache_folder(env: dict[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    if env.get("POSESCALE_CACHE"):
        return Path(env["POSESCALE_CACHE"])
    if (SOURCE_ROOT / "setup.cfg").is_file() and os.access(SOURCE_ROOT, os.W_OK):
        return SOURCE_ROOT / ".cache"
    return Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "posescale"


def use_cache_folders() -> Path:
    """Point the cache variables that are not set at `cache_folder()`; entry points call this
    first. Returns the folder."""
    folder = cache_folder()
    for variable, sub in CACHE_VARIABLES.items():
        os.environ.setdefault(variable, str(folder / sub))
    return folder
