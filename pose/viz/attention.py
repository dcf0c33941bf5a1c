"""Attention pictures as the seed project shows them: maps overlaid on the person's crop.
Holistic: one panel per deconvolution stage and the multi-resolution sum; part-wise: a grid of
the per-joint maps."""

from __future__ import annotations

import numpy as np

from pose.data.layout import KeypointLayout
from pose.viz.skeleton import caption, overlay_heatmap, tile


def attention_panels(
    crop: np.ndarray, maps: dict[str, np.ndarray], layout: KeypointLayout
) -> np.ndarray | None:
    """One picture of a person's attention maps over its crop (None without attention)."""
    panels = []
    stages = sorted(k for k in maps if k.startswith("stage"))
    for name in stages:
        panels.append(caption(overlay_heatmap(crop, maps[name][0]), name))
    if "holistic" in maps:
        total = maps["holistic"][0]
        panels.append(caption(overlay_heatmap(crop, total / max(len(stages), 1)), "sum"))
    if "parts" in maps:
        for j, part in enumerate(maps["parts"]):
            name = layout.joints[j] if j < layout.num_joints else str(j)
            panels.append(caption(overlay_heatmap(crop, part), name))
    if not panels:
        return None
    return tile(panels, columns=min(len(panels), 7 if "parts" in maps else 4))
