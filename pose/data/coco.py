"""COCO person keypoints: the person category, reading annotation files, choosing training
instances, and box -> (center, scale) as the reference Simple Baselines code does it.

Sharding reads an annotation file as a `CocoIndex` (`index_coco`): its images and categories,
and its annotations streamed one at a time (ijson), never all held at once, so its memory does
not grow with the file's annotations but only with the instances kept. Scoring reads the whole
file with pycocotools (`load_coco`), as COCOeval needs."""

from __future__ import annotations

import contextlib
import io
import json
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pose.data.layout import COCO_17

PERSON_CATEGORY = {
    "supercategory": "person",
    "id": 1,
    "name": "person",
    "keypoints": list(COCO_17.joints),
    "skeleton": [[a + 1, b + 1] for a, b in COCO_17.skeleton],  # 1-based, as COCO writes it
}
# `iscrowd` is not among them: COCO's tools take a missing one as 0 (AIC's files have none).
REQUIRED_ANN_FIELDS = ("id", "image_id", "bbox", "keypoints", "num_keypoints")


class CocoFormatError(ValueError):
    """An annotation file is missing, unreadable or not in COCO person-keypoints format."""


@dataclass(frozen=True, slots=True)
class PersonInstance:
    """One annotated person, ready to crop: cleaned box and keypoints in image pixels."""

    image_id: int
    file_name: str
    image_wh: tuple[int, int]  # (width, height)
    ann_id: int | None  # ground-truth boxes
    bbox: tuple[float, float, float, float]  # cleaned x, y, w, h (detections: as given)
    keypoints: np.ndarray  # (K, 3) float32: x, y, visibility (zeros for detections)
    area: float
    num_keypoints: int
    det_id: int | None = None  # detections: index in the detections file
    score: float = 1.0  # detection score (1 for ground-truth boxes)

    @property
    def key(self) -> str:
        """Unique sample key without dots: image id and annotation (or detection) id."""
        if self.ann_id is not None:
            return f"{self.image_id:012d}_a{self.ann_id}"
        return f"{self.image_id:012d}_d{self.det_id}"


def read_json(path: Path, what: str):
    """A JSON file's content, or a CocoFormatError saying what is wrong with it."""
    if not path.is_file():
        raise CocoFormatError(f"{what} '{path}' does not exist")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CocoFormatError(f"{what} '{path}' is not valid JSON: {e}") from None


@dataclass
class CocoIndex:
    """An annotation file as sharding reads it: its images (id -> file name, width, height)
    and categories in memory, its annotations streamed from the file on each pass (or, for a
    file with NaN or Infinity, which only Python's own JSON reader takes, held in memory)."""

    path: Path
    imgs: dict[int, dict]
    categories: list[dict]
    held: list | None = None  # the annotations of a file that could not be streamed

    def annotations(self) -> Iterator[dict]:
        """The annotations, one at a time, in the file's order (checked as `load_coco` checks
        them: an integer id and an image id)."""
        for i, ann in enumerate(self._stream() if self.held is None else self.held):
            if not isinstance(ann, dict) or not isinstance(ann.get("id"), int):
                _bad_annotation(self.path, i)
            if "image_id" not in ann:
                _bad_annotation(self.path, i)
            yield ann

    def _stream(self) -> Iterator[dict]:
        import ijson

        with open(self.path, "rb") as f:
            try:
                yield from ijson.items(f, "annotations.item", use_float=True)
            except ijson.JSONError as e:
                raise CocoFormatError(
                    f"annotation file '{self.path}' is not valid JSON: {e}"
                ) from None


def index_coco(path: str | Path) -> CocoIndex:
    """A `CocoIndex` of the file at `path`: its images and categories read (streaming passes),
    with the errors `load_coco` gives for a missing file, bad JSON or missing lists."""
    import ijson

    path = Path(path)
    if not path.is_file():
        raise CocoFormatError(f"annotation file '{path}' does not exist")
    imgs: dict[int, dict] = {}
    try:
        with open(path, "rb") as f:
            for i, image in enumerate(ijson.items(f, "images.item", use_float=True)):
                _check_image(image, i, path)
                imgs[image["id"]] = {k: image[k] for k in ("file_name", "width", "height")}
        with open(path, "rb") as f:
            categories = list(ijson.items(f, "categories.item", use_float=True))
    except ijson.JSONError:
        return _held_index(path)  # NaN or Infinity (Python writes them), or not JSON at all
    for key, found in (("images", imgs), ("categories", categories)):
        if not found:
            raise CocoFormatError(f"annotation file '{path}' has no '{key}' list (or it is empty)")
    index = CocoIndex(path, imgs, categories)
    person_category(index, path)
    return index


def _held_index(path: Path) -> CocoIndex:
    """The index of a file only Python's JSON reader takes (NaN, Infinity), read whole."""
    data = read_json(path, "annotation file")  # the error for a file that is not JSON at all
    _check_structure(data, path)
    print(
        f"coco: '{path}' holds NaN or Infinity, which streaming JSON readers refuse: read "
        "whole (memory grows with the file)",
        file=sys.stderr,
    )
    imgs = {i["id"]: {k: i[k] for k in ("file_name", "width", "height")} for i in data["images"]}
    return CocoIndex(path, imgs, data["categories"], data["annotations"])


