"""A synthetic dataset in exactly the COCO person-keypoints format, for the demo and the tests.

People are drawn from a small 3-D kinematic model (17 COCO joints, joint angles in plausible
ranges) seen from any direction around the vertical axis, so that left and right can be told
apart the way they are in photos, and still after a mirror: the side turned away from the camera
is shaded darker, front views show a face (eyes, nose, mouth), back views show hair, and the feet
point where the body faces. Several people per image overlap and get truncated at the border, so
visibility flags 0, 1 and 2 all occur. Every image is drawn from its own seeded generator: the
output depends only on the seed and the sizes.

`--layout aic14` annotates the same kind of people in AI Challenger's 14 joints (its order and
names): the 12 body joints, the neck (the base of the drawn neck) and the head top (the top of
the drawn head): a second dataset of another layout, for training on several at once.

    python -m data_prep.synthetic --out data/demo --seed 0 --train-images 1500 --val-images 300
    python -m data_prep.synthetic --out data/demo_aic --seed 1 --layout aic14
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from pose.data.coco import PERSON_CATEGORY
from pose.data.layout import COCO_17, preset
from pose.files import atomic_write

SPLITS = {"train": 0, "val": 1}  # split -> index in the seed sequence and image id block
IMAGE_ID_BLOCK = 1_000_000
MIN_KEYPOINT_HEIGHT = 48  # people smaller than this (px) get no keypoints, as in COCO
KEYPOINT_NAMES = COCO_17.joints
J = {name: i for i, name in enumerate(KEYPOINT_NAMES)}
FACE = KEYPOINT_NAMES[:5]  # hidden when the head is turned away

# Body parts, in body-frame units of the person's height. Each part lists the joints whose
# keypoints it may cover while they still count as visible.
PARTS = (
    "torso",
    "head",
    "neck",
    "l_upper_arm",
    "l_forearm",
    "r_upper_arm",
    "r_forearm",
    "l_thigh",
    "l_shin",
    "r_thigh",
    "r_shin",
    "l_foot",
    "r_foot",
    "l_hand",
    "r_hand",
    "collar",  # the V of the neckline, on the front of the torso only
)
P = {name: i for i, name in enumerate(PARTS)}
KEYPOINT_PARTS = {
    "nose": ("head",),
    "left_eye": ("head",),
    "right_eye": ("head",),
    "left_ear": ("head",),
    "right_ear": ("head",),
    "left_shoulder": ("torso", "l_upper_arm", "neck"),
    "right_shoulder": ("torso", "r_upper_arm", "neck"),
    "left_elbow": ("l_upper_arm", "l_forearm"),
    "right_elbow": ("r_upper_arm", "r_forearm"),
    "left_wrist": ("l_forearm", "l_hand"),
    "right_wrist": ("r_forearm", "r_hand"),
    "left_hip": ("torso", "l_thigh"),
    "right_hip": ("torso", "r_thigh"),
    "left_knee": ("l_thigh", "l_shin"),
    "right_knee": ("r_thigh", "r_shin"),
    "left_ankle": ("l_shin", "l_foot"),
    "right_ankle": ("r_shin", "r_foot"),
}
OWNER_STRIDE = 32  # owner map value = person * OWNER_STRIDE + part


@dataclass
class Person:
    joints3d: np.ndarray  # (17, 3) body frame: x = person's left, y = down, z = forward
    extra3d: dict[str, np.ndarray]  # non-keypoint points: neck, head centre, hands, toes
    yaw: float  # 0: facing the camera, pi: back to the camera
    roll: float  # in-plane tilt
    height_px: float
    center: np.ndarray  # pelvis position in the image
    colors: dict[str, np.ndarray]
    head_radius: float
    limb_width: dict[str, float]
    sleeves_long: bool


# ------------------------------------------------------------------------------------------
# The kinematic model
# ------------------------------------------------------------------------------------------


def _direction(abduction: float, flexion: float, side: float) -> np.ndarray:
    """Unit vector: hanging straight down, swung outward (abduction) and forward (flexion)."""
    return np.array(
        [
            side * np.sin(abduction) * np.cos(flexion),
            np.cos(abduction) * np.cos(flexion),
            np.sin(flexion),
        ]
    )


def sample_person(rng: np.random.Generator, height_px: float, center: np.ndarray) -> Person:
    deg = np.deg2rad
    k = np.zeros((17, 3))
    sw = rng.uniform(0.11, 0.14)  # half shoulder width
    hw = rng.uniform(0.08, 0.10)  # half hip width
    lean = rng.uniform(-deg(12), deg(12))  # upper body pitch forward/back
    shoulder_y = -0.30
    for side, name in ((1.0, "left"), (-1.0, "right")):
        k[J[f"{name}_shoulder"]] = (side * sw, shoulder_y, 0.0)
        k[J[f"{name}_hip"]] = (side * hw, 0.0, 0.0)
        abduction = rng.uniform(deg(-10), deg(110))
        upper = _direction(abduction, rng.uniform(deg(-30), deg(75)), side)
        bend = rng.uniform(0.0, deg(110))  # the elbow bends forward, from the upper arm
        fore = _direction(
            abduction + rng.uniform(deg(-35), deg(35)),
            np.arcsin(np.clip(upper[2], -1, 1)) + bend,
            side,
        )
        k[J[f"{name}_elbow"]] = k[J[f"{name}_shoulder"]] + 0.17 * upper
        k[J[f"{name}_wrist"]] = k[J[f"{name}_elbow"]] + 0.15 * fore
        hip_flex = rng.uniform(deg(-15), deg(55))
        thigh = _direction(rng.uniform(deg(-5), deg(25)), hip_flex, side)
        shin = _direction(rng.uniform(deg(-8), deg(15)), hip_flex - rng.uniform(0, deg(75)), side)
        k[J[f"{name}_knee"]] = k[J[f"{name}_hip"]] + 0.24 * thigh
        k[J[f"{name}_ankle"]] = k[J[f"{name}_knee"]] + 0.23 * shin
    # Lean the upper body about the pelvis (rotation about the body's x axis).
    c, s = np.cos(lean), np.sin(lean)
    pitch = np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    upper_body = [J[n] for n in KEYPOINT_NAMES[:11]]
    r = rng.uniform(0.060, 0.072)
    head = np.array([rng.uniform(-0.02, 0.02), -0.43, rng.uniform(-0.01, 0.02)])
    neck = np.array([0.0, -0.33, 0.0])
    face = {
        "nose": head + (0.0, 0.005, r),
        "left_eye": head + (0.35 * r, -0.25 * r, 0.88 * r),
        "right_eye": head + (-0.35 * r, -0.25 * r, 0.88 * r),
        "left_ear": head + (r, 0.0, -0.1 * r),
        "right_ear": head + (-r, 0.0, -0.1 * r),
    }
    for name, point in face.items():
        k[J[name]] = point
    extra = {"head": head, "neck": neck, "head_top": head + (0.0, -r, 0.0)}
    k[upper_body] = k[upper_body] @ pitch.T
    extra = {name: point @ pitch.T for name, point in extra.items()}
    for name in ("left", "right"):
        wrist, elbow = k[J[f"{name}_wrist"]], k[J[f"{name}_elbow"]]
        extra[f"{name}_hand"] = wrist + 0.045 * (wrist - elbow) / np.linalg.norm(wrist - elbow)
        extra[f"{name}_toe"] = k[J[f"{name}_ankle"]] + (0.0, 0.02, 0.075)
    return Person(
        joints3d=k,
        extra3d=extra,
        yaw=_sample_yaw(rng),
        roll=rng.normal(0.0, deg(6)),
        height_px=height_px,
        center=center,
        colors=_sample_colors(rng),
        head_radius=r,
        limb_width={
            "upper_arm": rng.uniform(0.045, 0.06),
            "forearm": rng.uniform(0.035, 0.045),
            "thigh": rng.uniform(0.07, 0.085),
            "shin": rng.uniform(0.05, 0.06),
            "torso_depth": rng.uniform(0.08, 0.11),
        },
        sleeves_long=bool(rng.random() < 0.5),
    )


def _sample_yaw(rng: np.random.Generator) -> float:
    """Which way a person faces, spread as in photos of people: mostly toward the camera, some
    with their back to it, a few from any side (profiles). Left and right are told apart by the
    facing (face or hair, the neckline, the shaded far side), so it must be clear most of the
    time; every view still occurs."""
    kind = rng.choice(3, p=[0.65, 0.2, 0.15])
    if kind == 2:
        return float(rng.uniform(-np.pi, np.pi))
    toward = 0.0 if kind == 0 else np.pi
    return float(np.angle(np.exp(1j * (toward + rng.normal(0.0, np.deg2rad(30))))))


def _sample_colors(rng: np.random.Generator) -> dict[str, np.ndarray]:
    skin_tones = np.array([[60, 90, 140], [90, 130, 190], [120, 165, 220], [55, 80, 125]])
    skin = skin_tones[rng.integers(len(skin_tones))] + rng.normal(0, 8, 3)
    return {
        "skin": skin,
        "shirt": rng.uniform(30, 230, 3),
        "pants": rng.uniform(20, 200, 3),
        "shoes": rng.uniform(10, 80, 3),
        "hair": rng.uniform(5, 55, 3) * np.array([0.6, 0.8, 1.0]),
        "stripes": rng.uniform(30, 230, 3) if rng.random() < 0.4 else None,
    }


def project(person: Person, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Image positions (N, 2) and depth toward the camera (N,) of body-frame points."""
    cy, sy = np.cos(person.yaw), np.sin(person.yaw)
    x = points[:, 0] * cy + points[:, 2] * sy
    depth = points[:, 2] * cy - points[:, 0] * sy
    cr, sr = np.cos(person.roll), np.sin(person.roll)
    xy = np.stack([x * cr - points[:, 1] * sr, x * sr + points[:, 1] * cr], axis=1)
    return person.center + person.height_px * xy, depth


