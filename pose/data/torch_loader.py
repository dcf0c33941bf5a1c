"""The PyTorch backend: torch DataLoader workers over the WebDataset shards, cv2 for decoding and
warping. Same sample semantics as the DALI pipeline; the baseline the benchmark compares with.

Each epoch the rank's samples (the same contiguous range DALI's reader gives it) are cut into
small chunks of consecutive samples; the chunk order and the order inside each chunk are shuffled
with a seed of (seed, epoch, rank). Batch b takes the next `batch_size` samples of that order and
its augmentation from a generator seeded with (epoch seed, b), so a batch does not depend on the
worker that builds it, and an epoch can start at any batch without reading what it skips. Samples
are read at the offsets the DALI index gives, as DALI reads them (one read per sample).
"""

from __future__ import annotations

import signal
from collections.abc import Iterator

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from pose.config import DataConfig
from pose.data.geometry import affine_points, augmented_transform, half_body_box
from pose.data.jpeg import decode_for_warp, decode_rgb, read_header
from pose.data.layout import KeypointLayout
from pose.data.loader import (
    NO_AUGMENTATION,
    Augmentation,
    Loader,
    LoaderSpec,
    draw_augmentation,
    epoch_seed,
    finish_batch,
)
from pose.data.shards import META, ShardError, ShardIndex, decode_npy

CHUNK = 8  # consecutive samples read together


def transform_sample(
    parts: dict[str, bytes], augmentation: Augmentation, cfg: DataConfig, layout: KeypointLayout
) -> dict[str, np.ndarray] | None:
    """Decode and warp one sample; None if its JPEG does not decode. Only the part of the
    crop that the warp reads is decoded (see pose/data/jpeg.py)."""
    header = read_header(parts["jpg"])
    whole = decode_rgb(parts["jpg"]) if header is None else None  # cv2 may still read it
    if header is None and whole is None:
        return None
    keypoints = decode_npy(parts["kpts.npy"]).astype(np.float32)
    meta = decode_npy(parts["meta.npy"])
    out_h, out_w = cfg.image_size
    width = whole.shape[1] if header is None else header.width
    center, box = _crop_box(keypoints, meta, augmentation, out_w / out_h, layout)
    matrix = augmented_transform(
        center,
        box,
        augmentation.scale,
        augmentation.rotation,
        augmentation.flip,
        width,
        (out_w, out_h),
    )
    if header is None:
        image, image_to_output = whole, matrix
    else:
        decoded = decode_for_warp(parts["jpg"], header, matrix, (out_w, out_h))
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
    if augmentation.flip:
        keypoints = keypoints[layout.flip_permutation]
    return {
        "image": warped,  # uint8 HWC RGB: normalised on the device, a batch at a time
        "keypoints": keypoints,
        "meta": meta.astype(np.float64),
        "affine": decode_npy(parts["affine.npy"]).astype(np.float64),
        "matrix": matrix,
    }


def _crop_box(keypoints, meta, augmentation: Augmentation, aspect_ratio: float, layout):
    """(center, box size) to crop: the stored padded box, or the half-body box where it
    applies."""
    center = (meta[META["center_x"]], meta[META["center_y"]])
    box = (meta[META["scale_w"]], meta[META["scale_h"]])
    if augmentation.half_body:
        half = half_body_box(
            keypoints, aspect_ratio, augmentation.prefer_upper, layout.upper_body_mask
        )
        if half is not None:
            return half
    return center, box


class _EpochBatches(IterableDataset):
    """Yields the batches `start`..`stop` of one epoch (for one rank); with n workers, worker
    w builds batches start + w, start + w + n, ..., which DataLoader returns in turn, so the
    batches arrive in order whatever the worker count and the start."""

    def __init__(self, loader: TorchLoader, epoch: int, start: int, stop: int):
        self.spec, self.shards, self.indices = loader.spec, loader.shards, loader.indices
        self.layout = loader.layout
        self.start, self.stop = start, stop
        self.seed = epoch_seed(self.spec.seed, epoch, self.spec.rank)
        self.order = self._epoch_order(self.shards.rank_segments(self.spec.rank, self.spec.world))

    def _epoch_order(self, segments) -> np.ndarray:
        """(shard, sample) pairs in this epoch's order."""
        chunks = [
            np.array([(shard, i) for i in range(lo, min(lo + CHUNK, stop))], dtype=np.int64)
            for shard, first, stop in segments
            for lo in range(first, stop, CHUNK)
        ]
        if not chunks:
            return np.zeros((0, 2), np.int64)
        if self.spec.training:
            rng = np.random.default_rng(self.seed)
            chunks = [
                chunks[i][rng.permutation(len(chunks[i]))] for i in rng.permutation(len(chunks))
            ]
        return np.concatenate(chunks)

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        for batch in range(self.start + worker, self.stop, workers):
            try:
                yield self._batch(batch)
            except ShardError as e:  # its message, not a worker's traceback around it
                yield {"error": str(e)}
                return

    def _batch(self, batch: int) -> dict:
        spec = self.spec
        wanted = self.order[batch * spec.batch_size : (batch + 1) * spec.batch_size]
        rng = np.random.default_rng([self.seed, batch])
        samples, bad = [], []
        for (shard, index), (key, parts) in zip(wanted, self._read(wanted)):
            augmentation = draw_augmentation(rng, spec.data) if spec.training else NO_AUGMENTATION
            sample = transform_sample(parts, augmentation, spec.data, self.layout)
            if sample is None:
                if spec.data.bad_sample_policy == "stop":
                    raise ShardError(
                        f"shard '{self.shards.tars[shard]}' sample '{key}' (#{index}): "
                        "jpg does not decode"
                    )
                bad.append(f"{self.shards.tars[shard].name} {key}")
                continue
            samples.append(sample)
        if not samples:
            raise ShardError(f"no sample of batch {batch} decodes: {', '.join(bad)}")
        out = {k: torch.from_numpy(np.stack([s[k] for s in samples])) for k in samples[0]}
        out["bad_samples"] = bad
        return out

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


def _leave_interrupts_to_the_main_process(worker: int) -> None:
    """A Ctrl-C in the terminal reaches the workers too. Workers that ended on it would fail
    the batches the main process still needs before it stops: with several ranks the stop is
    agreed at the next log step (pose.engine.stop)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class TorchLoader(Loader):
    def __init__(self, spec: LoaderSpec):
        super().__init__(spec)
        self.indices = [ShardIndex(p) for p in self.shards.indices]  # parsed once

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[dict]:
        dataset = _EpochBatches(self, epoch, start_batch, self.batches_per_epoch)
        workers = min(self.spec.data.num_workers, max(self.batches_per_epoch - start_batch, 0))
        loader = DataLoader(
            dataset,
            batch_size=None,
            num_workers=workers,
            pin_memory=self.spec.device.type == "cuda",
            persistent_workers=False,
            worker_init_fn=_leave_interrupts_to_the_main_process,
            # the iterator draws its workers' base seed from this, not from torch's global RNG,
            # which the model's own randomness (drop path) uses: a run resumed mid-epoch makes
            # an iterator the uninterrupted run did not, and must draw the same masks after it
            generator=torch.Generator().manual_seed(dataset.seed),
        )
        for batch in loader:
            if "error" in batch:
                raise ShardError(batch["error"])
            bad = batch.pop("bad_samples")
            self.bad_samples += len(bad)
            self.bad_sample_names += bad
            self.samples_read += batch["image"].shape[0] + len(bad)
            yield finish_batch(batch, self.spec.device)
