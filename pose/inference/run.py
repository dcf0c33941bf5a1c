"""Prediction over files, as `posescale-predict` runs it: images, folders, globs and videos in,
and out a COCO results JSON (`keypoints.json`), each image drawn (`<name>_pose.png`), each video
drawn (`<name>_pose.mp4`), the attention maps of each person for the attention variants, and an
optional GIF. The people are found one of three ways, which the user chooses: a detector, a
boxes file, or the whole image as one person; never silently."""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from pose.eval.coco_eval import result_record, write_json
from pose.folders import PredictFolder
from pose.inference.boxes import ImageBoxes, image_annotations, read_boxes, unboxed_people
from pose.inference.media import Frame, Source, VideoOut, open_inputs
from pose.inference.predictor import Person, PosePredictor, pick_device, whole_image_boxes
from pose.models.trained import load_trained_model
from pose.viz.attention import attention_panels
from pose.viz.skeleton import draw_people, save_gif


class PredictError(ValueError):
    """The request cannot be carried out as asked; the message says what to give instead."""


NO_WAY_TO_FIND_PEOPLE = (
    "no way to find the people: give --detector NAME (a torchvision detector, e.g. "
    "fasterrcnn_resnet50_fpn_v2), --boxes FILE (person boxes or a COCO detections file), or "
    "--whole-image (one person filling each image)"
)


@dataclass
class PredictRequest:
    checkpoint: str  # a run, checkpoint or export folder, or a state dict (with config, layout)
    inputs: str  # an image, a folder, a glob, a video
    out: Path
    detector: str | None = None  # a torchvision detector's name
    detector_weights: str | None = None  # its weights file (else torchvision's cache)
    boxes: str | None = None  # a boxes or COCO detections file
    whole_image: bool = False
    box_thr: float = 0.3  # boxes scored below are dropped (detector's and file's)
    nms_thr: float = 0.3  # of boxes overlapping by more IoU, the best only
    annotations: str | None = None  # COCO file: image ids, and the people no box found
    config: str | None = None
    layout: str | None = None
    dataset: str = ""  # a model of several datasets: that one's joints ("": the union's)
    overrides: list[str] = field(default_factory=list)
    device: str = "auto"
    batch_size: int = 32  # people per forward pass of the pose model
    frames: int = 8  # images or frames per batch (the detector's batch)
    as_video: bool = False  # a folder or glob of images is one video's frames
    fps: float = 25.0  # of a video made of frames
    limit: int = 0  # only the first N images or frames of each input (0: all)
    gif: bool = False


@dataclass
class PredictResult:
    people: int = 0
    images: int = 0  # images and frames
    without_people: int = 0
    written: list[Path] = field(default_factory=list)


def predict_files(request: PredictRequest) -> PredictResult:
    """Carry out `request`; errors (config, weights, boxes, inputs, detector) raise before
    anything is written."""
    ways = [bool(request.detector), bool(request.boxes), request.whole_image]
    if sum(ways) == 0:
        raise PredictError(NO_WAY_TO_FIND_PEOPLE)
    if sum(ways) > 1:
        raise PredictError("give one of --detector, --boxes and --whole-image")
    trained = load_trained_model(
        request.checkpoint, request.config, request.overrides, request.layout
    ).as_dataset(request.dataset)
    device = pick_device(request.device)
    sources = open_inputs(request.inputs, request.as_video, request.fps)
    finder = _finder(request, sources, device)
    attention = trained.cfg.model.attention != "none"  # its maps are drawn: keep the crops
    predictor = PosePredictor(trained, None, device, request.batch_size, keep_crops=attention)
    folder = PredictFolder(request.out)
    folder.path.mkdir(parents=True, exist_ok=True)
    writer = _Writer(folder, predictor, finder.annotations, request)
    for source in sources:
        writer.source(source, finder)
    write_json(folder.results, writer.records)
    if request.gif and writer.frames:
        save_gif(writer.frames, folder.animation)
        writer.result.written.append(folder.animation)
    writer.result.written.insert(0, folder.results)
    return writer.result


