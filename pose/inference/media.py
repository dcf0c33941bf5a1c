"""What prediction reads and writes: images (a file, a folder, a glob) and videos (a file, or a
folder of frames taken as one), read in batches of frames; a drawn video written frame by frame.
Videos go through OpenCV (its wheels bring FFmpeg), already a dependency for JPEG coding and the
crops' warps."""

from __future__ import annotations

import glob
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"}


@dataclass
class Frame:
    image: np.ndarray  # BGR uint8
    index: int  # position in its source: the image's, or the video's frame number
    path: Path | None  # the image file (None for a video's frame)


@dataclass
class Source:
    """Images, or the frames of one video (a video file, or a folder of frames `as_video`)."""

    name: str  # what output files are named after
    images: list[Path] | None = None
    video: Path | None = None
    fps: float = 25.0
    frames_of_a_video: bool = False  # images that are a video's frames

    @property
    def is_video(self) -> bool:
        return self.video is not None or self.frames_of_a_video

    def __len__(self) -> int:
        if self.images is not None:
            return len(self.images)
        capture = cv2.VideoCapture(str(self.video))
        try:
            return max(0, int(capture.get(cv2.CAP_PROP_FRAME_COUNT)))
        finally:
            capture.release()

    def batches(self, size: int, limit: int = 0) -> Iterator[list[Frame]]:
        """The frames in lists of `size` (the first `limit`; 0: all). An image that does not
        read is skipped, saying so on stderr."""
        frames = self._video_frames() if self.video is not None else self._image_frames()
        batch = []
        for n, frame in enumerate(frames):
            if limit and n >= limit:
                break
            batch.append(frame)
            if len(batch) == size:
                yield batch
                batch = []
        if batch:
            yield batch

    def _image_frames(self) -> Iterator[Frame]:
        for index, path in enumerate(self.images):
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is None:
                print(f"predict: skipped '{path}': not a readable image", file=sys.stderr)
                continue
            yield Frame(image, index, path)

    def _video_frames(self) -> Iterator[Frame]:
        capture = cv2.VideoCapture(str(self.video))
        try:
            index = 0
            while True:
                ok, image = capture.read()
                if not ok:
                    return
                yield Frame(image, index, None)
                index += 1
        finally:
            capture.release()


def open_inputs(spec: str, as_video: bool = False, fps: float = 25.0) -> list[Source]:
    """The sources `spec` names: an image, a video file, a folder of images (with `as_video`:
    the frames of one video, in name order), or a glob of images."""
    path = Path(spec)
    if any(c in spec for c in "*?[") and not path.exists():
        files = sorted(Path(p) for p in glob.glob(spec))
        images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
        videos = [p for p in files if p.suffix.lower() in VIDEO_SUFFIXES]
        if not images and not videos:
            raise FileNotFoundError(f"no image or video matches '{spec}'")
        return _images(images, Path(spec).stem.strip("*?[]") or "frames", as_video, fps) + [
            video_source(v) for v in videos
        ]
    if path.is_dir():
        images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise FileNotFoundError(f"no image ({', '.join(sorted(IMAGE_SUFFIXES))}) in '{path}'")
        return _images(images, path.name, as_video, fps)
    if path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES:
        return [video_source(path)]
    if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
        return _images([path], path.stem, False, fps)
    if path.is_file():
        raise FileNotFoundError(f"'{path}' is neither an image nor a video (by its suffix)")
    raise FileNotFoundError(f"no image, video, folder or glob at '{spec}'")


def video_source(path: Path) -> Source:
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            raise FileNotFoundError(f"'{path}' does not open as a video")
        fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    finally:
        capture.release()
    return Source(path.stem, video=path, fps=fps)


def _images(images: list[Path], name: str, as_video: bool, fps: float) -> list[Source]:
    return [Source(name, images=images, fps=fps, frames_of_a_video=as_video)]


class VideoOut:
    """A drawn video, written frame by frame (MPEG-4 in an .mp4), sized by its first frame."""

    def __init__(self, path: Path, fps: float):
        self.path, self.fps, self.writer = path, fps, None

    def write(self, image: np.ndarray) -> None:
        if self.writer is None:
            h, w = image.shape[:2]
            fourcc = cv2.VideoWriter_fourcc(*"mp4v")
            self.writer = cv2.VideoWriter(str(self.path), fourcc, self.fps, (w, h))
            if not self.writer.isOpened():
                raise OSError(f"cannot write a video at '{self.path}' (OpenCV's mp4v writer)")
        self.writer.write(image)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()
