"""Evaluation over a split's shards: a predictor (the model, or the ground truth pushed through
the codec) -> heatmaps -> decoded joints in image pixels -> gathered on rank 0 -> rescoring,
OKS NMS, COCO AP.

Each rank evaluates its own part of the shards; rank 0 checks that the gathered instances are
exactly the manifest's (no duplicates, none lost) before scoring."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from pose.config import ConfigError, DataConfig, EvalConfig
from pose.data.coco import CocoFormatError
from pose.data.codec import HeatmapCodec, input_to_image
from pose.data.loader import Loader
from pose.data.shards import META
from pose.distributed import DistEnv
from pose.eval.coco_eval import (
    Prediction,
    coco_results,
    format_table,
    load_ground_truth,
    score_results,
    write_json,
)

Predictor = Callable[[dict], torch.Tensor]  # a batch -> heatmaps (N, K, h, w)


class EvaluationError(RuntimeError):
    """Gathered predictions do not match the manifest."""


def predict_heatmaps(
    model: torch.nn.Module,
    images: torch.Tensor,
    flip_permutation: np.ndarray | None,
    data: DataConfig,
    return_attention: bool = False,
):
    """Heatmaps of a batch; with a `flip_permutation` (flip test), averaged with those of the
    mirrored batch flipped back by the codec of `data` (pairs swapped, shifted as its target
    kind needs). With `return_attention`, also the unflipped pass's attention maps."""
    heatmaps, maps = (
        model(images, return_attention=True) if return_attention else (model(images), {})
    )
    heatmaps = heatmaps.float()
    if flip_permutation is not None:
        permutation = torch.tensor(list(flip_permutation), device=heatmaps.device)
        flipped = model(images.flip(-1)).float()
        codec = HeatmapCodec.of(data, heatmaps.shape[-2:])
        heatmaps = (heatmaps + codec.flip_back(flipped, permutation)) * 0.5
    return (heatmaps, maps) if return_attention else heatmaps


def model_predictor(
    model: torch.nn.Module, cfg: EvalConfig, data: DataConfig, flip_permutation: np.ndarray
) -> Predictor:
    """The model's heatmaps of a batch, with the flip test when `cfg.flip_test`."""
    model.eval()
    flip = flip_permutation if cfg.flip_test else None
    return lambda batch: predict_heatmaps(model, batch["image"], flip, data)


def ground_truth_predictor(
    codec: HeatmapCodec, through_union: tuple[int, tuple[int, ...]] | None = None
) -> Predictor:
    """The batch's own keypoints encoded as targets: scoring these checks the geometry. With
    `through_union` (the union's joint count, this dataset's channels in it), the keypoints are
    placed in the union's joints, encoded there, and the dataset's channels taken back out, as
    a union model's heatmaps are."""
    if through_union is None:
        return lambda batch: codec.encode(batch["keypoints"])[0]
    count, channels = through_union

    def predict(batch: dict) -> torch.Tensor:
        keypoints = batch["keypoints"]
        index = torch.as_tensor(channels, device=keypoints.device)
        union = keypoints.new_zeros((keypoints.shape[0], count, keypoints.shape[2]))
        union[:, index] = keypoints
        return codec.encode(union)[0].index_select(1, index)

    return predict


