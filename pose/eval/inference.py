"""Pose of people in any image, from boxes (or the whole image as one box): crop each box as the
pipelines do, run the model (with flip test), decode, map back to image pixels. Also returns the
crops and attention maps, for pictures."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from pose.config import DataConfig, EvalConfig
from pose.data.coco import box_to_center_scale
from pose.data.codec import HeatmapCodec, input_to_image
from pose.data.geometry import get_affine_transform
from pose.data.layout import KeypointLayout
from pose.data.loader import normalise
from pose.eval.evaluate import predict_heatmaps


@dataclass
class PersonPose:
    box: tuple[float, float, float, float]
    keypoints: np.ndarray  # (K, 3): x, y in image pixels, confidence
    score: float  # box score x mean confident joint score
    crop: np.ndarray  # the model's input, BGR uint8
    attention: dict[str, np.ndarray]  # name -> (maps, h, w) in [0, 1]


def predict_people(
    model: torch.nn.Module,
    image_bgr: np.ndarray,
    boxes: list[tuple[float, ...]] | None,
    cfg: EvalConfig,
    data: DataConfig,
    device: torch.device,
    layout: KeypointLayout,
    batch_size: int = 32,
) -> list[PersonPose]:
    """One PersonPose per box (x, y, w, h[, score]); `boxes` None: the whole image is one box,
    an empty list: nobody. The crops go through the model `batch_size` at a time."""
    height, width = image_bgr.shape[:2]
    if boxes is None:
        boxes = [(0.0, 0.0, float(width), float(height), 1.0)]
    if not boxes:
        return []
    crops, inverses = crop_boxes(image_bgr, boxes, data.image_size)
    rgb = torch.from_numpy(np.stack([c[:, :, ::-1] for c in crops]).copy()).to(device)
    model.eval()
    flip = layout.flip_permutation if cfg.flip_test else None
    parts = []
    with torch.no_grad():
        for start in range(0, len(crops), max(1, batch_size)):
            chunk = normalise(rgb[start : start + max(1, batch_size)])
            parts.append(predict_heatmaps(model, chunk, flip, data, return_attention=True))
    heatmaps = torch.cat([h for h, _ in parts])
    maps = {k: torch.cat([m[k] for _, m in parts]) for k in parts[0][1]}
    coords, confidence = HeatmapCodec.of(data, heatmaps.shape[-2:]).decode(heatmaps, cfg.decode)
    to_image = torch.as_tensor(np.stack(inverses), device=coords.device)
    xy = input_to_image(coords, to_image).cpu().numpy()
    confidence = confidence.cpu().numpy()
    people = []
    for i, box in enumerate(boxes):
        kpts = np.concatenate([xy[i], confidence[i][:, None]], axis=1)
        confident = confidence[i][confidence[i] > cfg.keypoint_thr]
        box_score = float(box[4]) if len(box) > 4 else 1.0
        score = box_score * (float(confident.mean()) if confident.size else 0.0)
        attention = {k: v[i].float().cpu().numpy() for k, v in maps.items()}
        people.append(PersonPose(tuple(box[:4]), kpts, score, crops[i], attention))
    return people


def crop_boxes(
    image_bgr: np.ndarray, boxes: list[tuple[float, ...]], image_size: tuple[int, int]
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
