"""What both input backends share: the shard set of a split, how it is cut across ranks, the
epoch length, the batch they yield, and `build_loader`, which picks the backend.

A batch is a dict of tensors on the training device:
  image      (N, 3, H, W)  RGB, ImageNet mean/std (float or bf16; channels_last from torch)
  keypoints  (N, K, 3)     x, y in input pixels after augmentation, and visibility
  meta       (N, 9)        float64, laid out as pose.data.shards.META_FIELDS
  to_image   (N, 2, 3)     float64: input pixels -> original image pixels (for evaluation)
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pose.config import DataConfig
from pose.data.coco import KEYPOINT_NAMES
from pose.data.geometry import compose_affine_batch, flip_pairs, invert_affine_batch
from pose.data.shards import ShardError, read_manifest

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # RGB
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ShardSet:
    """The shards of one split, as listed by its manifest."""

    folder: Path
    tars: list[Path]
    indices: list[Path]
    counts: list[int]

    @classmethod
    def open(cls, folder: str | Path) -> ShardSet:
        folder = Path(folder)
        manifest = read_manifest(folder)
        shards = manifest["shards"]
        tars = [folder / s["name"] for s in shards]
        missing = [str(p) for p in tars if not p.is_file()]
        if missing:
            raise ShardError(f"shards listed in {folder}/manifest.json are missing: {missing}")
        return cls(
            folder, tars, [folder / s["index"] for s in shards], [s["num_samples"] for s in shards]
        )

    @property
    def num_samples(self) -> int:
        return sum(self.counts)

    def rank_range(self, rank: int, world: int) -> tuple[int, int]:
        """The contiguous sample range of a rank, as DALI's reader cuts it
        (shard_id / num_shards over the concatenated shards)."""
        n = self.num_samples
        return n * rank // world, n * (rank + 1) // world

    def rank_steps(self, rank: int, world: int, batch_size: int) -> int:
        """Batches that read a rank's whole range once, the last one partial (evaluation)."""
        start, stop = self.rank_range(rank, world)
        return math.ceil((stop - start) / batch_size)

    def rank_segments(self, rank: int, world: int) -> list[tuple[int, int, int]]:
        """(shard, first, stop) sample ranges inside each shard that make up a rank's range."""
        start, stop = self.rank_range(rank, world)
        segments, offset = [], 0
        for shard, count in enumerate(self.counts):
            lo, hi = max(start - offset, 0), min(stop - offset, count)
            if lo < hi:
                segments.append((shard, lo, hi))
            offset += count
        return segments


def steps_per_epoch(num_samples: int, world: int, batch_size: int, training: bool) -> int:
    """Training drops the last partial batch so that every rank runs the same number of steps;
    evaluation runs until each rank's part is exhausted (the last batch may be partial)."""
    if training:
        return num_samples // (world * batch_size)
    return math.ceil(math.ceil(num_samples / world) / batch_size)


def flip_permutation(num_joints: int) -> np.ndarray:
    """Joint order after a horizontal flip: left and right swapped."""
    if num_joints != len(KEYPOINT_NAMES):
        raise ValueError(
            f"left/right joint pairs are known for the {len(KEYPOINT_NAMES)} COCO "
            f"joints, not for {num_joints}"
        )
    perm = np.arange(num_joints)
    for left, right in flip_pairs(KEYPOINT_NAMES):
        perm[left], perm[right] = right, left
    return perm


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """A seed for one epoch (and rank): identical for the same inputs, different otherwise."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0] & 0x7FFFFFFF)


def finish_batch(batch: dict[str, torch.Tensor], device: torch.device, bf16: bool) -> dict:
    """Move a host batch to the device; normalise uint8 RGB HWC images there (NCHW, ImageNet
    mean/std); add `to_image` = crop->image affine o (input<-crop)^-1."""
    out = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    if out["image"].dtype == torch.uint8:
        out["image"] = normalise(out["image"])
    if bf16:
        out["image"] = out["image"].to(torch.bfloat16)
    if "affine" in out and "matrix" in out:
        inverse = invert_affine_batch(out.pop("matrix").double())
        out["to_image"] = compose_affine_batch(out.pop("affine").double(), inverse)
    return out


def normalise(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W, 3) RGB -> float (N, 3, H, W) in channels_last memory, ImageNet mean/std,
    on their device. One fused pass over rows of W x 3 values with the per-channel constants
    tiled along the row: broadcasting a (1, 3, 1, 1) mean over channels_last memory puts the
    channel (length 3) innermost, which does not vectorise (7x slower on a CPU)."""
    n, h, w, c = images.shape
    bias, scale = _normalise_rows(images.device, w)
    rows = images.reshape(n * h, w * c).float()
    torch.addcmul(bias, rows, scale, out=rows)
    return rows.view(n, h, w, c).permute(0, 3, 1, 2)


@functools.lru_cache(maxsize=8)
def _normalise_rows(device: torch.device, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """-mean/std and 1/std tiled along a row of `width` RGB pixels, made once per device and
    width (not copied to a GPU every batch)."""
    mean = torch.tensor(IMAGENET_MEAN) * 255.0
    inv_std = 1.0 / (torch.tensor(IMAGENET_STD) * 255.0)
    return (-mean * inv_std).repeat(width).to(device), inv_std.repeat(width).to(device)


def resolve_backend(cfg: DataConfig, device: torch.device) -> str:
    """`auto` picks DALI on a GPU and, on a CPU, the torch backend, the faster one there
    (see BENCHMARKS.md)."""
    if cfg.backend != "auto":
        return cfg.backend
    return "dali" if device.type == "cuda" else "torch"


def build_loader(
    cfg: DataConfig,
    split: str,
    batch_size: int,
    rank: int = 0,
    world: int = 1,
    device: torch.device | str = "cpu",
    seed: int = 0,
    bf16: bool = False,
):
    """The input pipeline of `split` ('train' augments and shuffles; 'val' does neither) with
    `.steps_per_epoch` and `.epoch(epoch, start_step=0)` yielding device batches."""
    device = torch.device(device)
    folder = cfg.train_shards if split == "train" else cfg.val_shards
    shards = ShardSet.open(folder)
    kind = resolve_backend(cfg, device)
    options = dict(
        shards=shards,
        cfg=cfg,
        training=split == "train",
        batch_size=batch_size,
        rank=rank,
        world=world,
        device=device,
        seed=seed,
        bf16=bf16,
    )
    if kind == "dali":
        from pose.data.dali import DaliLoader

        return DaliLoader(**options)
    from pose.data.torch_loader import TorchLoader

    return TorchLoader(**options)
