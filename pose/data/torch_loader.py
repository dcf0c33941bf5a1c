"""The PyTorch backend: torch DataLoader workers over the WebDataset shards, cv2 for decoding and
warping. Same sample semantics as the DALI pipeline; the baseline the benchmark compares with.

Each epoch the rank's samples (the same contiguous range DALI's reader gives it) are cut into
small chunks of consecutive samples; the chunk order and the order inside each chunk are shuffled
with a seed of (seed, epoch, rank). Batch b takes the next `batch_size` samples of that order and
is built by worker b % workers, so batches arrive in order whatever the worker count, and an epoch
can start at any step without reading what it skips. Samples are read at the offsets the DALI
index gives, as DALI reads them (one read per sample; no tar headers parsed on the hot path).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from pose.config import DataConfig
from pose.data.geometry import affine_points, augmented_transform, half_body_box
from pose.data.jpeg import decode_for_warp, decode_rgb, read_header
from pose.data.loader import (
    ShardSet,
    epoch_seed,
    finish_batch,
    flip_permutation,
    steps_per_epoch,
)
from pose.data.shards import META, ShardError, decode_npy

CHUNK = 8  # consecutive samples read together


class ShardIndex:
    """Where each sample's members lie in a shard, from its DALI index (wds2idx v1.2)."""

    def __init__(self, index_path: Path):
        self.spans: list[tuple[int, int]] = []  # (first byte, end byte) of each sample
        self.members: list[dict[str, tuple[int, int]]] = []  # ext -> (offset, size) in span
        self.keys: list[str] = []
        for line in index_path.read_text().splitlines()[1:]:
            fields = line.split()
            self.keys.append(fields[3].split(".", 1)[0])
            entries = {
                fields[k]: (int(fields[k + 1]), int(fields[k + 2]))
                for k in range(0, len(fields), 4)
            }
            start = min(offset for offset, _ in entries.values())
            end = max(offset + size for offset, size in entries.values())
            self.spans.append((start, end))
            self.members.append({ext: (off - start, size) for ext, (off, size) in entries.items()})

    def read(self, stream, index: int) -> dict[str, bytes]:
        start, end = self.spans[index]
        stream.seek(start)
        data = stream.read(end - start)
        if len(data) != end - start:
            raise ShardError(f"sample #{index} runs past the end of the shard (truncated file?)")
        return {ext: data[off : off + size] for ext, (off, size) in self.members[index].items()}


NO_AUGMENTATION = (1.0, 0.0, False, False, False)


def draw_augmentation(rng: np.random.Generator, cfg: DataConfig) -> tuple:
    """(scale factor, rotation in degrees, flip, half body, prefer upper body), drawn as the
    reference recipe does (HRNet's `randn() < 0.5` for the upper body included)."""
    sf, rf = cfg.scale_factor, cfg.rotation_factor
    scale = float(np.clip(rng.standard_normal() * sf + 1, 1 - sf, 1 + sf))
    rotation = float(np.clip(rng.standard_normal() * rf, -2 * rf, 2 * rf))
    if rng.random() >= cfg.rotation_prob:
        rotation = 0.0
    flip = bool(rng.random() < cfg.flip_prob)
    half = bool(rng.random() < cfg.half_body_prob)
    return scale, rotation, flip, half, bool(rng.standard_normal() < 0.5)


def transform_sample(
    parts: dict[str, bytes],
    augmentation: tuple[float, float, bool],
    cfg: DataConfig,
    permutation: np.ndarray,
) -> dict[str, np.ndarray] | None:
    """Decode and warp one sample; None if its JPEG does not decode. Only the part of the
    crop that the warp reads is decoded (see pose/data/jpeg.py)."""
    header = read_header(parts["jpg"])
    whole = decode_rgb(parts["jpg"]) if header is None else None  # cv2 may still read it
    if header is None and whole is None:
        return None
    keypoints = decode_npy(parts["kpts.npy"]).astype(np.float32)
    meta = decode_npy(parts["meta.npy"])
    scale, rotation, flip, half, prefer_upper = augmentation
    out_h, out_w = cfg.image_size
    center = (meta[META["center_x"]], meta[META["center_y"]])
    box = (meta[META["scale_w"]], meta[META["scale_h"]])
    if half:
        half_box = half_body_box(keypoints, out_w / out_h, prefer_upper)
        if half_box is not None:
            center, box = half_box
    width = whole.shape[1] if header is None else header.width
    matrix = augmented_transform(center, box, scale, rotation, flip, width, (out_w, out_h))
    decoded = (
        (whole, matrix)
        if header is None
        else decode_for_warp(parts["jpg"], header, matrix, (out_w, out_h))
    )
    if decoded is None:
        return None
    image, image_to_output = decoded
    warped = cv2.warpAffine(
        image,
        image_to_output,
        (out_w, out_h),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )
    keypoints[:, :2] = affine_points(matrix, keypoints[:, :2])
    if flip:
        keypoints = keypoints[permutation]
    return {
        "image": warped,  # uint8 HWC RGB: normalised on the device, a batch at a time
        "keypoints": keypoints,
        "meta": meta.astype(np.float64),
        "affine": decode_npy(parts["affine.npy"]).astype(np.float64),
        "matrix": matrix,
    }