# ------------------------------------------------------------------------------------------
# Drawing
# ------------------------------------------------------------------------------------------


def _shade(color: np.ndarray, depth: float) -> tuple[float, ...]:
    """The side turned away from the camera is darker."""
    factor = 0.78 + 0.3 * float(np.clip(depth / 0.12, -1.0, 1.0))
    return tuple(float(c) for c in np.clip(color * factor, 0, 255))


def _person_parts(person: Person) -> list[tuple[float, str, object]]:
    """(depth, part, draw(mask, offset, scale) -> None) for every part of one person."""
    pts3d = {name: person.joints3d[J[name]] for name in KEYPOINT_NAMES}
    pts3d.update(person.extra3d)
    names = list(pts3d)
    xy, depth = project(person, np.stack([pts3d[n] for n in names]))
    p2 = dict(zip(names, xy))
    d = dict(zip(names, depth))
    scale = person.height_px
    w = person.limb_width
    parts = []

    def limb(part: str, a: str, b: str, width: float, color: np.ndarray) -> None:
        depth = 0.5 * (d[a] + d[b])
        parts.append((depth, part, ("limb", p2[a], p2[b], width * scale, _shade(color, depth))))

    for side, s in (("left", "l"), ("right", "r")):
        sleeve = person.colors["shirt"] if person.sleeves_long else person.colors["skin"]
        limb(
            f"{s}_upper_arm",
            f"{side}_shoulder",
            f"{side}_elbow",
            w["upper_arm"],
            person.colors["shirt"],
        )
        limb(f"{s}_forearm", f"{side}_elbow", f"{side}_wrist", w["forearm"], sleeve)
        limb(f"{s}_thigh", f"{side}_hip", f"{side}_knee", w["thigh"], person.colors["pants"])
        limb(f"{s}_shin", f"{side}_knee", f"{side}_ankle", w["shin"], person.colors["pants"])
        limb(f"{s}_foot", f"{side}_ankle", f"{side}_toe", w["shin"] * 0.8, person.colors["shoes"])
        limb(
            f"{s}_hand", f"{side}_wrist", f"{side}_hand", w["forearm"] * 1.1, person.colors["skin"]
        )
    limb("neck", "neck", "head", w["forearm"] * 1.3, person.colors["skin"])
    parts[-1] = (min(d["head"], d["neck"]) - 1.0, *parts[-1][1:])  # under the head and torso
    # The torso is a box with some depth: the hull of its front and back corners.
    corners = np.stack(
        [pts3d[n] for n in ("left_shoulder", "right_shoulder", "right_hip", "left_hip")]
    )
    offset = np.array([0.0, 0.0, w["torso_depth"] / 2])
    hull_xy, _ = project(person, np.concatenate([corners + offset, corners - offset]))
    torso_depth = float(np.mean([d[n] for n in ("left_shoulder", "right_shoulder")]))
    parts.append((torso_depth, "torso", ("poly", hull_xy, _shade(person.colors["shirt"], 0.0))))
    if np.cos(person.yaw) > 0.2:  # the neckline shows from the front: skin in a V
        collar = _collar(pts3d, w["torso_depth"] / 2)
        collar_xy, _ = project(person, collar)
        skin = _shade(person.colors["skin"], 0.0)
        parts.append((torso_depth + 1e-4, "collar", ("poly", collar_xy, skin)))
    parts.append((d["head"], "head", ("head", p2, person)))
    return parts


