"""Evaluation over a split's shards: the model (or the ground truth pushed through the codec) ->
heatmaps -> decoded joints in image pixels -> gathered on rank 0 -> rescoring, OKS NMS, COCO AP.

Each rank evaluates its own part of the shards; rank 0 checks that the gathered instances are
exactly the manifest's (no duplicates, none lost) before scoring."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from pose.config import Config
from pose.data.codec import decode_heatmaps, encode_heatmaps, flip_back, heatmap_to_image
from pose.data.loader import flip_permutation
from pose.data.shards import META
from pose.eval.coco_eval import Prediction, coco_results, format_table, score_results, write_json


class EvaluationError(RuntimeError):
    """Gathered predictions do not match the manifest."""


def predict_heatmaps(
    model: torch.nn.Module,
    images: torch.Tensor,
    flip_test: bool,
    shift: bool,
    return_attention: bool = False,
):
    """Heatmaps of a batch; with `flip_test`, averaged with those of the mirrored batch flipped
    back (pairs swapped, shifted one pixel as the reference does; no shift for UDP). With
    `return_attention`, also the unflipped pass's attention maps."""
    heatmaps, maps = (
        model(images, return_attention=True) if return_attention else (model(images), {})
    )
    heatmaps = heatmaps.float()
    if flip_test:
        permutation = torch.as_tensor(flip_permutation(heatmaps.shape[1]), device=heatmaps.device)
        flipped = model(images.flip(-1)).float()
        heatmaps = (heatmaps + flip_back(flipped, permutation, shift=shift)) * 0.5
    return (heatmaps, maps) if return_attention else heatmaps


def batch_predictions(heatmaps: torch.Tensor, batch: dict, cfg: Config) -> list[Prediction]:
    """Decode a batch's heatmaps to image-pixel predictions (one host sync per batch)."""
    coords, scores = decode_heatmaps(heatmaps, cfg.eval.decode)
    stride = cfg.data.image_size[1] / heatmaps.shape[-1]
    xy = heatmap_to_image(coords, batch["to_image"], stride)
    in_h, in_w = cfg.data.image_size
    areas = in_w * in_h * torch.linalg.det(batch["to_image"][:, :, :2]).abs()
    keypoints = torch.cat([xy, scores.double().unsqueeze(-1)], dim=-1).cpu().numpy()
    meta, areas = batch["meta"].cpu().numpy(), areas.cpu().numpy()
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
    model: torch.nn.Module | None,
    loader,
    cfg: Config,
    out_dir: str | Path | None = None,
    gt_as_predictions: bool = False,
    autocast=None,
    progress: bool = True,
) -> dict | None:
    """COCO keypoint metrics of `model` on the loader's split (on rank 0; None elsewhere unless
    torch.distributed is up, where every rank gets them). `gt_as_predictions` scores the ground
    truth keypoints pushed through encode -> decode instead of a model: a check of the geometry."""
    distributed = dist.is_available() and dist.is_initialized()
    rank = dist.get_rank() if distributed else 0
    if model is not None:
        model.eval()
    preds: list[Prediction] = []
    shift = cfg.data.target != "udp"
    with torch.no_grad(), autocast or contextlib.nullcontext():
        batches = loader.epoch(0)
        quiet = rank != 0 or not progress
        for batch in tqdm(batches, total=loader.steps_per_epoch, desc="eval", disable=quiet):
            if gt_as_predictions:
                data = cfg.data
                heatmaps, _ = encode_heatmaps(
                    batch["keypoints"], data.image_size, data.heatmap_size, data.sigma, data.target
                )
            else:
                heatmaps = predict_heatmaps(model, batch["image"], cfg.eval.flip_test, shift)
            preds += batch_predictions(heatmaps, batch, cfg)
    gathered = _gather(preds, distributed, rank)
    metrics = None
    if rank == 0:
        metrics = _score(gathered, loader, cfg, out_dir)
    if distributed:
        box = [metrics]
        dist.broadcast_object_list(box, src=0)
        metrics = box[0]
    return metrics


def _gather(preds: list[Prediction], distributed: bool, rank: int) -> list[Prediction]:
    if not distributed:
        return preds
    parts = [None] * dist.get_world_size() if rank == 0 else None
    dist.gather_object(preds, parts, dst=0)
    return [p for part in parts for p in part] if rank == 0 else []


def _score(preds: list[Prediction], loader, cfg: Config, out_dir) -> dict:
    keys = [(p.image_id, p.instance) for p in preds]
    expected = loader.shards.num_samples - loader.bad_samples
    if len(set(keys)) != len(keys) or len(keys) != expected:
        raise EvaluationError(
            f"evaluation gathered {len(keys)} predictions ({len(set(keys))} distinct) for "
            f"{expected} instances in {loader.shards.folder}"
        )
    results = coco_results(preds, cfg.eval.keypoint_thr, cfg.eval.oks_nms_thr, cfg.eval.soft_nms)
    metrics = score_results(cfg.data.val_ann, results)
    metrics["instances"] = len(preds)
    if out_dir is not None:
        write_json(Path(out_dir) / "results.json", results)
    return metrics


def print_metrics(metrics: dict) -> None:
    print(format_table(metrics))
    print(f"({metrics['instances']} instances scored)")
