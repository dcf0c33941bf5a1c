"""The keypoint layout of a dataset: joint names, left/right flip pairs, OKS sigmas, the skeleton
drawn in pictures and the upper-body joints of half-body augmentation. Everything sized by the
joints asks the layout, never a constant."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np


@dataclass(frozen=True)
class KeypointLayout:
    name: str
    joints: tuple[str, ...]
    flip_pairs: tuple[tuple[int, int], ...]  # (left, right) joint indices
    sigmas: tuple[float, ...]  # per-joint OKS constants
    skeleton: tuple[tuple[int, int], ...]  # 0-based joint index pairs
    upper_body: tuple[int, ...]  # joints of the upper half (half-body augmentation)

    @property
    def num_joints(self) -> int:
        return len(self.joints)

    @cached_property
    def flip_permutation(self) -> np.ndarray:
        """Joint order after a horizontal flip: left and right swapped."""
        permutation = np.arange(self.num_joints)
        for left, right in self.flip_pairs:
            permutation[left], permutation[right] = right, left
        permutation.flags.writeable = False
        return permutation

    @cached_property
    def upper_body_mask(self) -> np.ndarray:
        """A boolean mask over the joints: True for the upper body."""
        mask = np.zeros(self.num_joints, bool)
        mask[list(self.upper_body)] = True
        mask.flags.writeable = False
        return mask


def flip_pairs_from_names(joints: tuple[str, ...]) -> tuple[tuple[int, int], ...]:
    """Index pairs (left, right) of joints named `left_*` / `right_*`."""
    index = {name: i for i, name in enumerate(joints)}
    return tuple(
        (i, index["right_" + name[5:]])
        for i, name in enumerate(joints)
        if name.startswith("left_") and "right_" + name[5:] in index
    )


def _pairs(text: str, base: int = 1) -> tuple[tuple[int, int], ...]:
    """'16-14 14-12' -> ((15, 13), (13, 11)) for 1-based pairs as COCO writes them."""
    return tuple(tuple(int(v) - base for v in pair.split("-")) for pair in text.split())


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


_COCO_JOINTS = _words(
    "nose left_eye right_eye left_ear right_ear left_shoulder right_shoulder left_elbow "
    "right_elbow left_wrist right_wrist left_hip right_hip left_knee right_knee left_ankle "
    "right_ankle"
)

# COCO person keypoints: names and skeleton from the categories block of the COCO annotation
# files; sigmas from the COCO keypoint evaluation (pycocotools cocoeval.py, kpt_oks_sigmas).
COCO_17 = KeypointLayout(
    name="coco17",
    joints=_COCO_JOINTS,
    flip_pairs=flip_pairs_from_names(_COCO_JOINTS),
    sigmas=tuple(
        float(s) / 10
        for s in _words(".26 .25 .25 .35 .35 .79 .79 .72 .72 .62 .62 1.07 1.07 .87 .87 .89 .89")
    ),
    skeleton=_pairs(
        "16-14 14-12 17-15 15-13 12-13 6-12 7-13 6-7 6-8 7-9 8-10 9-11 2-3 1-2 1-3 2-4 3-5 4-6 5-7"
    ),
    upper_body=tuple(range(11)),  # face, shoulders, elbows, wrists
)