def _collar(pts3d: dict[str, np.ndarray], front: float) -> np.ndarray:
    """The V of the neckline (3, 3) on the front face of the torso, below the neck."""
    left, right = pts3d["left_shoulder"], pts3d["right_shoulder"]
    chest = 0.65 * (left + right) / 2 + 0.35 * (pts3d["left_hip"] + pts3d["right_hip"]) / 2
    corners = np.stack([left + 0.3 * (right - left), left + 0.7 * (right - left), chest])
    return corners + np.array([0.0, 0.0, front + 0.005])


def _roi(points: np.ndarray, pad: float, shape: tuple[int, int]) -> tuple[slice, slice, np.ndarray]:
    """The image window around `points` (N, 2) grown by `pad`, and its top-left corner."""
    lo = np.floor(points.min(axis=0) - pad - 2).astype(int)
    hi = np.ceil(points.max(axis=0) + pad + 2).astype(int)
    x0, y0 = max(lo[0], 0), max(lo[1], 0)
    x1, y1 = min(hi[0], shape[1]), min(hi[1], shape[0])
    return slice(y0, max(y0, y1)), slice(x0, max(x0, x1)), np.array([x0, y0], float)


def _stamp(canvas, owner, value, window, mask: np.ndarray, color) -> None:
    """Alpha-paint `color` through the anti-aliased `mask` of a window; record the owner."""
    rows, cols = window
    if mask.size == 0:
        return
    alpha = (mask.astype(np.float32) / 255.0)[..., None]
    canvas[rows, cols] = canvas[rows, cols] * (1 - alpha) + np.asarray(color, np.float32) * alpha
    if value is not None:
        owner[rows, cols][mask > 127] = value


