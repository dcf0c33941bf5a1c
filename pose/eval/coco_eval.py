"""From per-instance predictions to COCO keypoint AP, as the reference does it: rescoring
(box score x mean joint confidence above a threshold), OKS NMS per image, COCO results JSON,
pycocotools `COCOeval(..., 'keypoints')`."""

from __future__ import annotations

import contextlib
import io
import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pose.data.coco import load_coco
from pose.files import atomic_write

METRIC_NAMES = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")


@dataclass
class Prediction:
    """One person: keypoints in original image pixels with per-joint confidence."""

    image_id: int
    keypoints: np.ndarray  # (K, 3): x, y, confidence
    box_score: float
    area: float  # of the padded box, for OKS in NMS
    instance: str  # "a<ann_id>" or "d<det_id>": which sample it came from


def rescore(pred: Prediction, keypoint_thr: float) -> float:
    """Box score x mean of the joint confidences above `keypoint_thr` (the reference's)."""
    return person_score(pred.keypoints, pred.box_score, keypoint_thr)


def person_score(keypoints: np.ndarray, box_score: float, keypoint_thr: float) -> float:
    """The rescoring of one person, keypoints (K, 3) with their confidences: `box_score` x the
    mean of the confidences above `keypoint_thr` (0 when none is)."""
    confidence = keypoints[:, 2]
    confident = confidence[confidence > keypoint_thr]
    return (float(confident.mean()) if confident.size else 0.0) * box_score


def result_record(image_id: int, keypoints: np.ndarray, score: float, **extra) -> dict:
    """One person in COCO keypoint results format (what pycocotools' loadRes reads), with
    `extra` fields (a box, a file name) after the standard ones."""
    flat = [round(float(v), 3) for v in np.asarray(keypoints).reshape(-1)]
    return {"image_id": int(image_id), "category_id": 1, "keypoints": flat, "score": score, **extra}


def oks_iou(
    g: np.ndarray,
    d: np.ndarray,
    area_g: float,
    area_d: np.ndarray,
    sigmas: np.ndarray,
) -> np.ndarray:
    """OKS of keypoints `g` (K, 3) against each of `d` (M, K, 3), as the reference's nms.py
    (which is pycocotools' formula with the mean of the two areas, over all joints)."""
    sigmas = np.asarray(sigmas)
    variances = (sigmas * 2) ** 2
    dx = d[:, :, 0] - g[None, :, 0]
    dy = d[:, :, 1] - g[None, :, 1]
    scale = (area_g + np.asarray(area_d))[:, None] / 2 + np.spacing(1)
    e = (dx**2 + dy**2) / variances[None] / scale / 2
    return np.exp(-e).mean(axis=1)


def oks_nms(
    keypoints: np.ndarray,
    scores: np.ndarray,
    areas: np.ndarray,
    threshold: float,
    sigmas: np.ndarray,
) -> list[int]:
    """Greedy NMS by OKS (with the layout's `sigmas`): indices kept, best first."""
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i = order[0]
        keep.append(int(i))
        rest = order[1:]
        overlap = oks_iou(keypoints[i], keypoints[rest], areas[i], areas[rest], sigmas)
        order = order[1:][overlap <= threshold]
    return keep


def soft_oks_nms(
    keypoints: np.ndarray,
    scores: np.ndarray,
    areas: np.ndarray,
    threshold: float,
    max_dets: int = 20,
    *,
    sigmas: np.ndarray,
) -> tuple[list[int], np.ndarray]:
    """Soft NMS by OKS (Gaussian decay exp(-oks^2 / threshold), as mmpose, whose threshold is
    the same OKS threshold hard NMS uses): indices kept, best first, and the decayed scores of
    all instances."""
    scores = scores.astype(np.float64).copy()
    order = list(np.argsort(-scores, kind="stable"))
    keep = []
    while order and len(keep) < max_dets:
        i = order.pop(0)
        keep.append(int(i))
        if not order:
            break
        rest = np.array(order)
        overlap = oks_iou(keypoints[i], keypoints[rest], areas[i], areas[rest], sigmas)
        scores[rest] *= np.exp(-(overlap**2) / threshold)
        order = list(rest[np.argsort(-scores[rest], kind="stable")])
    return keep, scores


def coco_results(
    predictions: list[Prediction],
    keypoint_thr: float,
    nms_thr: float,
    soft: bool = False,
    *,
    sigmas: np.ndarray,
) -> list[dict]:
    """Rescored, NMS-filtered (OKS with `sigmas`) predictions in COCO results format."""
    by_image: dict[int, list[Prediction]] = defaultdict(list)
    for pred in predictions:
        by_image[pred.image_id].append(pred)
    results = []
    for image_id, preds in sorted(by_image.items()):
        kpts = np.stack([p.keypoints for p in preds])
        scores = np.array([rescore(p, keypoint_thr) for p in preds])
        areas = np.array([p.area for p in preds])
        if soft:
            keep, scores = soft_oks_nms(kpts, scores, areas, nms_thr, sigmas=sigmas)
        else:
            keep = oks_nms(kpts, scores, areas, nms_thr, sigmas)
        results += [result_record(image_id, kpts[i], float(scores[i])) for i in keep]
    return results


def load_ground_truth(ann_file: str | Path):
    """The annotation file pycocotools scores against, with what COCO's tools take for granted
    filled in where the file leaves it out (CrowdPose's and AIC's files do): `area` as the box's
    width x height (as sharding does) and `iscrowd` as 0. Returns the COCO object and notes
    saying what was filled."""
    coco = load_coco(ann_file)
    anns = coco.dataset["annotations"]
    no_area = [a for a in anns if not _is_number(a.get("area"))]
    for ann in no_area:
        box = ann.get("bbox")
        ok = isinstance(box, list) and len(box) == 4 and all(_is_number(v) for v in box)
        ann["area"] = float(box[2] * box[3]) if ok else 0.0
    no_crowd = [a for a in anns if "iscrowd" not in a]
    for ann in no_crowd:
        ann["iscrowd"] = 0
    notes = []
    if no_area:
        notes.append(
            f"{len(no_area)} of {len(anns)} annotations in '{ann_file}' have no 'area': "
            "scored with the box's width x height, as sharding uses"
        )
    if no_crowd:
        notes.append(
            f"{len(no_crowd)} of {len(anns)} annotations in '{ann_file}' have no 'iscrowd': "
            "taken as 0, as COCO's tools do"
        )
    return coco, notes


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def score_results(
    ann_file: str | Path, results: list[dict], sigmas: np.ndarray
) -> dict[str, float]:
    """pycocotools keypoint metrics of `results` against an annotation file, with the layout's
    OKS `sigmas`."""
    from pycocotools.cocoeval import COCOeval

    gt, _ = load_ground_truth(ann_file)
    if not results:
        return dict.fromkeys(METRIC_NAMES, 0.0)
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(results)
        evaluator = COCOeval(gt, dt, "keypoints")
        evaluator.params.useSegm = None
        evaluator.params.kpt_oks_sigmas = np.asarray(sigmas)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: float(v) for name, v in zip(METRIC_NAMES, evaluator.stats)}


def format_table(metrics: dict[str, float]) -> str:
    names = [n for n in METRIC_NAMES if n in metrics]
    head = " | ".join(f"{n:>6}" for n in names)
    row = " | ".join(f"{metrics[n]:>6.3f}" for n in names)
    return f"| {head} |\n|{'|'.join('-' * 8 for _ in names)}|\n| {row} |"


def write_json(path: str | Path, data) -> None:
    atomic_write(path, json.dumps(data, indent=1))
