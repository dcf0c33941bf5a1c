"""Person boxes for prediction from the files people have, and the filter every box goes
through (a detector's or a file's): a score threshold, then box NMS.

Boxes are x, y, w, h[, score] in image pixels. A boxes file holds a list of boxes (one image), a
mapping {file name: boxes}, or a COCO detections file ([{image_id, bbox, score}, ...]; the
Simple Baselines person detections for COCO val are such a file). COCO detections name images by
id: an annotation file's images (`file_name` -> `id`) map them to files, else ids are read from
file names made of digits (COCO's 000000000785.jpg). A boxes file that matches none of the images
is an error, never a silent whole-image box. An annotation file also gives each image's
ground-truth people, so that a picture can say which of them no box found."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torchvision.ops import nms

NO_BOXES = np.zeros((0, 5))


class BoxesError(ValueError):
    """A boxes file cannot be read or fits none of the images; the message says why."""


def filter_boxes(boxes, score_thr: float, nms_thr: float) -> np.ndarray:
    """Person boxes (N, 5: x, y, w, h, score) scored at least `score_thr`, and of those that
    overlap by an IoU above `nms_thr` only the best; best first (torchvision's NMS)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 5)
    boxes = boxes[boxes[:, 4] >= score_thr]
    if len(boxes) == 0:
        return NO_BOXES.copy()
    corners = torch.from_numpy(np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:4]], 1))
    keep = nms(corners, torch.from_numpy(boxes[:, 4]), nms_thr).numpy()
    return boxes[keep]


@dataclass
class ImageBoxes:
    """Boxes, COCO image ids and ground-truth people of the images to predict on, by file
    name. Boxes are filtered already; an image a boxes file does not name has none."""

    boxes: dict[str, np.ndarray] = field(default_factory=dict)
    ids: dict[str, int] = field(default_factory=dict)
    truth: dict[str, np.ndarray] = field(default_factory=dict)  # (M, 4) annotated people

    def of(self, image: Path) -> np.ndarray:
        return self.boxes.get(image.name, NO_BOXES)

    def image_id(self, image: Path, position: int) -> int:
        return self.ids.get(image.name, position)

    def truth_of(self, image: Path) -> np.ndarray:
        return self.truth.get(image.name, np.zeros((0, 4)))


def read_boxes(
    path: str | Path,
    images: list[Path],
    score_thr: float = 0.0,
    nms_thr: float = 1.0,
    annotations: str | Path | None = None,
) -> ImageBoxes:
    """The boxes of `images` from `path`, through `filter_boxes`; image ids (and ground truth)
    from `annotations` (a COCO file) or from digit file names."""
    found = image_annotations(images, annotations)
    data = _read_json(Path(path))
    names = {image.name for image in images}
    if isinstance(data, list) and data and all(isinstance(d, dict) for d in data):
        by_id = {image_id: name for name, image_id in found.ids.items()}
        listed: dict[str, list] = {name: [] for name in names}
        matched = [d for d in data if d.get("image_id") in by_id]
        if not matched:
            hint = "" if annotations else "; give --ann ANNOTATIONS.json to map file names to ids"
            raise BoxesError(
                f"the detections in '{path}' name none of the {len(images)} images by id "
                f"(ids there: {_sample(d.get('image_id') for d in data)}){hint}"
            )
        for det in matched:
            listed[by_id[det["image_id"]]].append([*det["bbox"], det.get("score", 1.0)])
    elif isinstance(data, list):
        if len(images) != 1:
            raise BoxesError(
                f"'{path}' holds one list of boxes: it fits 1 image, not {len(images)}"
            )
        listed = {images[0].name: data}
    elif isinstance(data, dict):
        if not set(data) & names:
            raise BoxesError(
                f"'{path}' names none of the images (names there: {_sample(data)}; images: "
                f"{_sample(names)})"
            )
        listed = data
    else:
        raise BoxesError(
            f"'{path}' holds neither a list of boxes nor a mapping of file names to boxes"
        )
    found.boxes = {
        name: filter_boxes(_as_scored(boxes, path, name), score_thr, nms_thr)
        for name, boxes in listed.items()
    }
    return found


def image_annotations(images: list[Path], annotations: str | Path | None) -> ImageBoxes:
    """Image ids of `images` (from `annotations`, a COCO file, else digit file names) and,
    from the file, the boxes of each image's annotated people (those with keypoints)."""
    if not annotations:
        return ImageBoxes(ids={im.name: int(im.stem) for im in images if im.stem.isdigit()})
    data = _read_json(Path(annotations))
    entries = data.get("images", []) if isinstance(data, dict) else []
    by_name = {Path(str(e.get("file_name"))).name: e.get("id") for e in entries}
    ids = {image.name: by_name[image.name] for image in images if image.name in by_name}
    names = {image_id: name for name, image_id in ids.items()}
    truth: dict[str, list] = {}
    for ann in data.get("annotations", []) if isinstance(data, dict) else []:
        name = names.get(ann.get("image_id"))
        if name is not None and ann.get("num_keypoints", 1) > 0 and not ann.get("iscrowd"):
            truth.setdefault(name, []).append(ann["bbox"])
    return ImageBoxes(ids=ids, truth={k: np.asarray(v, float) for k, v in truth.items()})


def unboxed_people(truth: np.ndarray, boxes: np.ndarray, min_iou: float = 0.3) -> np.ndarray:
    """The annotated people (M, 4) whom no box overlaps by at least `min_iou`."""
    if len(truth) == 0 or len(boxes) == 0:
        return truth
    from torchvision.ops import box_iou

    def corners(b):
        b = torch.from_numpy(np.asarray(b, dtype=np.float64)[:, :4])
        return torch.cat([b[:, :2], b[:, :2] + b[:, 2:]], dim=1)

    overlap = box_iou(corners(truth), corners(boxes)).max(dim=1).values.numpy()
    return truth[overlap < min_iou]


def _as_scored(boxes, path, name) -> np.ndarray:
    try:
        array = np.asarray(boxes, dtype=np.float64)
    except (TypeError, ValueError):
        raise BoxesError(f"'{path}': the boxes of {name} are not lists of numbers") from None
    if array.size == 0:
        return NO_BOXES.copy()
    if array.ndim != 2 or array.shape[1] not in (4, 5):
        raise BoxesError(f"'{path}': the boxes of {name} are not x, y, w, h[, score] each")
    return array if array.shape[1] == 5 else np.column_stack([array, np.ones(len(array))])


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BoxesError(f"'{path}' cannot be read as JSON: {e}") from None


def _sample(values) -> str:
    values = sorted({str(v) for v in values})
    return ", ".join(values[:4]) + (", ..." if len(values) > 4 else "")