def _fixed(points: np.ndarray, origin: np.ndarray, shift: int = 4) -> np.ndarray:
    return np.round((points - origin) * (1 << shift)).astype(np.int32)


def _draw_primitive(canvas: np.ndarray, owner: np.ndarray, value: int, spec: tuple) -> None:
    """Draw one limb or the torso into the image and stamp its owner id where it landed."""
    if spec[0] == "limb":
        _, a, b, width, color = spec
        rows, cols, origin = _roi(np.stack([a, b]), width / 2, owner.shape)
        mask = np.zeros((rows.stop - rows.start, cols.stop - cols.start), np.uint8)
        if mask.size == 0:
            return
        pa, pb = _fixed(np.stack([a, b]), origin)
        cv2.line(
            mask,
            tuple(map(int, pa)),
            tuple(map(int, pb)),
            255,
            max(1, round(width)),
            cv2.LINE_AA,
            4,
        )
    else:
        _, points, color = spec
        rows, cols, origin = _roi(points, 0, owner.shape)
        mask = np.zeros((rows.stop - rows.start, cols.stop - cols.start), np.uint8)
        if mask.size == 0:
            return
        cv2.fillConvexPoly(mask, cv2.convexHull(_fixed(points, origin)), 255, cv2.LINE_AA, 4)
    _stamp(canvas, owner, value, (rows, cols), mask, color)


