"""The picture that shows what attention does: the same val people, one row each, and for every
variant of a sweep its prediction and its maps side by side (pose/viz/panels.py's cells), from
each variant's first run folder (lowest seed) and the val shards of its config."""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import torch

from pose.config import ConfigError
from pose.data.backends import build_loader
from pose.data.codec import HeatmapCodec
from pose.data.loader import LoaderSpec
from pose.data.shards import ShardError
from pose.folders import TrainedModelError
from pose.models.trained import TrainedModel, load_trained_model
from pose.models.weights import WeightsError
from pose.sweep.compare import RunRecord, Variant
from pose.viz.panels import person_cells, stack_rows
from pose.viz.skeleton import caption, to_bgr


def attention_comparison(variants: list[Variant], path: Path, people: int) -> list[Path]:
    """Write the picture; [] (with the reason on stderr) when a run has no checkpoint yet or
    its val shards are not here."""
    try:
        runs = [_first_run(v) for v in variants]
        trained = [load_trained_model(run.folder) for run in runs]
        loader = build_loader(LoaderSpec(trained[0].cfg.data, "val", people))
        batches = loader.epoch(0)
        batch = next(batches)
        batches.close()
        columns = [_variant_cells(v.label, model, batch) for v, model in zip(variants, trained)]
    except (ConfigError, TrainedModelError, WeightsError, ShardError, OSError) as e:
        print(f"compare: no attention picture: {e}", file=sys.stderr)
        return []
    truth = batch["keypoints"].float().numpy()
    layout = loader.layout
    rows = []
    for i in range(batch["image"].shape[0]):
        crop = to_bgr(batch["image"][i])
        gt = person_cells(crop, truth[i], np.zeros((1, 1, 1)), {}, layout, truth[i])[:1]
        rows.append(np.concatenate(gt + [cells[i] for cells in columns], axis=1))
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), stack_rows(rows))
    return [path]


def _first_run(variant: Variant) -> RunRecord:
    with_folders = [r for r in variant.runs if r.folder is not None]
    if not with_folders:
        raise TrainedModelError(f"variant '{variant.label}' has no run folder")
    return min(with_folders, key=lambda r: str(r.config.get("seed")))


def _variant_cells(label: str, trained: TrainedModel, batch: dict) -> list[np.ndarray]:
    """Per person one strip: this variant's prediction, heatmaps and attention, captioned."""
    cfg, layout, model = trained.cfg, trained.layout, trained.model
    with torch.no_grad():
        heatmaps, maps = model(batch["image"], return_attention=True)
    coords, scores = HeatmapCodec.of(cfg.data, heatmaps.shape[-2:]).decode(heatmaps.float())
    strips = []
    for i in range(heatmaps.shape[0]):
        crop = to_bgr(batch["image"][i])
        kpts = np.concatenate([coords[i].numpy(), scores[i, :, None].numpy()], 1)
        person_maps = {k: v[i].float().numpy() for k, v in maps.items()}
        cells = person_cells(crop, kpts, heatmaps[i].float().numpy(), person_maps, layout)
        cells[0] = caption(cells[0], label)  # which variant this strip is
        strips.append(np.concatenate(cells, axis=1))
    return strips
