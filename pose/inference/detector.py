"""Finding the people: a torchvision detection model trained on COCO (Faster R-CNN, RetinaNet,
FCOS, SSD), chosen by name, whose person boxes above a score threshold and after box NMS are
what the pose model crops. Its weights come from a local file, or from torchvision's own
download and cache (`TORCH_HOME`, which posescale keeps under its cache folder); offline and not
cached, the error names the file to fetch and where to put it."""

from __future__ import annotations

import urllib.error
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torchvision

from pose.inference.boxes import filter_boxes

DEFAULT_DETECTOR = "fasterrcnn_resnet50_fpn_v2"  # 46.7 box AP on COCO val2017 (torchvision)
# mmpose's demo defaults for its person detector
DEFAULT_SCORE_THR, DEFAULT_NMS_THR = 0.3, 0.3


class DetectorError(ValueError):
    """A detector that is not known, or whose weights cannot be had; the message says how."""


def detector_names() -> list[str]:
    """torchvision's detection models whose COCO weights know a person class."""
    names = torchvision.models.list_models(module=torchvision.models.detection)
    return [n for n in names if "person" in _weights(n).meta["categories"]]


class PersonDetector:
    """BGR images -> their person boxes, (N, 5) x, y, w, h, score each, best first: the boxes
    the model scores at least `score_thr`, and of boxes overlapping by IoU above `nms_thr` only
    the best. The images of a call are one batch on `device`."""

    def __init__(
        self,
        name: str = DEFAULT_DETECTOR,
        weights: str | Path | None = None,
        device: str | torch.device = "cpu",
        score_thr: float = DEFAULT_SCORE_THR,
        nms_thr: float = DEFAULT_NMS_THR,
    ):
        known = detector_names()
        if name not in known:
            raise DetectorError(f"no torchvision detector '{name}'; known: {', '.join(known)}")
        self.name, self.score_thr, self.nms_thr = name, score_thr, nms_thr
        self.device = torch.device(device)
        published = _weights(name)
        self.person = published.meta["categories"].index("person")
        model = torchvision.models.get_model(name, weights=None, weights_backbone=None)
        model.load_state_dict(
            read_weights(Path(weights), name) if weights else download_weights(published)
        )
        self.model = model.eval().to(self.device)

    def __call__(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        if not images:
            return []
        tensors = [
            torch.from_numpy(np.ascontiguousarray(im[:, :, ::-1])).to(self.device) for im in images
        ]
        with torch.no_grad():
            outputs = self.model([t.permute(2, 0, 1).float() / 255 for t in tensors])
        return [self._person_boxes(out) for out in outputs]

    def _person_boxes(self, output: dict) -> np.ndarray:
        people = output["labels"] == self.person
        corners = output["boxes"][people].double().cpu().numpy()
        scores = output["scores"][people].double().cpu().numpy()
        boxes = np.concatenate([corners[:, :2], corners[:, 2:] - corners[:, :2]], axis=1)
        return filter_boxes(np.column_stack([boxes, scores]), self.score_thr, self.nms_thr)


def read_weights(path: Path, name: str) -> dict[str, torch.Tensor]:
    """A detector's state dict from a local file (as torchvision publishes it), tensors only."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise DetectorError(f"--detector-weights: no file '{path}'") from None
    except Exception as e:  # not a torch file, a pickle that would run code, truncated
        raise DetectorError(f"--detector-weights '{path}' is not {name}'s weights: {e}") from None
    if not isinstance(state, dict):
        raise DetectorError(f"--detector-weights '{path}' holds no state dict of {name}")
    return state


def fetch_detector_weights(name: str) -> Path:
    """Download a detector's published weights into torchvision's cache (once; the
    `posescale-fetch-weights --detector NAME` command), and return the file."""
    if name not in detector_names():
        raise DetectorError(
            f"no torchvision detector '{name}'; known: {', '.join(detector_names())}"
        )
    published = _weights(name)
    download_weights(published)
    return cached_file(published)


def cached_file(published) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(published.url).name


def download_weights(published) -> dict[str, torch.Tensor]:
    """torchvision's published weights, from its cache or downloaded into it."""
    cached = cached_file(published)
    try:
        return published.get_state_dict(progress=False, check_hash=True)
    except (urllib.error.URLError, OSError, RuntimeError) as e:
        reason = getattr(e, "reason", None) or e
        raise DetectorError(
            f"the detector's weights are not on this machine and cannot be downloaded "
            f"({reason}): fetch {published.url} and put it at {cached}, or give "
            "--detector-weights FILE"
        ) from None


def _weights(name: str):
    return torchvision.models.get_model_weights(name).DEFAULT
