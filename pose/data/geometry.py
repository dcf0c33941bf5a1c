"""Affine geometry in the cv2 pixel convention (pixel centres at integer coordinates), as the
reference Simple Baselines code uses it: crop transforms, their inverse, the window each shard
sample stores, half-body boxes, and the conversion for DALI's pixel-corner convention."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import cv2
import numpy as np

from pose.data.coco import box_to_center_scale

if TYPE_CHECKING:
    import torch


def get_affine_transform(
    center: Sequence[float],
    scale: Sequence[float],
    rotation: float,
    output_size: Sequence[int],
    inverse: bool = False,
) -> np.ndarray:
    """2x3 matrix taking image pixels to output pixels: `center` goes to the output centre, a
    length of `scale[0]` image pixels to `output_size[0]` (width) output pixels, and the image is
    turned by `rotation` degrees (counter-clockwise on screen for positive values).

    This is the closed form of the reference's three-point `get_affine_transform`; `scale` is in
    pixels (the reference's scale x 200)."""
    cx, cy = float(center[0]), float(center[1])
    ratio = float(output_size[0]) / float(scale[0])
    theta = math.radians(rotation)
    cos, sin = math.cos(theta) * ratio, math.sin(theta) * ratio
    # output = ratio * R(-theta) (p - center) + output_centre
    ox, oy = output_size[0] * 0.5, output_size[1] * 0.5
    matrix = np.array(
        [[cos, sin, ox - cos * cx - sin * cy], [-sin, cos, oy + sin * cx - cos * cy]],
        dtype=np.float64,
    )
    return invert_affine(matrix) if inverse else matrix


def invert_affine(matrix: np.ndarray) -> np.ndarray:
    """Inverse of a 2x3 affine matrix."""
    a = np.asarray(matrix, dtype=np.float64)
    linear = np.linalg.inv(a[:, :2])
    return np.concatenate([linear, -linear @ a[:, 2:]], axis=1)


def compose_affine(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """The 2x3 matrix of `outer` applied after `inner`."""
    o, i = np.asarray(outer, np.float64), np.asarray(inner, np.float64)
    return np.concatenate([o[:, :2] @ i[:, :2], o[:, :2] @ i[:, 2:] + o[:, 2:]], axis=1)


def invert_affine_batch(m: torch.Tensor) -> torch.Tensor:
    """Inverse of a batch of 2x3 affine matrices."""
    import torch  # here, not at the top: sharding workers import this module without torch

    linear = torch.linalg.inv(m[..., :2])
    return torch.cat([linear, -linear @ m[..., 2:]], dim=-1)


def compose_affine_batch(outer: torch.Tensor, inner: torch.Tensor) -> torch.Tensor:
    """Batch of 2x3 matrices: `outer` after `inner`."""
    import torch

    linear = outer[..., :2] @ inner[..., :2]
    return torch.cat([linear, outer[..., :2] @ inner[..., 2:] + outer[..., 2:]], dim=-1)


def affine_points(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 2x3 matrix to points (..., 2)."""
    m = np.asarray(matrix, dtype=np.float64)
    p = np.asarray(points, dtype=np.float64)
    return p @ m[:, :2].T + m[:, 2]


def to_dali_matrix(matrix: np.ndarray) -> np.ndarray:
    """A cv2-convention matrix for DALI, whose pixel (0, 0) spans [0, 1): T(+0.5) M T(-0.5)."""
    m = np.asarray(matrix, dtype=np.float64).copy()
    m[:, 2] += 0.5 - 0.5 * m[:, :2].sum(axis=1)
    return m


def augmentation_context(
    aspect_ratio: float, max_scale: float, max_rotation: float
) -> tuple[float, float]:
    """Factors (x, y) by which a window must exceed the padded box (of width/height
    `aspect_ratio`) to hold that box scaled by `max_scale` and turned by up to `max_rotation`
    degrees: the extent of the scaled, rotated rectangle."""
    t = math.radians(min(abs(max_rotation), 90.0))
    fx = max_scale * (math.cos(t) + math.sin(t) / aspect_ratio)
    fy = max_scale * (aspect_ratio * math.sin(t) + math.cos(t))
    return max(fx, 1.0), max(fy, 1.0)


def crop_window(
    center: Sequence[float],
    scale: Sequence[float],
    context: tuple[float, float],
    detail_height: float,
) -> tuple[tuple[int, int, int, int], tuple[int, int]]:
    """Integer window (x0, y0, x1, y1) in image pixels around `center`, `context` times the
    padded box `scale`, and the size (w, h) to store it at: `detail_height` pixels for the box
    height, never more pixels than the source has."""
    w, h = scale[0] * context[0], scale[1] * context[1]
    x0, y0 = math.floor(center[0] - w / 2), math.floor(center[1] - h / 2)
    x1, y1 = math.ceil(center[0] + w / 2), math.ceil(center[1] + h / 2)
    ratio = min(1.0, detail_height / float(scale[1]))
    size = (max(1, round((x1 - x0) * ratio)), max(1, round((y1 - y0) * ratio)))
    return (x0, y0, x1, y1), size


def window_to_image_affine(window: tuple[int, int, int, int], size: tuple[int, int]) -> np.ndarray:
    """2x3 matrix taking crop pixels back to image pixels, for a window resized to `size` with
    cv2's pixel-centre convention (crop u <-> image x0 + (u + 0.5) / r - 0.5)."""
    x0, y0, x1, y1 = window
    rx, ry = size[0] / (x1 - x0), size[1] / (y1 - y0)
    return np.array(
        [[1 / rx, 0.0, x0 + 0.5 / rx - 0.5], [0.0, 1 / ry, y0 + 0.5 / ry - 0.5]], dtype=np.float64
    )


def augmented_transform(
    center: Sequence[float],
    scale: Sequence[float],
    scale_factor: float,
    rotation: float,
    flip: bool,
    crop_width: int,
    output_size: Sequence[int],
) -> np.ndarray:
    """The reference's training transform of a crop, as one 2x3 matrix (cv2 convention): flip
    the crop first (x' = width - 1 - x, and so the centre), then crop the box `scale` x
    `scale_factor` around the centre, turned by `rotation` degrees, to `output_size` (w, h)."""
    cx = crop_width - 1 - center[0] if flip else center[0]
    matrix = get_affine_transform(
        (cx, center[1]), (scale[0] * scale_factor, scale[1] * scale_factor), rotation, output_size
    )
    if flip:
        matrix = compose_affine(matrix, np.array([[-1.0, 0.0, crop_width - 1.0], [0.0, 1.0, 0.0]]))
    return matrix


HALF_BODY_MIN_JOINTS = 8  # half-body needs more labelled joints than this


def half_body_box(
    keypoints: np.ndarray, aspect_ratio: float, prefer_upper: bool, upper_body: np.ndarray
) -> tuple[np.ndarray, np.ndarray] | None:
    """HRNet's half-body augmentation: the box (center, scale in pixels) of the labelled upper
    (or lower) body joints (`upper_body`: a mask over the joints), widened to `aspect_ratio` and
    x1.5; None when it does not apply."""
    labelled = keypoints[:, 2] > 0
    if labelled.sum() <= HALF_BODY_MIN_JOINTS:
        return None
    is_upper = np.asarray(upper_body, bool)
    upper, lower = keypoints[labelled & is_upper, :2], keypoints[labelled & ~is_upper, :2]
    chosen = upper if (prefer_upper and len(upper) > 2) or len(lower) <= 2 else lower
    if len(chosen) < 2:
        return None
    center = chosen.mean(axis=0)
    w, h = chosen.max(axis=0) - chosen.min(axis=0)
    w, h = max(w, aspect_ratio * h), max(h, w / aspect_ratio)
    return center, np.array([w, h]) * 1.5


def crop_boxes(
    image_bgr: np.ndarray, boxes: Sequence, image_size: tuple[int, int]
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The model input of each box (x, y, w, h, ...), as the pipelines crop it, and the
    input -> image affine of each."""
    in_h, in_w = image_size
    crops, inverses = [], []
    for box in boxes:
        center, scale = box_to_center_scale(tuple(box[:4]), in_w / in_h)
        matrix = get_affine_transform(center, scale, 0.0, (in_w, in_h))
        crops.append(cv2.warpAffine(image_bgr, matrix, (in_w, in_h), flags=cv2.INTER_LINEAR))
        inverses.append(get_affine_transform(center, scale, 0.0, (in_w, in_h), inverse=True))
    return crops, inverses