class _EpochBatches(IterableDataset):
    """Yields the batches of one epoch (for one rank); each worker builds every n-th batch."""

    def __init__(
        self,
        shards,
        indices,
        cfg,
        training,
        batch_size,
        rank,
        world,
        seed,
        epoch,
        start_step,
        steps,
    ):
        self.shards, self.indices, self.cfg, self.training = shards, indices, cfg, training
        self.batch_size, self.start_step, self.steps = batch_size, start_step, steps
        self.seed = epoch_seed(seed, epoch, rank)
        self.permutation = flip_permutation(cfg.num_joints) if training else None
        self.order = self._epoch_order(shards.rank_segments(rank, world))

    def _epoch_order(self, segments) -> np.ndarray:
        """(shard, sample) pairs in this epoch's order."""
        chunks = [
            np.array([(shard, i) for i in range(lo, min(lo + CHUNK, stop))], dtype=np.int64)
            for shard, first, stop in segments
            for lo in range(first, stop, CHUNK)
        ]
        if not chunks:
            return np.zeros((0, 2), np.int64)
        if self.training:
            rng = np.random.default_rng(self.seed)
            chunks = [
                chunks[i][rng.permutation(len(chunks[i]))] for i in rng.permutation(len(chunks))
            ]
        return np.concatenate(chunks)

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        for step in range(self.start_step, self.steps):
            if step % workers == worker:
                yield self._batch(step)

    def _batch(self, step: int) -> dict:
        wanted = self.order[step * self.batch_size : (step + 1) * self.batch_size]
        rng = np.random.default_rng([self.seed, step])
        samples, bad = [], 0
        for (shard, index), (key, parts) in zip(wanted, self._read(wanted)):
            augmentation = draw_augmentation(rng, self.cfg) if self.training else NO_AUGMENTATION
            sample = transform_sample(parts, augmentation, self.cfg, self.permutation)
            if sample is None:
                if self.cfg.bad_sample_policy == "stop":
                    raise ShardError(
                        f"shard '{self.shards.tars[shard]}' sample '{key}' "
                        f"(#{index}): jpg does not decode"
                    )
                bad += 1
                continue
            samples.append(sample)
        if not samples:
            raise ShardError(f"every sample of batch {step} failed to decode")
        batch = {k: torch.from_numpy(np.stack([s[k] for s in samples])) for k in samples[0]}
        batch["bad_samples"] = torch.tensor(bad)
        return batch

    def _read(self, wanted: np.ndarray) -> list[tuple[str, dict[str, bytes]]]:
        """The samples `wanted` (shard, index) pairs name, in that order, as (key, parts);
        each shard file is opened once per batch."""
        found = {}
        for shard in np.unique(wanted[:, 0]):
            index = self.indices[shard]
            with open(self.shards.tars[shard], "rb") as stream:
                for i in wanted[wanted[:, 0] == shard, 1]:
                    try:
                        found[(int(shard), int(i))] = index.read(stream, int(i))
                    except (OSError, ShardError) as e:
                        raise ShardError(f"shard '{self.shards.tars[shard]}': {e}") from e
        return [(self.indices[s].keys[i], found[(int(s), int(i))]) for s, i in wanted]


class TorchLoader:
    """`epoch(e, start_step)` yields device batches; `steps_per_epoch` is fixed by the
    manifest, the same on every rank."""

    def __init__(
        self,
        shards: ShardSet,
        cfg: DataConfig,
        training: bool,
        batch_size: int,
        rank: int,
        world: int,
        device: torch.device,
        seed: int,
        bf16: bool,
    ):
        self.shards, self.cfg, self.training = shards, cfg, training
        self.batch_size, self.rank, self.world = batch_size, rank, world
        self.device, self.seed, self.bf16 = device, seed, bf16
        self.steps_per_epoch = steps_per_epoch(shards.num_samples, world, batch_size, training)
        self.indices = [ShardIndex(p) for p in shards.indices]  # parsed once, not every epoch
        self.bad_samples = 0
        if training and self.steps_per_epoch == 0:
            raise ShardError(
                f"{shards.num_samples} samples are fewer than one batch of "
                f"{batch_size} on each of {world} ranks"
            )

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[dict]:
        steps = self.steps_per_epoch
        if not self.training:  # this rank's own part, to its last (partial) batch
            steps = self.shards.rank_steps(self.rank, self.world, self.batch_size)
        dataset = _EpochBatches(
            self.shards,
            self.indices,
            self.cfg,
            self.training,
            self.batch_size,
            self.rank,
            self.world,
            self.seed,
            epoch,
            start_step,
            steps,
        )
        workers = min(self.cfg.num_workers, max(steps - start_step, 0))
        loader = DataLoader(
            dataset,
            batch_size=None,
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
        )
        for batch in loader:
            self.bad_samples += int(batch.pop("bad_samples"))
            yield finish_batch(batch, self.device, self.bf16)
