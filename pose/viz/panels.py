"""The picture a training run logs every few epochs: predicted skeletons on val crops, and the
attention maps of the attention variants, from one forward pass."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from pose.data.codec import decode_heatmaps
from pose.data.layout import KeypointLayout
from pose.viz.attention import attention_panels
from pose.viz.skeleton import draw_skeleton, tile, to_bgr


def prediction_panel(
    model: torch.nn.Module,
    batch: dict,
    path: Path,
    layout: KeypointLayout,
    count: int = 4,
    min_score: float = 0.2,
) -> Path:
    """Write a PNG of `count` val crops with predicted skeletons (and attention maps)."""
    model.eval()
    with torch.no_grad():
        heatmaps, maps = model(batch["image"][:count], return_attention=True)
    coords, scores = decode_heatmaps(heatmaps.float())
    stride = batch["image"].shape[-1] / heatmaps.shape[-1]
    rows = []
    for i in range(min(count, heatmaps.shape[0])):
        crop = to_bgr(batch["image"][i])
        kpts = np.concatenate(
            [coords[i].cpu().numpy() * stride, scores[i, :, None].cpu().numpy()], 1
        )
        row = [draw_skeleton(crop, kpts, min_score=min_score, thickness=1, layout=layout)]
        person_maps = {k: v[i].float().cpu().numpy() for k, v in maps.items()}
        attention = attention_panels(crop, person_maps, layout)
        if attention is not None:  # a part-wise grid is taller than the crop
            row.append(attention)
        rows.append(np.concatenate(_pad_to(row, axis=0), axis=1))
    rows = _pad_to(rows, axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), tile(rows, columns=1))
    return path


def _pad_to(images: list[np.ndarray], axis: int) -> list[np.ndarray]:
    """Pad images with black at the bottom (axis 0) or right (axis 1) to the largest size."""
    size = max(im.shape[axis] for im in images)
    pads = [
        (0, size - im.shape[0], 0, 0) if axis == 0 else (0, 0, 0, size - im.shape[1])
        for im in images
    ]
    return [cv2.copyMakeBorder(im, *pad, cv2.BORDER_CONSTANT) for im, pad in zip(images, pads)]