def annotations_of(coco) -> Iterator[dict]:
    """The annotations of a `CocoIndex` (streamed) or of a pycocotools COCO (in memory)."""
    if isinstance(coco, CocoIndex):
        return coco.annotations()
    return iter(coco.dataset["annotations"])


def load_coco(path: str | Path):
    """Load a COCO keypoints annotation file with pycocotools, with clear errors."""
    from pycocotools.coco import COCO

    path = Path(path)
    data = read_json(path, "annotation file")
    _check_structure(data, path)
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
        coco.createIndex()
    return coco


def _check_structure(data, path: Path) -> None:
    """What pycocotools needs to index the file; anything else wrong with one annotation is
    counted as a skip later."""
    for key in ("images", "annotations", "categories"):
        if not isinstance(data, dict) or not isinstance(data.get(key), list):
            raise CocoFormatError(f"annotation file '{path}' has no '{key}' list")
    for i, image in enumerate(data["images"]):
        _check_image(image, i, path)
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or not isinstance(ann.get("id"), int) or "image_id" not in ann:
            _bad_annotation(path, i)
    person_category(data["categories"], path)


def _check_image(image, i: int, path: Path) -> None:
    fields = {"id": int, "width": int, "height": int, "file_name": str}
    for key, kind in fields.items():
        if not isinstance(image, dict) or not isinstance(image.get(key), kind):
            raise CocoFormatError(
                f"annotation file '{path}': images[{i}] needs '{key}' ({kind.__name__})"
            )


def _bad_annotation(path: Path, i: int):
    raise CocoFormatError(
        f"annotation file '{path}': annotations[{i}] needs an integer 'id' and an 'image_id'"
    )


def clean_bbox(
    bbox: list[float], width: int, height: int
) -> tuple[float, float, float, float] | None:
    """Clip an x, y, w, h box to the image as the reference does; None if nothing is left."""
    x, y, w, h = (float(v) for v in bbox)
    x1, y1 = max(0.0, x), max(0.0, y)
    x2 = min(width - 1.0, x1 + max(0.0, w - 1.0))
    y2 = min(height - 1.0, y1 + max(0.0, h - 1.0))
    if w <= 0 or h <= 0 or x2 < x1 or y2 < y1:
        return None
    return x1, y1, x2 - x1, y2 - y1


def box_to_center_scale(
    bbox: tuple[float, float, float, float], aspect_ratio: float, padding: float = 1.25
) -> tuple[np.ndarray, np.ndarray]:
    """Center and (width, height) in pixels of the box widened to `aspect_ratio` (w / h) and
    padded. The reference keeps scale in units of 200 px; we keep pixels."""
    x, y, w, h = bbox
    center = np.array([x + w * 0.5, y + h * 0.5], dtype=np.float32)
    if w > aspect_ratio * h:
        h = w / aspect_ratio
    elif w < aspect_ratio * h:
        w = h * aspect_ratio
    return center, np.array([w * padding, h * padding], dtype=np.float32)


OnSkip = Callable[[str, str], None]  # (reason, what) -> None; may raise to make skips errors


def training_instances(
    coco, on_skip: OnSkip | None = None, num_joints: int | None = None
) -> tuple[list[PersonInstance], Counter]:
    """Annotations with num_keypoints > 0, iscrowd == 0, `num_joints` keypoints (by default the
    person category's number) and a valid cleaned box.

    Returns the instances and a counter of skipped annotations by reason (missing fields and
    a wrong keypoint count say which and how many); `on_skip` hears of each skip first (strict
    callers raise there)."""
    skipped: Counter = Counter()
    instances = []
    num_joints = num_joints or len(person_category(coco)["keypoints"])
    seen: set[int] = set()
    for ann in annotations_of(coco):
        ann_id = ann["id"]
        reason = (
            "duplicate_annotation_id" if ann_id in seen else _skip_reason(coco, ann, num_joints)
        )
        seen.add(ann_id)
        if reason:
            if on_skip and reason not in ("crowd", "no_keypoints", "not_person"):
                on_skip(reason, f"annotation {ann_id}")
            skipped[reason] += 1
            continue
        img = coco.imgs[ann["image_id"]]
        box = clean_bbox(ann["bbox"], img["width"], img["height"])
        kpts = np.asarray(ann["keypoints"], dtype=np.float32).reshape(-1, 3)
        instances.append(
            PersonInstance(
                image_id=ann["image_id"],
                file_name=img["file_name"],
                image_wh=(img["width"], img["height"]),
                ann_id=ann_id,
                bbox=box,
                keypoints=kpts,
                area=float(ann.get("area", box[2] * box[3])),
                num_keypoints=int(ann["num_keypoints"]),
            )
        )
    instances.sort(key=lambda inst: inst.ann_id)  # the file's order does not matter
    return instances, skipped


