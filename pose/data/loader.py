"""What both input backends share: how a loader is asked for (`LoaderSpec`), the interface they
implement (`Loader`), one sample's augmentation draw, the epoch length and seed, and the last
steps of every batch on the device.

A batch is a dict of tensors on the training device:
  image      (N, 3, H, W)  RGB float, ImageNet mean/std (channels_last from the torch backend)
  keypoints  (N, K, 3)     x, y in input pixels after augmentation, and visibility
  meta       (N, 9)        float64, laid out as pose.data.shards.META_FIELDS
  to_image   (N, 2, 3)     float64: input pixels -> original image pixels (for evaluation)
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
import torch

from pose.config import DataConfig
from pose.data.geometry import compose_affine_batch, invert_affine_batch
from pose.data.layout import KeypointLayout
from pose.data.shards import ShardError, ShardSet

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # RGB
IMAGENET_STD = (0.229, 0.224, 0.225)


class Augmentation(NamedTuple):
    """One training sample's random draw."""

    scale: float  # factor on the padded box
    rotation: float  # degrees
    flip: bool
    half_body: bool
    prefer_upper: bool  # which half, where half_body applies


NO_AUGMENTATION = Augmentation(1.0, 0.0, False, False, False)


@dataclass(frozen=True)
class LoaderSpec:
    """Everything that decides what a loader yields."""

    data: DataConfig
    split: Literal["train", "val"]  # train augments, shuffles and drops the last partial batch
    batch_size: int
    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    seed: int = 0

    @property
    def training(self) -> bool:
        return self.split == "train"

    @property
    def folder(self) -> Path:
        return Path(self.data.train_shards if self.training else self.data.val_shards)


class Loader(ABC):
    """The interface of both backends: `epoch(e, start_batch)` yields the device batches of
    epoch `e` from batch `start_batch` on; `batches_per_epoch` is how many it yields from 0
    (training: fixed by the manifest, the same on every rank; evaluation: this rank's part);
    `samples_read` and `bad_samples` count the samples read and those skipped because they do
    not decode, and `bad_sample_names` names the skipped ones ('shard.tar key'). `layout` is
    the shards' keypoint layout."""

    def __init__(self, spec: LoaderSpec):
        self.spec = spec
        self.shards = ShardSet.open(spec.folder)
        self.layout: KeypointLayout = self.shards.layout
        self.samples_read = 0
        self.bad_samples = 0
        self.bad_sample_names: list[str] = []
        if spec.training:
            self.batches_per_epoch = self.shards.num_samples // (spec.world * spec.batch_size)
            if self.batches_per_epoch == 0:
                raise ShardError(
                    f"{self.shards.num_samples} samples in {spec.folder} are fewer than one "
                    f"batch of {spec.batch_size} on each of {spec.world} ranks"
                )
        else:
            self.batches_per_epoch = self.shards.rank_batches(
                spec.rank, spec.world, spec.batch_size
            )

    @property
    def folders(self) -> list[Path]:
        """The shard folders it reads."""
        return [self.spec.folder]

    @abstractmethod
    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[dict]: ...


def draw_augmentation(rng: np.random.Generator, cfg: DataConfig) -> Augmentation:
    """One sample's augmentation, drawn as the reference recipe does (HRNet's
    `randn() < 0.5` for the upper body included)."""
    sf, rf = cfg.scale_factor, cfg.rotation_factor
    scale = float(np.clip(rng.standard_normal() * sf + 1, 1 - sf, 1 + sf))
    rotation = float(np.clip(rng.standard_normal() * rf, -2 * rf, 2 * rf))
    if rng.random() >= cfg.rotation_prob:
        rotation = 0.0
    flip = bool(rng.random() < cfg.flip_prob)
    half = bool(rng.random() < cfg.half_body_prob)
    return Augmentation(scale, rotation, flip, half, bool(rng.standard_normal() < 0.5))


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """A seed for one epoch (and rank): identical for the same inputs, different otherwise."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0] & 0x7FFFFFFF)


def finish_batch(batch: dict[str, torch.Tensor], device: torch.device) -> dict:
    """Move a host batch to the device; normalise uint8 RGB HWC images there (NCHW, ImageNet
    mean/std); add `to_image` = crop->image affine o (input<-crop)^-1."""
    out = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    if out["image"].dtype == torch.uint8:
        out["image"] = normalise(out["image"])
    if "affine" in out and "matrix" in out:
        inverse = invert_affine_batch(out.pop("matrix").double())
        out["to_image"] = compose_affine_batch(out.pop("affine").double(), inverse)
    return out


def normalise(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W, 3) RGB -> float (N, 3, H, W) in channels_last memory, ImageNet mean/std,
    on their device. One fused pass over rows of W x 3 values with the per-channel constants
    tiled along the row: broadcasting a (1, 3, 1, 1) mean over channels_last memory puts the
    channel (length 3) innermost, which does not vectorise (BENCHMARKS.md, input pipelines)."""
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
