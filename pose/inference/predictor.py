"""Pose of the people in images or video frames, from a trained model and person boxes: the
object a user builds once (`PosePredictor`) and calls on batches of BGR images. The boxes come
from a person detector (pose/inference/detector.py), a detections file, or the whole image when
asked; each box is cropped as the pipelines crop, the crops of all the images of a call go
through the model together, `batch_size` at a time, on the device, and the heatmaps are decoded
and mapped back to image pixels by the code evaluation uses."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pose.data.geometry import crop_boxes
from pose.data.loader import normalise
from pose.eval.coco_eval import person_score
from pose.eval.evaluate import image_keypoints, predict_heatmaps
from pose.models.trained import TrainedModel, load_trained_model

# Person boxes of one image: (N, 5) x, y, w, h in image pixels and a score
Boxes = np.ndarray
# What finds the people: BGR images -> their boxes (a PersonDetector, or a stand-in)
PersonFinder = Callable[[Sequence[np.ndarray]], list[Boxes]]


@dataclass
class Person:
    """One person found in an image, everything in that image's pixels."""

    box: np.ndarray  # (4,) x, y, w, h
    box_score: float
    keypoints: np.ndarray  # (K, 3): x, y, confidence
    score: float  # the box score x the mean confidence of the joints above eval.keypoint_thr
    crop: np.ndarray | None = None  # the model's input, BGR uint8 (with keep_crops)
    attention: dict[str, np.ndarray] = field(default_factory=dict)  # name -> maps (keep_crops)


class PosePredictor:
    """A trained model (and, optionally, what finds the people) ready to predict on the device.

        predictor = PosePredictor.from_checkpoint("runs/r50", detector="fasterrcnn_resnet50_fpn_v2")
        people = predictor([cv2.imread("photo.jpg")])[0]  # one list of Person per image

    `keep_crops` also returns each person's crop and the attention maps (for pictures)."""

    def __init__(
        self,
        trained: TrainedModel,
        finder: PersonFinder | None = None,
        device: str | torch.device = "auto",
        batch_size: int = 32,
        keep_crops: bool = False,
    ):
        self.device = pick_device(device) if isinstance(device, str) else device
        self.cfg, self.layout = trained.cfg, trained.layout
        self.model = trained.model.to(self.device).eval()
        self.finder, self.batch_size, self.keep_crops = finder, max(1, batch_size), keep_crops

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: str | Path,
        detector: str | PersonFinder | None = None,
        device: str | torch.device = "auto",
        dataset: str = "",
        **options,
    ) -> PosePredictor:
        """From a run, checkpoint or export folder (its config and layout) and a detector: a
        torchvision detector's name (its weights from torchvision's cache), or any finder.
        `dataset`: of a model trained on several, predict that one's joints ("": the union's)."""
        trained = load_trained_model(checkpoint).as_dataset(dataset)
        device = pick_device(device) if isinstance(device, str) else device
        if isinstance(detector, str):
            from pose.inference.detector import PersonDetector

            detector = PersonDetector(detector, device=device)
        return cls(trained, detector, device, **options)

    def __call__(
        self, images: Sequence[np.ndarray], boxes: Sequence[Boxes] | None = None
    ) -> list[list[Person]]:
        """The people of each BGR image: in `boxes` (one (N, 4 or 5) array per image) when
        given, else where the finder finds them."""
        if boxes is None:
            if self.finder is None:
                raise ValueError("no person boxes and no detector: give boxes or a finder")
            boxes = self.finder(images)
        boxes = [as_boxes(b) for b in boxes]
        crops, to_image = [], []
        for image, image_boxes in zip(images, boxes, strict=True):
            image_crops, inverses = crop_boxes(image, image_boxes, self.cfg.data.image_size)
            crops += image_crops
            to_image += inverses
        if not crops:
            return [[] for _ in images]
        keypoints, maps = self._keypoints(crops, np.stack(to_image))
        people, start = [], 0
        for image_boxes in boxes:
            end = start + len(image_boxes)
            people.append(
                [
                    self._person(b, keypoints[i], crops, maps, i)
                    for i, b in enumerate(image_boxes, start)
                ]
            )
            start = end
        return people

    def _keypoints(self, crops: list[np.ndarray], to_image: np.ndarray):
        """Keypoints (N, K, 3) in image pixels of the crops, `batch_size` at a time, and the
        attention maps when kept."""
        rgb = torch.from_numpy(np.stack([c[:, :, ::-1] for c in crops]).copy())
        flip = self.layout.flip_permutation if self.cfg.eval.flip_test else None
        heatmaps, maps = [], []
        with torch.no_grad():
            for start in range(0, len(crops), self.batch_size):
                chunk = normalise(rgb[start : start + self.batch_size].to(self.device))
                got, attention = predict_heatmaps(
                    self.model, chunk, flip, self.cfg.data, return_attention=True
                )
                heatmaps.append(got)
                maps.append(attention if self.keep_crops else {})
        keypoints, _ = image_keypoints(
            torch.cat(heatmaps), torch.from_numpy(to_image), self.cfg.eval.decode, self.cfg.data
        )
        merged = {k: torch.cat([m[k] for m in maps]).float().cpu().numpy() for k in maps[0]}
        return keypoints.cpu().numpy(), merged

    def _person(self, box, keypoints, crops, maps, i) -> Person:
        box_score = float(box[4])
        score = person_score(keypoints, box_score, self.cfg.eval.keypoint_thr)
        person = Person(box[:4].copy(), box_score, keypoints, score)
        if self.keep_crops:
            person.crop, person.attention = crops[i], {k: v[i] for k, v in maps.items()}
        return person


def as_boxes(boxes) -> Boxes:
    """(N, 5) float boxes from (N, 4) or (N, 5) ones (a missing score is 1)."""
    array = np.asarray(boxes, dtype=np.float64)
    if array.size == 0:
        return np.zeros((0, 5))
    if array.ndim != 2:
        raise ValueError(f"boxes are a list of x, y, w, h[, score]; got shape {array.shape}")
    if array.shape[1] == 4:
        array = np.concatenate([array, np.ones((len(array), 1))], axis=1)
    if array.shape[1] != 5:
        raise ValueError(f"boxes are x, y, w, h[, score]; got {array.shape[1]} values a box")
    return array


def whole_image_boxes(images: Sequence[np.ndarray]) -> list[Boxes]:
    """One box over each whole image (`--whole-image`: one person filling each)."""
    return [np.array([[0.0, 0.0, im.shape[1], im.shape[0], 1.0]]) for im in images]


def pick_device(name: str) -> torch.device:
    """`auto`: the first GPU when torch sees one, else the CPU; otherwise as named."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"--device '{name}': {e}") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: torch sees no CUDA GPU here")
    return device
