"""posescale: distributed training of top-down 2D human pose estimation."""

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def _keep_caches_in_project() -> None:
    """Tools that write caches (torch extensions, wandb, matplotlib, triton) write them under
    the project's .cache/ rather than the home directory, unless the user chose elsewhere."""
    cache = Path(os.environ.get("POSESCALE_CACHE", PROJECT_ROOT / ".cache"))
    for var, sub in (
        ("TORCH_EXTENSIONS_DIR", "torch_extensions"),
        ("WANDB_DIR", "wandb"),
        ("WANDB_CACHE_DIR", "wandb/cache"),
        ("WANDB_CONFIG_DIR", "wandb/config"),
        ("WANDB_DATA_DIR", "wandb/data"),
        ("MPLCONFIGDIR", "matplotlib"),
        ("TRITON_CACHE_DIR", "triton"),
    ):
        os.environ.setdefault(var, str(cache / sub))


_keep_caches_in_project()