def image_keypoints(
    heatmaps: torch.Tensor, to_image: torch.Tensor, decode: str, data: DataConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """Heatmaps (N, K, h, w) of crops decoded and mapped back to image pixels through each
    crop's input -> image affine `to_image` (N, 2, 3): keypoints (N, K, 3: x, y, confidence)
    and the area in image pixels of each crop (for OKS), on the heatmaps' device."""
    coords, scores = HeatmapCodec.of(data, heatmaps.shape[-2:]).decode(heatmaps, decode)
    to_image = to_image.to(coords.device)
    xy = input_to_image(coords, to_image)
    in_h, in_w = data.image_size
    areas = in_w * in_h * torch.linalg.det(to_image[:, :, :2].double()).abs()
    return torch.cat([xy, scores.double().unsqueeze(-1)], dim=-1), areas


def batch_predictions(
    heatmaps: torch.Tensor, batch: dict, decode: str, data: DataConfig
) -> list[Prediction]:
    """Decode a batch's heatmaps to image-pixel predictions (one host sync per batch)."""
    keypoints, areas = image_keypoints(heatmaps, batch["to_image"], decode, data)
    keypoints, areas = keypoints.cpu().numpy(), areas.cpu().numpy()
    meta = batch["meta"].cpu().numpy()
    preds = []
    for i in range(len(meta)):
        ann, det = int(meta[i, META["ann_id"]]), int(meta[i, META["det_id"]])
        preds.append(
            Prediction(
                image_id=int(meta[i, META["image_id"]]),
                keypoints=keypoints[i],
                box_score=float(meta[i, META["score"]]),
                area=float(areas[i]),
                instance=f"a{ann}" if ann >= 0 else f"d{det}",
            )
        )
    return preds


def evaluate(
    predict: Predictor,
    loader: Loader,
    cfg: EvalConfig,
    data: DataConfig,
    results_path: str | Path | None = None,
    autocast=None,
    progress: bool = True,
    env: DistEnv | None = None,
    ceiling: bool = False,
) -> dict | None:
    """COCO keypoint metrics of `predict` on the loader's split, scored against `data.val_ann`
    on rank 0 and sent to every rank of `env` (the loader reads this rank's part; None: one
    process). The COCO results (the detections scored) go to `results_path` when given. With
    `ceiling`, also `AP_ceiling`: the AP of the ground truth pushed through the heatmap codec at
    this input size (no model can score above it), from the same batches."""
    distributed = env is not None and env.world_size > 1
    rank = env.rank if env is not None else 0
    preds: list[Prediction] = []
    truth: list[Prediction] = []
    with torch.no_grad(), autocast or contextlib.nullcontext():
        quiet = rank != 0 or not progress
        batches = tqdm(loader.epoch(0), total=loader.batches_per_epoch, desc="eval", disable=quiet)
        for batch in batches:
            heatmaps = predict(batch)
            preds += batch_predictions(heatmaps, batch, cfg.decode, data)
            if ceiling:
                codec = HeatmapCodec.of(data, heatmaps.shape[-2:])
                encoded = codec.encode(batch["keypoints"])[0]
                truth += batch_predictions(encoded, batch, cfg.decode, data)
    gathered, bad = _gather(preds, loader.bad_samples, env if distributed else None)
    if ceiling:
        truth, _ = _gather(truth, 0, env if distributed else None)
    metrics = None
    if rank == 0:
        check_predictions(gathered, loader.shards.num_samples - bad, loader.shards.folder)
        sigmas = np.asarray(loader.layout.sigmas)
        metrics = score_predictions(gathered, cfg, data.val_ann, results_path, sigmas)
        metrics["skipped"] = bad  # samples that do not decode, on every rank
        if ceiling:
            metrics["AP_ceiling"] = score_predictions(truth, cfg, data.val_ann, None, sigmas)["AP"]
    if distributed:
        box = [metrics]
        dist.broadcast_object_list(box, src=0)
        metrics = box[0]
    return metrics


LOW_CEILING = 0.9  # below it, the codec costs a model more AP than users expect


def ceiling_note(
    metrics: dict, data: DataConfig, heatmap_pixels: tuple[int, int] | None = None
) -> str | None:
    """What to say when the ground truth through the codec scores low: the heatmaps are coarse
    for the layout's OKS sigmas at this input size."""
    ceiling = metrics.get("AP_ceiling")
    if ceiling is None or ceiling >= LOW_CEILING:
        return None
    size = "x".join(map(str, data.image_size))
    heat = f"the {'x'.join(map(str, heatmap_pixels))} heatmaps" if heatmap_pixels else "heatmaps"
    return (
        f"the ground truth itself, pushed through the heatmap codec, scores AP {ceiling:.3f} "
        f"here: {heat} of {size} inputs are coarse for this layout's OKS sigmas, and no model can "
        "score above that; a larger data.image_size (or data.target=udp with eval.decode=dark) "
        "raises it"
    )


def check_ground_truth(ann_file: str | Path, shards) -> list[str]:
    """Before any inference: `ann_file` must be readable and hold every image the val shards
    were cropped from (else it is another dataset's file, and scoring would fail after all the
    work); returns notes on what scoring fills in (load_ground_truth)."""
    try:
        coco, notes = load_ground_truth(ann_file)
    except CocoFormatError as e:
        raise ConfigError(f"config key 'data.val_ann': {e}") from None
    wanted = shards.image_ids()
    missing = sorted(wanted - set(coco.imgs))
    if missing:
        shown = ", ".join(map(str, missing[:5])) + (", ..." if len(missing) > 5 else "")
        raise ConfigError(
            f"config key 'data.val_ann': '{ann_file}' lacks {len(missing)} of the "
            f"{len(wanted)} images of the val shards in '{shards.folder}' (ids {shown}): "
            "give the annotation file these shards were made from"
        )
    return notes


def _gather(preds: list[Prediction], bad: int, env: DistEnv | None) -> tuple[list[Prediction], int]:
    """Every rank's predictions and count of skipped samples, on rank 0 (`env` None: this
    process's)."""
    if env is None:
        return preds, bad
    parts = [None] * env.world_size if env.rank == 0 else None
    dist.gather_object((preds, bad), parts, dst=0)
    if env.rank != 0:
        return [], 0
    return [p for part, _ in parts for p in part], sum(count for _, count in parts)


def check_predictions(preds: list[Prediction], expected: int, folder: str | Path) -> None:
    """One prediction for each instance of the split: no duplicates, none lost."""
    keys = [(p.image_id, p.instance) for p in preds]
    if len(set(keys)) != len(keys) or len(keys) != expected:
        raise EvaluationError(
            f"evaluation gathered {len(keys)} predictions ({len(set(keys))} distinct) for "
            f"{expected} instances in {folder}"
        )


def score_predictions(
    preds: list[Prediction],
    cfg: EvalConfig,
    ann_file: str | Path,
    results_path: str | Path | None,
    sigmas: np.ndarray,
) -> dict:
    """Rescoring, OKS NMS and pycocotools' metrics (OKS with the layout's `sigmas`), with the
    instance count; the COCO results go to `results_path` when given."""
    results = coco_results(preds, cfg.keypoint_thr, cfg.oks_nms_thr, cfg.soft_nms, sigmas=sigmas)
    metrics = score_results(ann_file, results, sigmas, cfg.scorer)
    metrics["instances"] = len(preds)
    if results_path is not None:
        write_json(results_path, results, compact=True)
    return metrics


def print_metrics(metrics: dict) -> None:
    print(format_table(metrics))
    skipped = metrics.get("skipped", 0)
    note = f"; {skipped} skipped: their crops do not decode" if skipped else ""
    print(f"({metrics['instances']} instances scored{note})")
