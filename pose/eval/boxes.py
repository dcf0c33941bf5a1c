"""Person boxes for prediction, from the files people have: a list of boxes (one image), a
mapping {file name: boxes}, or a COCO detections file ([{image_id, bbox, score}, ...]). COCO
detections name images by id: an annotation file's images (`file_name` -> `id`) maps them to
files, else ids are read from file names made of digits (COCO's 000000000785.jpg). A boxes file
that matches none of the images is an error, never a silent whole-image box."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

Box = list[float]  # x, y, w, h[, score]


class BoxesError(ValueError):
    """A boxes file cannot be read or fits none of the images; the message says why."""


@dataclass
class ImageBoxes:
    """Boxes and COCO image ids of the images to predict on, by file name."""

    boxes: dict[str, list[Box]] = field(default_factory=dict)
    ids: dict[str, int] = field(default_factory=dict)
    given: bool = False  # a boxes file was given: images without boxes have no people

    def of(self, image: Path) -> list[Box] | None:
        """The image's boxes; None (the whole image is one person) only without a boxes file."""
        return self.boxes.get(image.name, []) if self.given else None

    def image_id(self, image: Path, position: int) -> int:
        return self.ids.get(image.name, position)


def read_boxes(
    path: str | Path | None,
    images: list[Path],
    threshold: float = 0.0,
    annotations: str | Path | None = None,
) -> ImageBoxes:
    """The boxes of `images` from `path` (detections scored below `threshold` dropped), image ids
    from `annotations` (a COCO file) or from digit file names."""
    ids = _image_ids(images, annotations)
    if not path:
        return ImageBoxes(ids=ids)
    data = _read_json(Path(path))
    names = {image.name for image in images}
    if isinstance(data, list) and data and all(isinstance(d, dict) for d in data):
        by_id = {image_id: name for name, image_id in ids.items()}
        boxes: dict[str, list[Box]] = {}
        for det in data:
            name = by_id.get(det.get("image_id"))
            if name is not None and det.get("score", 1.0) >= threshold:
                boxes.setdefault(name, []).append([*det["bbox"], det.get("score", 1.0)])
        if not boxes:
            hint = "" if annotations else "; give --ann ANNOTATIONS.json to map file names to ids"
            raise BoxesError(
                f"the detections in '{path}' name none of the {len(images)} images by id "
                f"(ids there: {_sample(d.get('image_id') for d in data)}){hint}"
            )
        return ImageBoxes(boxes, ids, given=True)
    if isinstance(data, list):
        if len(images) != 1:
            raise BoxesError(
                f"'{path}' holds one list of boxes: it fits 1 image, not {len(images)}"
            )
        return ImageBoxes({images[0].name: data}, ids, given=True)
    if isinstance(data, dict):
        if not set(data) & names:
            raise BoxesError(
                f"'{path}' names none of the images (names there: {_sample(data)}; images: "
                f"{_sample(names)})"
            )
        return ImageBoxes(data, ids, given=True)
    raise BoxesError(f"'{path}' holds neither a list of boxes nor a mapping of file names to boxes")


def _image_ids(images: list[Path], annotations: str | Path | None) -> dict[str, int]:
    if annotations:
        data = _read_json(Path(annotations))
        entries = data.get("images", []) if isinstance(data, dict) else []
        by_name = {Path(str(e.get("file_name"))).name: e.get("id") for e in entries}
        return {image.name: by_name[image.name] for image in images if image.name in by_name}
    return {image.name: int(image.stem) for image in images if image.stem.isdigit()}


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BoxesError(f"'{path}' cannot be read as JSON: {e}") from None


def _sample(values) -> str:
    values = sorted({str(v) for v in values})
    return ", ".join(values[:4]) + (", ..." if len(values) > 4 else "")