@dataclass
class _Finder:
    """Boxes for a batch of frames, by the way the request chose, and the images' ids and
    annotated people (from --ann or digit file names)."""

    find: object
    annotations: ImageBoxes

    def __call__(self, frames: list[Frame]) -> list[np.ndarray]:
        return self.find(frames)


def _finder(request: PredictRequest, sources: list[Source], device) -> _Finder:
    images = [p for s in sources if s.images for p in s.images]
    annotations = image_annotations(images, request.annotations)
    if request.whole_image:
        return _Finder(lambda frames: whole_image_boxes([f.image for f in frames]), annotations)
    if request.boxes:
        if any(s.video is not None for s in sources):
            raise PredictError("a boxes file names images, not a video's frames: use --detector")
        boxes = read_boxes(
            request.boxes, images, request.box_thr, request.nms_thr, request.annotations
        )
        return _Finder(lambda frames: [boxes.of(f.path) for f in frames], boxes)
    from pose.inference.detector import PersonDetector

    detector = PersonDetector(
        request.detector, request.detector_weights, device, request.box_thr, request.nms_thr
    )
    return _Finder(lambda frames: detector([f.image for f in frames]), annotations)


class _Writer:
    """Turns each batch's people into the outputs: results records, drawn images or video
    frames, attention panels, GIF frames."""

    def __init__(self, folder: PredictFolder, predictor: PosePredictor, annotations, request):
        self.folder, self.predictor, self.annotations = folder, predictor, annotations
        self.request, self.records, self.frames = request, [], []
        self.result = PredictResult()

    def source(self, source: Source, finder: _Finder) -> None:
        video = VideoOut(self.folder.drawn_video(source.name), source.fps)
        total = len(source) if not self.request.limit else min(len(source), self.request.limit)
        batches = source.batches(self.request.frames, self.request.limit)
        shown = tqdm(
            batches,
            total=math.ceil(total / self.request.frames),
            desc=f"predict {source.name}",
            unit="batch",
            disable=total < 2 or not sys.stderr.isatty(),
        )
        try:
            for frames in shown:
                boxes = finder(frames)
                people = self.predictor([f.image for f in frames], boxes)
                for frame, found in zip(frames, people, strict=True):
                    drawn = self._frame(source, frame, found)
                    if source.is_video:
                        video.write(drawn)
        finally:
            video.close()
        if source.is_video and video.writer is not None:
            self.result.written.append(video.path)

    def _frame(self, source: Source, frame: Frame, people: list[Person]) -> np.ndarray:
        cfg, layout = self.predictor.cfg, self.predictor.layout
        self.result.images += 1
        self.result.people += len(people)
        self.result.without_people += not people
        where = {"frame": frame.index} if source.is_video else {"file_name": frame.path.name}
        image_id = frame.index
        if frame.path is not None:
            image_id = self.annotations.image_id(frame.path, frame.index)
        for person in people:
            box = [round(float(v), 2) for v in person.box]
            extra = {"bbox": box, "box_score": round(person.box_score, 4), **where}
            self.records.append(result_record(image_id, person.keypoints, person.score, **extra))
        unboxed = np.zeros((0, 4))
        if frame.path is not None:
            unboxed = unboxed_people(
                self.annotations.truth_of(frame.path), np.array([p.box for p in people])
            )
        drawn = draw_people(frame.image, people, layout, cfg.eval.keypoint_thr, unboxed)
        if not source.is_video:
            path = self.folder.drawn_image(frame.path.stem)
            cv2.imwrite(str(path), drawn)
            self.result.written.append(path)
            self._attention(frame, people)
        if self.request.gif and not any(p.attention for p in people):
            self.frames.append(drawn)
        return drawn

    def _attention(self, frame: Frame, people: list[Person]) -> None:
        for n, person in enumerate(people):
            if person.crop is None:
                continue
            panel = attention_panels(person.crop, person.attention, self.predictor.layout)
            if panel is not None:
                path = self.folder.attention_picture(frame.path.stem, n)
                cv2.imwrite(str(path), panel)
                if self.request.gif:
                    self.frames.append(panel)