def person_category(source, path: Path | str | None = None) -> dict:
    """The person category (id 1, with keypoints) of a `CocoIndex`, a pycocotools COCO or a
    list of categories; a CocoFormatError naming the file without one."""
    if isinstance(source, list):
        categories = source
    elif isinstance(source, CocoIndex):
        categories, path = source.categories, path or source.path
    else:
        categories = source.dataset["categories"]
    people = [c for c in categories if isinstance(c, dict) and c.get("id") == 1]
    if not people or not isinstance(people[0].get("keypoints"), list):
        raise CocoFormatError(f"annotation file '{path}' has no person category with keypoints")
    return people[0]


def numbers(value, length: int | None = None) -> np.ndarray | None:
    """`value` as a float64 array if it is a list of finite real numbers (of `length` when
    given), else None: strings, booleans, NaN and infinities are not numbers here."""
    if not isinstance(value, list | tuple) or (length is not None and len(value) != length):
        return None
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
        return None
    array = np.asarray(value, dtype=np.float64)
    return array if np.isfinite(array).all() else None


def _skip_reason(coco, ann: dict, num_joints: int) -> str | None:
    missing = [k for k in REQUIRED_ANN_FIELDS if k not in ann]
    if missing:
        return f"missing_fields ({', '.join(missing)})"
    if ann.get("category_id", 1) != 1:
        return "not_person"
    if ann.get("iscrowd", 0):
        return "crowd"
    if not isinstance(ann["num_keypoints"], int) or isinstance(ann["num_keypoints"], bool):
        return "bad_keypoints"
    if ann["num_keypoints"] <= 0:
        return "no_keypoints"
    img = coco.imgs.get(ann["image_id"])
    if img is None:
        return "unknown_image"
    kpts = numbers(ann["keypoints"], 3 * num_joints)
    if kpts is None:
        values = ann["keypoints"]
        if isinstance(values, list) and len(values) == 3 * num_joints:
            return "bad_keypoints"
        found = f"{len(values) / 3:g}" if isinstance(values, list) else "no list of"
        return f"wrong_keypoint_count ({num_joints} joints expected, {found} found)"
    box = numbers(ann["bbox"], 4)
    if box is None or clean_bbox(box, img["width"], img["height"]) is None:
        return "invalid_box"
    labelled = kpts.reshape(-1, 3)[kpts.reshape(-1, 3)[:, 2] > 0]
    width, height = img["width"], img["height"]
    far_x = (labelled[:, 0] < -0.5 * width) | (labelled[:, 0] > 1.5 * width)
    far_y = (labelled[:, 1] < -0.5 * height) | (labelled[:, 1] > 1.5 * height)
    if np.any(far_x | far_y):
        return "keypoints_outside_image"
    return None


def detection_instances(
    coco,
    dets_path: str | Path,
    score_threshold: float,
    on_skip: OnSkip | None = None,
    num_joints: int | None = None,
) -> tuple[list[PersonInstance], Counter]:
    """Person detections (COCO results format) with score >= threshold, as instances to crop
    (with `num_joints` all-zero keypoints, by default as many as the person category names).

    Returns the instances and a counter of skipped detections by reason."""
    num_joints = num_joints or len(person_category(coco)["keypoints"])
    path = Path(dets_path)
    dets = read_json(path, "detections file")
    if not isinstance(dets, list):
        raise CocoFormatError(f"detections file '{path}' must hold a list of detections")
    skipped: Counter = Counter()
    instances = []
    for det_id, det in enumerate(dets):
        reason = _detection_skip_reason(coco, det, score_threshold)
        if reason:
            if on_skip and reason not in ("below_score_threshold", "not_person"):
                on_skip(reason, f"detection {det_id}")
            skipped[reason] += 1
            continue
        img = coco.imgs[det["image_id"]]
        x, y, w, h = (float(v) for v in det["bbox"])
        instances.append(
            PersonInstance(
                image_id=det["image_id"],
                file_name=img["file_name"],
                image_wh=(img["width"], img["height"]),
                ann_id=None,
                bbox=(x, y, w, h),
                keypoints=np.zeros((num_joints, 3), np.float32),
                area=w * h,
                num_keypoints=0,
                det_id=det_id,
                score=float(det["score"]),
            )
        )
    return instances, skipped


def _detection_skip_reason(coco, det: dict, score_threshold: float) -> str | None:
    if not isinstance(det, dict) or any(k not in det for k in ("image_id", "bbox", "score")):
        return "missing_fields"
    if det.get("category_id", 1) != 1:
        return "not_person"
    if numbers([det["score"]]) is None:
        return "bad_score"
    if det["score"] < score_threshold:
        return "below_score_threshold"
    if not isinstance(det["image_id"], int) or det["image_id"] not in coco.imgs:
        return "unknown_image"
    box = numbers(det["bbox"], 4)
    if box is None or box[2] <= 0 or box[3] <= 0:
        return "invalid_box"
    img = coco.imgs[det["image_id"]]
    if (
        box[0] >= img["width"]
        or box[1] >= img["height"]
        or box[0] + box[2] <= 0
        or box[1] + box[3] <= 0
    ):
        return "invalid_box"
    return None