def _draw_head(canvas: np.ndarray, owner: np.ndarray, value: int, person: Person, p2: dict):
    """Hair everywhere but the face; the face (eyes, nose, mouth) only where it is turned to us."""
    r = person.head_radius * person.height_px
    rows, cols, origin = _roi(p2["head"][None], 1.2 * r, owner.shape)
    shape = (rows.stop - rows.start, cols.stop - cols.start)
    if 0 in shape:
        return
    center = p2["head"] - origin
    head = np.zeros(shape, np.uint8)
    roll = float(np.rad2deg(person.roll))
    cv2.ellipse(
        head,
        _pt(center),
        (max(1, round(r)), max(1, round(r * 1.15))),
        roll,
        0,
        360,
        255,
        -1,
        cv2.LINE_AA,
    )
    _stamp(canvas, owner, value, (rows, cols), head, person.colors["hair"])
    facing, side = np.cos(person.yaw), np.sin(person.yaw)
    if facing <= -0.25:  # the back of the head: hair only
        return
    face = np.zeros(shape, np.uint8)
    face_center = center + np.array([0.45 * r * side, 0.2 * r])
    face_axes = (max(1, round(r * 0.85 * (0.3 + 0.7 * max(facing, 0)))), max(1, round(r)))
    cv2.ellipse(face, _pt(face_center), face_axes, roll, 0, 360, 255, -1, cv2.LINE_AA)
    _stamp(canvas, owner, None, (rows, cols), np.minimum(face, head), person.colors["skin"])
    dark = (25.0, 25.0, 35.0)
    for eye in ("left_eye", "right_eye"):
        if _on_front(person, eye):
            cv2.circle(canvas, _pt(p2[eye]), max(1, round(r * 0.13)), dark, -1, cv2.LINE_AA)
    if _on_front(person, "nose"):
        nose_color = tuple(float(c) for c in person.colors["skin"] * 0.7)
        cv2.circle(canvas, _pt(p2["nose"]), max(1, round(r * 0.16)), nose_color, -1)
        mouth = p2["nose"] + np.array([0.0, 0.45 * r])
        half = np.array([0.25 * r * facing, 0.0])
        cv2.line(
            canvas,
            _pt(mouth - half),
            _pt(mouth + half),
            (40.0, 40.0, 110.0),
            max(1, round(r * 0.08)),
        )


def _pt(p: np.ndarray) -> tuple[int, int]:
    return round(float(p[0])), round(float(p[1]))


def _on_front(person: Person, keypoint: str) -> bool:
    """Whether a face keypoint is on the hemisphere of the head turned toward the camera."""
    head = person.extra3d["head"]
    point = person.joints3d[J[keypoint]]
    _, depth = project(person, np.stack([head, point]))
    return bool(depth[1] > depth[0] + 0.15 * person.head_radius)


