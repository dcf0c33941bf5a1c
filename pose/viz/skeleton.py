"""Drawing keypoints as a skeleton over an image, and heatmaps as a colour overlay."""

from __future__ import annotations

import cv2
import numpy as np

from pose.data.layout import MIDDLE, KeypointLayout


def draw_skeleton(
    image: np.ndarray,
    keypoints: np.ndarray,
    min_score: float = 0.0,
    thickness: int = 2,
    *,
    layout: KeypointLayout,
) -> np.ndarray:
    """A copy of a BGR uint8 image with keypoints (K, 3: x, y, visibility or score) drawn with
    the layout's skeleton; joints whose third value is <= min_score are left out, occluded ones
    (1) drawn hollow."""
    out = image.copy()
    kpts = np.asarray(keypoints, dtype=np.float64)
    shown = kpts[:, 2] > min_score
    for i, j in layout.skeleton:
        if i < len(kpts) and j < len(kpts) and shown[i] and shown[j]:
            side = layout.colour(i)
            colour = side if side == layout.colour(j) else MIDDLE
            cv2.line(out, _pt(kpts[i]), _pt(kpts[j]), colour, thickness, cv2.LINE_AA)
    for i, (x, y, v) in enumerate(kpts):
        if shown[i]:
            filled = -1 if v != 1 else 1
            cv2.circle(out, _pt((x, y)), thickness + 1, layout.colour(i), filled, cv2.LINE_AA)
    return out


def draw_people(
    image: np.ndarray,
    people,
    layout: KeypointLayout,
    min_score: float,
    unboxed: np.ndarray | None = None,
) -> np.ndarray:
    """A copy of a BGR image with each person's box (thin, with its score) and skeleton drawn,
    and each annotated person no box found (`unboxed`, x, y, w, h) framed in red and labelled
    "no box"; an image with nobody says so in its corner."""
    out = image.copy()
    thickness = max(1, round(max(image.shape[:2]) / 400))
    for person in people:
        x, y, w, h = (round(float(v)) for v in person.box)
        cv2.rectangle(out, (x, y), (x + w, y + h), (200, 200, 200), 1, cv2.LINE_AA)
        out = draw_skeleton(out, person.keypoints, min_score, thickness + 1, layout=layout)
    for box in [] if unboxed is None else unboxed:
        x, y, w, h = (round(float(v)) for v in box)
        cv2.rectangle(out, (x, y), (x + w, y + h), (0, 0, 255), thickness, cv2.LINE_AA)
        _label(out, "no box", (x, max(y, 12)))
    if not len(people):
        out = caption(out, "nobody found" if unboxed is None or not len(unboxed) else "no box")
    return out


def _label(image: np.ndarray, text: str, at: tuple[int, int]) -> None:
    cv2.putText(
        image,
        text,
        (at[0] + 2, at[1] - 3),
        cv2.FONT_HERSHEY_SIMPLEX,
        0.45,
        (0, 0, 255),
        1,
        cv2.LINE_AA,
    )


def save_gif(frames: list[np.ndarray], path, fps: float = 2.0) -> None:
    """BGR frames (any sizes: padded to the largest) as a looping GIF."""
    from PIL import Image  # pillow comes with matplotlib and torchvision

    height = max(f.shape[0] for f in frames)
    width = max(f.shape[1] for f in frames)
    padded = [
        cv2.copyMakeBorder(f, 0, height - f.shape[0], 0, width - f.shape[1], cv2.BORDER_CONSTANT)
        for f in frames
    ]
    pictures = [Image.fromarray(f[:, :, ::-1]) for f in padded]
    pictures[0].save(
        path, save_all=True, append_images=pictures[1:], duration=int(1000 / fps), loop=0
    )


def overlay_heatmap(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """A BGR image with a [0, 1] heatmap (any size) blended over it in the jet colour map."""
    h, w = image.shape[:2]
    scaled = cv2.resize(
        np.clip(heatmap, 0, 1).astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR
    )
    colour = cv2.applyColorMap((scaled * 255).astype(np.uint8), cv2.COLORMAP_JET)
    return cv2.addWeighted(image, 1 - alpha, colour, alpha, 0)


def caption(image: np.ndarray, text: str) -> np.ndarray:
    """A copy of `image` with `text` in its top-left corner, white on a dark strip."""
    out = image.copy()
    scale = 0.35 if image.shape[1] < 160 else 0.45
    (w, h), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    cv2.rectangle(out, (0, 0), (w + 6, h + 7), (0, 0, 0), -1)
    cv2.putText(
        out, text, (3, h + 3), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA
    )
    return out


def tile(images: list[np.ndarray], columns: int) -> np.ndarray:
    """Images of one size in a grid, row by row (blank cells at the end)."""
    h, w = images[0].shape[:2]
    rows = -(-len(images) // columns)
    grid = np.zeros((rows * h, columns * w, 3), np.uint8)
    for n, img in enumerate(images):
        r, c = divmod(n, columns)
        grid[r * h : (r + 1) * h, c * w : (c + 1) * w] = img
    return grid


def _pt(p) -> tuple[int, int]:
    return round(float(p[0])), round(float(p[1]))


def to_bgr(image) -> np.ndarray:
    """A normalised (3, H, W) RGB tensor back to a uint8 BGR image."""
    import torch

    from pose.data.loader import IMAGENET_MEAN, IMAGENET_STD

    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    rgb = (image.float().cpu() * std + mean).clamp(0, 1).mul(255).byte()
    return np.ascontiguousarray(rgb.permute(1, 2, 0).numpy()[:, :, ::-1])
