"""The picture a training run logs every few epochs: predicted skeletons on val crops, and the
attention maps of the attention variants, from one forward pass."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from pose.data.codec import decode_heatmaps
from pose.viz.attention import attention_panels
from pose.viz.skeleton import draw_skeleton, tile, to_bgr


def prediction_panel(model: torch.nn.Module, batch: dict, path: Path, count: int = 4,
                     min_score: float = 0.2) -> Path:  # fmt: skip
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
        row = [draw_skeleton(crop, kpts, min_score=min_score, thickness=1)]
        attention = attention_panels(crop, {k: v[i].float().cpu().numpy() for k, v in maps.items()})
        if attention is not None:
            row.append(attention)
        rows.append(np.concatenate(row, axis=1) if len(row) > 1 else row[0])
    width = max(r.shape[1] for r in rows)
    rows = [cv2.copyMakeBorder(r, 0, 0, 0, width - r.shape[1], cv2.BORDER_CONSTANT) for r in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), tile(rows, columns=1))
    return path
