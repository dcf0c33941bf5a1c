"""The DALI backend: one pipeline definition for GPU and CPU. The device is a parameter: JPEG
decoding runs `mixed` (nvJPEG) on a GPU and `cpu` otherwise; without a GPU the pipeline runs in
DALI's CPU-only mode (`device_id=None`).

The augmentation matrix of every sample is built in the graph with DALI arithmetic, exactly as
`pose.data.geometry.augmented_transform` builds it in numpy (the cv2 convention), applied to the
keypoints with `fn.coord_transform` and, converted to DALI's pixel-corner convention, to the image
with `fn.warp_affine`. A flip swaps left and right joints: the rows gathered in swapped order,
blended with the unswapped ones by the flip flag.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

from pose.config import DataConfig
from pose.data.geometry import HALF_BODY_MIN_JOINTS
from pose.data.layout import KeypointLayout
from pose.data.loader import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Loader,
    LoaderSpec,
    epoch_seed,
    finish_batch,
)
from pose.data.shards import META, ShardError, ShardSet, check_shards

READER = "shards"
EXTENSIONS = ["jpg", "kpts.npy", "meta.npy", "affine.npy"]


def augmentation_nodes(cfg: DataConfig):
    """Per-sample scale factor, rotation (degrees, with probability), flip flag, half-body flag
    and upper-body preference (flags 0/1), as the reference draws them, from DALI's random
    operators."""
    from nvidia.dali import fn, types
    from nvidia.dali import math as dmath

    sf, rf = cfg.scale_factor, cfg.rotation_factor
    scale = dmath.clamp(fn.random.normal() * sf + 1.0, 1.0 - sf, 1.0 + sf)
    rotation = dmath.clamp(fn.random.normal() * rf, -2.0 * rf, 2.0 * rf)
    rotate = fn.cast(fn.random.coin_flip(probability=cfg.rotation_prob), dtype=types.FLOAT)
    rotation = rotation * rotate
    flip = fn.cast(fn.random.coin_flip(probability=cfg.flip_prob), dtype=types.FLOAT)
    half = fn.cast(fn.random.coin_flip(probability=cfg.half_body_prob), dtype=types.FLOAT)
    prefer_upper = fn.cast(fn.random.normal() < 0.5, dtype=types.FLOAT)
    return scale, rotation, flip, half, prefer_upper


def half_body_nodes(kpts, meta, half, prefer_upper, aspect_ratio: float, layout: KeypointLayout):
    """`pose.data.geometry.half_body_box` in the graph: masked reductions over the joints.
    Returns the (cx, cy, w, h) to crop: the half-body box where it applies, else the box."""
    from nvidia.dali import fn, types
    from nvidia.dali import math as dmath

    upper = types.Constant(layout.upper_body_mask.astype(np.float32)[:, None])
    labelled = fn.cast(kpts[:, 2:3] > 0.0, dtype=types.FLOAT)  # (K, 1)
    n_upper = fn.reductions.sum(labelled * upper)
    n_lower = fn.reductions.sum(labelled * (1.0 - upper))
    use_upper = fn.cast(
        ((prefer_upper > 0.5) & (n_upper > 2.0)) | (n_lower <= 2.0), dtype=types.FLOAT
    )
    chosen = labelled * (upper * use_upper + (1.0 - upper) * (1.0 - use_upper))
    count = fn.reductions.sum(chosen)
    xy = kpts[:, 0:2]
    big = 1e9
    low = fn.reductions.min(xy * chosen + big * (1.0 - chosen), axes=[0])
    high = fn.reductions.max(xy * chosen - big * (1.0 - chosen), axes=[0])
    mean = fn.reductions.sum(xy * chosen, axes=[0]) / dmath.max(count, 1.0)
    w, h = high[0] - low[0], high[1] - low[1]
    w, h = dmath.max(w, aspect_ratio * h), dmath.max(h, w / aspect_ratio)
    applies = fn.cast(
        (half > 0.5) & (fn.reductions.sum(labelled) > float(HALF_BODY_MIN_JOINTS)) & (count >= 2.0),
        dtype=types.FLOAT,
    )
    keep = 1.0 - applies
    return (
        meta[META["center_x"]] * keep + mean[0] * applies,
        meta[META["center_y"]] * keep + mean[1] * applies,
        meta[META["scale_w"]] * keep + 1.5 * w * applies,
        meta[META["scale_h"]] * keep + 1.5 * h * applies,
    )


def transform_nodes(box, crop_width, scale, rotation, flip, cfg: DataConfig):
    """The 2x3 cv2-convention matrix of each sample: flip, then the rotated, scaled crop of
    `box` = (cx, cy, w, h)."""
    from nvidia.dali import fn
    from nvidia.dali import math as dmath

    out_h, out_w = cfg.image_size
    box_cx, cy, box_w, _ = box
    cx = box_cx * (1.0 - flip) + (crop_width - 1.0 - box_cx) * flip
    ratio = out_w / (box_w * scale)
    theta = rotation * (math.pi / 180.0)
    a, b = dmath.cos(theta) * ratio, dmath.sin(theta) * ratio
    m02 = out_w * 0.5 - a * cx - b * cy
    m12 = out_h * 0.5 + b * cx - a * cy
    sx = 1.0 - 2.0 * flip  # the flip F = [[sx, 0, tx], [0, 1, 0]] composed on the right
    tx = flip * (crop_width - 1.0)
    elements = [a * sx, b, a * tx + m02, -b * sx, a, -b * tx + m12]
    return fn.reshape(fn.stack(*elements), shape=[2, 3])


def to_dali_convention(matrix):
    """T(+0.5) M T(-0.5), in the graph (see pose.data.geometry.to_dali_matrix)."""
    from nvidia.dali import fn

    rows = []
    for r in range(2):
        m0, m1, m2 = matrix[r, 0], matrix[r, 1], matrix[r, 2]
        rows += [m0, m1, m2 + 0.5 - 0.5 * (m0 + m1)]
    return fn.reshape(fn.stack(*rows), shape=[2, 3])


def sample_nodes(shards: ShardSet, spec: LoaderSpec, gpu: bool):
    """The reader over the rank's part of the shards and the decoded sample: (image, crop
    width, keypoints, meta, affine)."""
    from nvidia.dali import fn, types

    jpg, kpts, meta, affine = fn.readers.webdataset(
        paths=[str(p) for p in shards.tars],
        index_paths=[str(p) for p in shards.indices],
        ext=EXTENSIONS,
        shard_id=spec.rank,
        num_shards=spec.world,
        random_shuffle=spec.training,
        initial_fill=1024,
        pad_last_batch=not spec.training,
        missing_component_behavior="error",
        name=READER,
    )
    crop_width = fn.cast(fn.slice(fn.peek_image_shape(jpg), 1, 1, axes=[0]), dtype=types.FLOAT)[0]
    image = fn.decoders.image(jpg, device="mixed" if gpu else "cpu", output_type=types.RGB)
    decoded = (fn.decoders.numpy(part) for part in (kpts, meta, affine))
    return image, crop_width, *decoded


def pose_pipeline(shards: ShardSet, spec: LoaderSpec, gpu: bool, augmentation=None):
    """The graph. `augmentation` replaces the random draws (tests pass external sources)."""
    from nvidia.dali import fn, types

    cfg, training = spec.data, spec.training
    image, crop_width, kpts, meta, affine = sample_nodes(shards, spec, gpu)
    geometry = fn.cast(meta, dtype=types.FLOAT)
    out_h, out_w = cfg.image_size
    box = tuple(geometry[META[k]] for k in ("center_x", "center_y", "scale_w", "scale_h"))
    if training:
        scale, rotation, flip, half, upper = augmentation or augmentation_nodes(cfg)
        if cfg.half_body_prob > 0:
            box = half_body_nodes(kpts, geometry, half, upper, out_w / out_h, shards.layout)
    else:
        scale, rotation, flip = (
            fn.constant(fdata=v, shape=[], dtype=types.FLOAT) for v in (1.0, 0.0, 0.0)
        )
    matrix = transform_nodes(box, crop_width, scale, rotation, flip, cfg)
    warped = fn.warp_affine(
        image,
        matrix=to_dali_convention(matrix),
        size=[out_h, out_w],
        inverse_map=False,
        fill_value=0,
        interp_type=types.INTERP_LINEAR,
    )
    xy = fn.coord_transform(kpts[:, 0:2], MT=matrix)
    keypoints = fn.cat(xy, kpts[:, 2:3], axis=1)
    if training:
        rows = [keypoints[int(j) : int(j) + 1] for j in shards.layout.flip_permutation]
        keypoints = fn.cat(*rows, axis=0) * flip + keypoints * (1.0 - flip)
    image = fn.crop_mirror_normalize(
        warped,
        dtype=types.FLOAT,
        output_layout="CHW",
        mean=[255.0 * m for m in IMAGENET_MEAN],
        std=[255.0 * s for s in IMAGENET_STD],
    )
    return image, keypoints, meta, affine, matrix


OUTPUTS = ["image", "keypoints", "meta", "affine", "matrix"]


def build_pipeline(shards: ShardSet, spec: LoaderSpec, seed: int, augmentation_source=None):
    """A built DALI pipeline; `augmentation_source` (tests) is a callable giving, per batch,
    five float32 arrays (scale, rotation, flip, half body, prefer upper) that replace the
    random draws."""
    from nvidia.dali import fn, pipeline_def

    gpu = spec.device.type == "cuda"

    @pipeline_def(
        batch_size=spec.batch_size,
        num_threads=max(1, spec.data.num_workers),
        device_id=(spec.device.index or 0) if gpu else None,
        seed=seed,
        prefetch_queue_depth=2,
        exec_dynamic=True,
    )
    def graph():
        augmentation = None
        if augmentation_source is not None:
            augmentation = fn.external_source(source=augmentation_source, num_outputs=5, batch=True)
        return pose_pipeline(shards, spec, gpu, augmentation)

    pipe = graph()
    pipe.build()
    return pipe


class DaliLoader(Loader):
    """A new pipeline is built for each epoch with a seed of (seed, epoch, rank), so an epoch's
    order and augmentation can be reproduced; a resumed epoch runs and drops its first
    `start_batch` batches. DALI cannot skip a sample inside a pipeline: a bad sample stops
    the run, named."""

    def __init__(self, spec: LoaderSpec, augmentation_source=None):
        super().__init__(spec)
        self.augmentation_source = augmentation_source

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[dict]:
        from nvidia.dali.plugin.base_iterator import LastBatchPolicy
        from nvidia.dali.plugin.pytorch import DALIGenericIterator

        spec = self.spec
        seed = epoch_seed(spec.seed, epoch, spec.rank)
        try:
            pipe = build_pipeline(self.shards, spec, seed, self.augmentation_source)
            policy = LastBatchPolicy.DROP if spec.training else LastBatchPolicy.PARTIAL
            iterator = DALIGenericIterator(
                pipe, OUTPUTS, reader_name=READER, last_batch_policy=policy, auto_reset=False
            )
            for batch, outputs in enumerate(iterator):
                if batch >= self.batches_per_epoch:
                    break  # ranks whose part is one sample longer stop with the others
                if batch >= start_batch:
                    self.samples_read += outputs[0]["image"].shape[0]
                    yield finish_batch(outputs[0], spec.device)
        except RuntimeError as e:
            if "pipeline" not in str(e):  # not one of DALI's operator errors
                raise
            raise self._named_error(e) from e

    def _named_error(self, error: RuntimeError) -> ShardError:
        """DALI's message does not say which sample failed: find it (only on this path)."""
        problems = check_shards(self.shards.folder, progress=False)
        found = "; ".join(problems[:5]) or "no damaged sample found by data_prep.verify"
        return ShardError(
            f"DALI could not read the shards in '{self.shards.folder}': {found} "
            f"(DALI said: {str(error).splitlines()[-3:]})"
        )
