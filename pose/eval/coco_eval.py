"""From per-instance predictions to COCO keypoint AP, as the reference does it: rescoring
(box score x mean joint confidence above a threshold), OKS NMS per image, COCO results JSON,
pycocotools `COCOeval(..., 'keypoints')`."""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pose.config import ConfigError
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
    return float(person_scores(keypoints[None], np.array([box_score]), keypoint_thr)[0])


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


def oks_matrix(keypoints: np.ndarray, areas: np.ndarray, sigmas: np.ndarray) -> np.ndarray:
    """OKS of every pair of one image's people (M, K, 3), as `oks_iou` computes each row, at
    once: (M, M)."""
    variances = (np.asarray(sigmas) * 2) ** 2
    xy = keypoints[:, :, :2]
    squared = ((xy[:, None] - xy[None]) ** 2).sum(-1)  # (M, M, K)
    scale = (areas[:, None] + areas[None]) / 2 + np.spacing(1)
    return np.exp(-squared / variances / scale[:, :, None] / 2).mean(-1)


def oks_nms(
    keypoints: np.ndarray,
    scores: np.ndarray,
    areas: np.ndarray,
    threshold: float,
    sigmas: np.ndarray,
) -> list[int]:
    """Greedy NMS by OKS (with the layout's `sigmas`): indices kept, best first. The pairwise
    OKS is computed once for the image; the greedy pass only reads it."""
    order = np.argsort(-scores, kind="stable")
    overlap = oks_matrix(keypoints, np.asarray(areas, dtype=np.float64), sigmas)
    suppressed = np.zeros(len(order), dtype=bool)
    keep = []
    for i in order:
        if suppressed[i]:
            continue
        keep.append(int(i))
        suppressed |= overlap[i] > threshold
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
    """Rescored, NMS-filtered (OKS with `sigmas`) predictions in COCO results format. The
    rescoring is one array operation over all predictions; NMS is per image."""
    if not predictions:
        return []
    keypoints = np.stack([p.keypoints for p in predictions])
    box_scores = np.array([p.box_score for p in predictions])
    areas = np.array([p.area for p in predictions], dtype=np.float64)
    image_ids = np.array([p.image_id for p in predictions])
    scores = person_scores(keypoints, box_scores, keypoint_thr)
    order = np.argsort(image_ids, kind="stable")
    starts = np.flatnonzero(np.r_[True, image_ids[order][1:] != image_ids[order][:-1]])
    rounded = np.round(keypoints, 3)
    results = []
    for members in np.split(order, starts[1:]):
        kpts, image_scores = keypoints[members], scores[members]
        if soft:
            keep, image_scores = soft_oks_nms(
                kpts, image_scores, areas[members], nms_thr, sigmas=sigmas
            )
        else:
            keep = oks_nms(kpts, image_scores, areas[members], nms_thr, sigmas)
        image_id = int(image_ids[members[0]])
        results += [
            {
                "image_id": image_id,
                "category_id": 1,
                "keypoints": rounded[members[i]].ravel().tolist(),
                "score": float(image_scores[i]),
            }
            for i in keep
        ]
    return results


def person_scores(keypoints: np.ndarray, box_scores: np.ndarray, keypoint_thr: float):
    """`person_score` of many people at once: keypoints (N, K, 3), box scores (N,)."""
    confidence = keypoints[..., 2]
    confident = confidence > keypoint_thr
    count = confident.sum(-1)
    mean = np.where(count > 0, (confidence * confident).sum(-1) / np.maximum(count, 1), 0.0)
    return mean * box_scores


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
    ann_file: str | Path, results: list[dict], sigmas: np.ndarray, scorer: str = "pycocotools"
) -> dict[str, float]:
    """COCO keypoint metrics of `results` against an annotation file, with the layout's OKS
    `sigmas`: by pycocotools (the reference), or by faster-coco-eval (the same metrics to 1e-6,
    tested; about twice as fast at COCO val's size: BENCHMARKS.md), the `fast-eval` extra."""
    gt, _ = load_ground_truth(ann_file)
    if not results:
        return dict.fromkeys(METRIC_NAMES, 0.0)
    if scorer == "faster_coco_eval":
        return _faster_coco_eval(gt, results, sigmas)
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(results)
        evaluator = COCOeval(gt, dt, "keypoints")
        evaluator.params.useSegm = None
        evaluator.params.kpt_oks_sigmas = np.asarray(sigmas)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: float(v) for name, v in zip(METRIC_NAMES, evaluator.stats)}


def _faster_coco_eval(gt, results: list[dict], sigmas: np.ndarray) -> dict[str, float]:
    """The same scoring by faster-coco-eval's C++ COCOeval, on the same ground truth (the one
    `load_ground_truth` filled in)."""
    try:
        from faster_coco_eval import COCO, COCOeval_faster
    except ImportError:
        raise ConfigError(
            "config key 'eval.scorer': faster_coco_eval is not installed (pip install "
            "'posescale[fast-eval]'), or use pycocotools"
        ) from None
    truth = COCO()
    truth.dataset = gt.dataset
    with contextlib.redirect_stdout(io.StringIO()):
        truth.createIndex()
        dt = truth.loadRes(results)
        evaluator = COCOeval_faster(
            truth, dt, "keypoints", kpt_oks_sigmas=list(map(float, sigmas)), print_function=print
        )
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: float(v) for name, v in zip(METRIC_NAMES, evaluator.stats)}


def format_table(metrics: dict[str, float]) -> str:
    names = [n for n in METRIC_NAMES if n in metrics]
    head = " | ".join(f"{n:>6}" for n in names)
    row = " | ".join(f"{metrics[n]:>6.3f}" for n in names)
    return f"| {head} |\n|{'|'.join('-' * 8 for _ in names)}|\n| {row} |"


def write_json(path: str | Path, data, compact: bool = False) -> None:
    """`data` as JSON, atomically; `compact`: no indentation (large result lists)."""
    atomic_write(
        path, json.dumps(data, separators=(",", ":")) if compact else json.dumps(data, indent=1)
    )