# ------------------------------------------------------------------------------------------
# One image
# ------------------------------------------------------------------------------------------


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    t = np.linspace(0, 1, height if rng.random() < 0.5 else width, dtype=np.float32)
    ramp = c0 + (c1 - c0) * t[:, None]
    img = (
        np.repeat(ramp[:, None], width, 1)
        if ramp.shape[0] == height
        else np.repeat(ramp[None], height, 0)
    ).astype(np.float32)
    blobs = rng.normal(0, rng.uniform(5, 30), (rng.integers(3, 9), rng.integers(3, 9), 3))
    img += cv2.resize(blobs.astype(np.float32), (width, height), interpolation=cv2.INTER_CUBIC)
    for _ in range(rng.integers(3, 11)):  # distractor shapes, some limb-like
        color = tuple(float(c) for c in rng.uniform(0, 255, 3))
        kind = rng.integers(4)
        p = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        size = int(rng.integers(8, max(9, min(width, height) // 3)))
        if kind == 0:
            cv2.rectangle(img, p, (p[0] + size, p[1] + int(rng.integers(8, 2 * size))), color, -1)
        elif kind == 1:
            cv2.circle(img, p, size // 2, color, -1, cv2.LINE_AA)
        elif kind == 2:
            q = (p[0] + int(rng.integers(-size, size)), p[1] + int(rng.integers(-size, size)))
            cv2.line(img, p, q, color, int(rng.integers(3, 20)), cv2.LINE_AA)
        else:
            poly = np.array(p) + rng.integers(-size, size, (int(rng.integers(3, 6)), 2))
            cv2.fillPoly(img, [poly.astype(np.int32)], color, cv2.LINE_AA)
    return img


def _sample_people(rng: np.random.Generator, width: int, height: int) -> list[Person]:
    count = int(rng.choice([1, 2, 3, 4], p=[0.4, 0.3, 0.2, 0.1]))
    people = []
    for _ in range(count):
        if rng.random() < 0.1:
            h = rng.uniform(20, MIN_KEYPOINT_HEIGHT)  # small, far away: no keypoints
        else:
            h = float(np.exp(rng.uniform(np.log(0.3 * height), np.log(1.05 * height))))
        if rng.random() < 0.2:  # near or across the border: truncated
            cx = rng.choice([rng.uniform(-0.15, 0.1), rng.uniform(0.9, 1.15)]) * width
            cy = rng.uniform(0.3, 0.9) * height
        else:
            cx = rng.uniform(0.12, 0.88) * width
            cy = rng.uniform(min(0.5 * h, height / 2), max(height - 0.4 * h, height / 2))
        people.append(sample_person(rng, h, np.array([cx, cy])))
    return sorted(people, key=lambda p: p.height_px)  # the larger, the nearer: drawn last


def render_image(
    rng: np.random.Generator, width: int, height: int
) -> tuple[np.ndarray, list[Person], np.ndarray]:
    """Draw one image. Returns it (uint8 BGR), its people and the owner map."""
    canvas = _background(rng, height, width)
    owner = np.full((height, width), -1, np.int32)
    people = _sample_people(rng, width, height)
    for index, person in enumerate(people):
        parts = sorted(_person_parts(person), key=lambda part: part[0])
        for _, part, spec in parts:
            value = index * OWNER_STRIDE + P[part]
            if spec[0] == "head":
                _draw_head(canvas, owner, value, person, spec[1])
            else:
                _draw_primitive(canvas, owner, value, spec)
        if person.colors["stripes"] is not None:
            _stripe(canvas, owner, index, person, rng)
    canvas += rng.normal(0, rng.uniform(2, 7), canvas.shape).astype(np.float32)
    if rng.random() < 0.3:
        canvas = cv2.GaussianBlur(canvas, (0, 0), rng.uniform(0.5, 1.2))
    return np.clip(canvas, 0, 255).astype(np.uint8), people, owner


def _stripe(canvas, owner, index: int, person: Person, rng: np.random.Generator) -> None:
    """A striped shirt: texture over the torso (and long sleeves) of one person."""
    parts = [P["torso"]] + ([P["l_upper_arm"], P["r_upper_arm"]] if person.sleeves_long else [])
    ys, xs = np.nonzero(np.isin(owner, [index * OWNER_STRIDE + p for p in parts]))
    if ys.size == 0:
        return
    period = max(3.0, person.height_px * rng.uniform(0.03, 0.06))
    on = np.sin(ys * (2 * np.pi / period)) > 0.3
    canvas[ys[on], xs[on]] = canvas[ys[on], xs[on]] * 0.4 + person.colors["stripes"] * 0.6


# The layouts a synthetic dataset may be annotated in: per joint, the body-frame point it is
# (a COCO joint's name, or one of the person's other points) and the parts that may cover it
# while it still counts as visible.
AIC_POINTS = {
    **{name: (name, KEYPOINT_PARTS[name]) for name in KEYPOINT_NAMES[5:]},
    "neck": ("neck", ("neck", "torso", "collar", "head")),
    "head_top": ("head_top", ("head",)),
}
LAYOUTS = ("coco17", "aic14")


def layout_joints(layout: str) -> tuple[str, ...]:
    return KEYPOINT_NAMES if layout == "coco17" else preset(layout).joints


def person_category(layout: str) -> dict:
    """The COCO person category of `layout`: its joint names and 1-based skeleton."""
    if layout == "coco17":
        return PERSON_CATEGORY
    chosen = preset(layout)
    skeleton = [[a + 1, b + 1] for a, b in chosen.skeleton]
    return {**PERSON_CATEGORY, "keypoints": list(chosen.joints), "skeleton": skeleton}


def _points(person: Person, layout: str) -> tuple[np.ndarray, list[tuple[str, ...]]]:
    """Body-frame points of `layout`'s joints and the parts that may cover each."""
    if layout == "coco17":
        return person.joints3d, [KEYPOINT_PARTS[name] for name in KEYPOINT_NAMES]
    points, parts = [], []
    for name in preset(layout).joints:
        point, covering = AIC_POINTS[name]
        points.append(person.joints3d[J[point]] if point in J else person.extra3d[point])
        parts.append(covering)
    return np.stack(points), parts


def annotate(person: Person, index: int, owner: np.ndarray, layout: str = "coco17") -> dict | None:
    """COCO annotation of one drawn person in `layout`'s joints, or None if nothing of it is
    visible."""
    height, width = owner.shape
    mask = (owner // OWNER_STRIDE == index) & (owner >= 0)
    ys, xs = np.nonzero(mask)
    if ys.size < 30:
        return None
    x0, y0, x1, y1 = xs.min(), ys.min(), xs.max(), ys.max()
    points, covering = _points(person, layout)
    keypoints = np.zeros((len(points), 3))
    if person.height_px >= MIN_KEYPOINT_HEIGHT:
        xy, _ = project(person, points)
        for j, name in enumerate(layout_joints(layout)):
            x, y = xy[j]
            if not (0 <= x < width and 0 <= y < height):
                continue  # outside the image: not labelled
            own = owner[int(y), int(x)]
            covered_by_own = (
                own // OWNER_STRIDE == index and PARTS[own % OWNER_STRIDE] in covering[j]
            )
            face_hidden = name in FACE and not _on_front(person, name)
            visible = own >= 0 and covered_by_own and not face_hidden
            keypoints[j] = (round(x, 2), round(y, 2), 2 if visible else 1)
    contours, _ = cv2.findContours(
        mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
    )
    polygons = [c.reshape(-1).astype(float).tolist() for c in contours if len(c) >= 3]
    return {
        "segmentation": polygons,
        "num_keypoints": int((keypoints[:, 2] > 0).sum()),
        "area": float(ys.size),
        "iscrowd": 0,
        "keypoints": [float(v) if v % 1 else int(v) for v in keypoints.reshape(-1)],
        "bbox": [float(x0), float(y0), float(x1 - x0 + 1), float(y1 - y0 + 1)],
        "category_id": 1,
    }


def _detections(rng: np.random.Generator, image_id: int, anns: list[dict], size) -> list[dict]:
    """A person detector's output: jittered boxes, some misses, duplicates, false positives."""
    width, height = size
    dets = []
    for ann in anns:
        x, y, w, h = ann["bbox"]
        if rng.random() > (0.93 if ann["area"] > 32 * 32 else 0.6):
            continue
        for duplicate in range(2 if rng.random() < 0.1 else 1):
            jitter = rng.normal(0, 0.06 + 0.06 * duplicate, 4)
            box = [
                x + jitter[0] * w,
                y + jitter[1] * h,
                w * np.exp(jitter[2]),
                h * np.exp(jitter[3]),
            ]
            quality = float(np.exp(-4 * np.abs(jitter).mean()))
            score = np.clip(0.35 + 0.6 * quality + rng.normal(0, 0.05), 0.05, 1.0)
            dets.append(_det(image_id, box, score * (0.6 if duplicate else 1.0)))
    for _ in range(rng.poisson(0.6)):
        w, h = rng.uniform(15, width / 3), rng.uniform(30, height / 2)
        box = [rng.uniform(0, width - w), rng.uniform(0, height - h), w, h]
        dets.append(_det(image_id, box, rng.uniform(0.02, 0.5)))
    return dets


def _det(image_id: int, box: list[float], score: float) -> dict:
    return {
        "image_id": image_id,
        "category_id": 1,
        "bbox": [round(float(v), 2) for v in box],
        "score": round(float(score), 5),
    }


# ------------------------------------------------------------------------------------------
# Splits and the CLI
# ------------------------------------------------------------------------------------------


def generate_split(
    out: Path,
    split: str,
    num_images: int,
    seed: int,
    progress: bool = True,
    layout: str = "coco17",
):
    """Write `num_images` images of one split, its people annotated in `layout`; return (coco
    dict, detections list)."""
    image_dir = out / "images" / split
    image_dir.mkdir(parents=True, exist_ok=True)
    images, annotations, detections = [], [], []
    ann_id = SPLITS[split] * IMAGE_ID_BLOCK * 10
    for i in tqdm(range(num_images), desc=f"synthetic {split}", disable=not progress, unit="img"):
        rng = np.random.default_rng([seed, SPLITS[split], i])
        width, height = int(rng.integers(400, 641)), int(rng.integers(300, 481))
        image, people, owner = render_image(rng, width, height)
        image_id = SPLITS[split] * IMAGE_ID_BLOCK + i + 1
        file_name = f"{image_id:012d}.jpg"
        quality = int(rng.integers(85, 96))
        ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
        assert ok, "cv2 failed to encode a JPEG"
        (image_dir / file_name).write_bytes(jpeg.tobytes())
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        anns = []
        for index, person in enumerate(people):
            ann = annotate(person, index, owner, layout)
            if ann is not None:
                ann_id += 1
                anns.append({"id": ann_id, "image_id": image_id, **ann})
        annotations += anns
        if split == "val":
            detections += _detections(rng, image_id, anns, (width, height))
    coco = {
        "info": {"description": f"posescale synthetic people, split {split}, seed {seed}"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [person_category(layout)],
    }
    return coco, detections


def generate(
    out: Path,
    seed: int,
    train_images: int,
    val_images: int,
    progress: bool = True,
    layout: str = "coco17",
):
    """Write the whole dataset under `out`, annotated in `layout` (LAYOUTS); returns the paths
    of the annotation files."""
    out = Path(out)
    written = {}
    for split, count in (("train", train_images), ("val", val_images)):
        if count <= 0:
            continue
        coco, dets = generate_split(out, split, count, seed, progress, layout)
        path = out / "annotations" / f"person_keypoints_{split}.json"
        atomic_write(path, json.dumps(coco))
        written[split] = path
        if split == "val":
            det_path = out / "annotations" / "person_detections_val.json"
            atomic_write(det_path, json.dumps(dets))
            written["val_dets"] = det_path
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="dataset folder to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-images", type=int, default=1500)
    parser.add_argument("--val-images", type=int, default=300)
    parser.add_argument(
        "--layout", choices=LAYOUTS, default="coco17", help="the joints annotated (default: COCO's)"
    )
    args = parser.parse_args(argv)
    if args.train_images < 0 or args.val_images < 0:
        parser.error("image counts must not be negative")
    start = time.perf_counter()
    written = generate(args.out, args.seed, args.train_images, args.val_images, layout=args.layout)
    seconds = time.perf_counter() - start
    for split, path in written.items():
        if split == "val_dets":
            print(f"{split}: {len(json.loads(path.read_text()))} detections -> {path}")
            continue
        data = json.loads(path.read_text())
        people = sum(a["num_keypoints"] > 0 for a in data["annotations"])
        print(
            f"{split}: {len(data['images'])} images, {len(data['annotations'])} people "
            f"({people} with keypoints) -> {path}"
        )
    total = args.train_images + args.val_images
    print(f"synthetic: {total} images in {seconds:.1f} s ({total / max(seconds, 1e-9):.0f} img/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
