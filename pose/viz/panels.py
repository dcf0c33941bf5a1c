"""Debug pictures of val people, as the field's tools draw them: for each person a row of ground
truth, prediction, the predicted heatmaps summed over joints and, for the attention variants, the
attention maps; optionally a grid of every joint's heatmap under it. Crops are enlarged so that a
skeleton can be read. Training writes one per evaluation, launch/eval.py one per run."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from pose.config import DataConfig
from pose.data.codec import HeatmapCodec
from pose.data.layout import KeypointLayout
from pose.viz.skeleton import caption, draw_skeleton, overlay_heatmap, tile, to_bgr


def person_cells(
    crop: np.ndarray,
    prediction: np.ndarray,
    heatmaps: np.ndarray,
    attention: dict[str, np.ndarray],
    layout: KeypointLayout,
    ground_truth: np.ndarray | None = None,
    scale: int = 2,
    min_score: float = 0.2,
) -> list[np.ndarray]:
    """Pictures of one person, each `scale` times the crop: ground truth (when given, keypoints
    (K, 3) in crop pixels with visibility), prediction (K, 3 with scores), summed heatmaps
    (K, h, w) and the attention: holistic's multi-resolution sum and part-wise's strongest joint
    map at each pixel."""
    big = cv2.resize(crop, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)

    def points(kpts: np.ndarray) -> np.ndarray:
        out = np.array(kpts, np.float64, copy=True)
        out[:, :2] *= scale
        return out

    cells = []
    if ground_truth is not None:
        drawn = draw_skeleton(big, points(ground_truth), 0.0, thickness=2, layout=layout)
        cells.append(caption(drawn, "ground truth"))
    drawn = draw_skeleton(big, points(prediction), min_score, thickness=2, layout=layout)
    cells.append(caption(drawn, "prediction"))
    summed = np.clip(heatmaps, 0, None).sum(0)
    cells.append(caption(overlay_heatmap(big, summed / max(summed.max(), 1e-6)), "heatmaps"))
    stages = [k for k in attention if k.startswith("stage")]
    if "holistic" in attention:
        total = attention["holistic"][0] / max(len(stages), 1)
        cells.append(caption(overlay_heatmap(big, total), "holistic attention"))
    if "parts" in attention:
        cells.append(caption(overlay_heatmap(big, attention["parts"].max(0)), "part attention"))
    return cells


def joint_grid(
    crop: np.ndarray, heatmaps: np.ndarray, layout: KeypointLayout, columns: int
) -> np.ndarray:
    """Every joint's heatmap over the crop, named, `columns` to a row."""
    panels = [
        caption(overlay_heatmap(crop, np.clip(h, 0, None) / max(float(h.max()), 1e-6)), name)
        for h, name in zip(heatmaps, layout.joints)
    ]
    return tile(panels, columns=columns)


def prediction_panel(
    model: torch.nn.Module,
    batch: dict,
    path: Path,
    layout: KeypointLayout,
    data: DataConfig,
    count: int = 6,
    min_score: float = 0.2,
    joints: bool = False,
) -> Path:
    """Write a PNG of `count` val people of `batch`: a row of person_cells each, and with
    `joints` every joint's heatmap under it."""
    model.eval()
    with torch.no_grad():
        heatmaps, maps = model(batch["image"][:count], return_attention=True)
    heatmaps = heatmaps.float()
    coords, scores = HeatmapCodec.of(data, heatmaps.shape[-2:]).decode(heatmaps)
    truth = batch.get("keypoints")
    rows = []
    for i in range(heatmaps.shape[0]):
        crop = to_bgr(batch["image"][i])
        kpts = np.concatenate([coords[i].cpu().numpy(), scores[i, :, None].cpu().numpy()], 1)
        person_maps = {k: v[i].float().cpu().numpy() for k, v in maps.items()}
        gt = None if truth is None else truth[i].float().cpu().numpy()
        cells = person_cells(
            crop, kpts, heatmaps[i].cpu().numpy(), person_maps, layout, gt, min_score=min_score
        )
        rows.append(np.concatenate(cells, axis=1))
        if joints:
            columns = max(1, rows[-1].shape[1] // crop.shape[1])
            rows.append(joint_grid(crop, heatmaps[i].cpu().numpy(), layout, columns))
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), stack_rows(rows))
    return path


def stack_rows(rows: list[np.ndarray], gap: int = 4) -> np.ndarray:
    """Images one under another, left-aligned, padded black to the widest, `gap` px apart."""
    width = max(r.shape[1] for r in rows)
    padded = [
        cv2.copyMakeBorder(r, 0, gap, 0, width - r.shape[1], cv2.BORDER_CONSTANT) for r in rows
    ]
    return np.concatenate(padded, axis=0)
