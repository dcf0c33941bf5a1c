"""The keypoint layout of a dataset: joint names, left/right flip pairs, OKS sigmas, the skeleton
drawn in pictures, the upper-body joints of half-body augmentation, per-joint loss weights and
colours. Everything sized by the joints asks the layout, never a constant.

A layout comes from the data: sharding takes it from the annotation file's person category (a
built-in preset when the joint names match one, else derived from the names and the category's
skeleton) or from `--layout` (a preset name or a YAML file), and records it in the manifest;
loaders, the model head, the loss, decoding, the flip test, NMS, scoring and pictures read it
from there. Presets live in `pose/data/layouts/*.yaml`, each citing where its numbers come from;
a custom layout is a YAML file of the same form (only `joints` is required).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from pose.config import ConfigError, read_yaml_mapping

PRESETS = Path(__file__).parent / "layouts"
# OKS sigma for joints of a layout that gives none: the mean of COCO's 17 (0.0669). AP computed
# with it is not comparable with published numbers for that dataset; a warning says so.
DEFAULT_SIGMA = 0.067
LEFT, RIGHT, MIDDLE = (0, 140, 255), (255, 120, 0), (60, 200, 60)  # BGR: orange, blue, green
_UPPER_WORDS = ("head", "eye", "ear", "nose", "neck", "shoulder", "elbow", "wrist", "hand", "face")
_UPPER_WORDS += ("mouth", "chin", "thorax", "finger", "thumb")


class LayoutError(ConfigError):
    """A keypoint layout is malformed or does not fit the data; the message names the source."""


@dataclass(frozen=True)
class KeypointLayout:
    name: str
    joints: tuple[str, ...]
    flip_pairs: tuple[tuple[int, int], ...]  # (left, right) joint indices
    sigmas: tuple[float, ...]  # per-joint OKS constants
    skeleton: tuple[tuple[int, int], ...]  # joint index pairs drawn as limbs
    upper_body: tuple[int, ...]  # joints of the upper half (half-body augmentation)
    joint_weights: tuple[float, ...] = ()  # per-joint loss weights; () = all 1
    sigmas_known: bool = True  # False: DEFAULT_SIGMA stands in for the dataset's own
    source: str = field(default="", compare=False)  # where it was read from, for messages

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

    @property
    def weights(self) -> tuple[float, ...]:
        return self.joint_weights or (1.0,) * self.num_joints

    def colour(self, joint: int) -> tuple[int, int, int]:
        """BGR: the left joint of a flip pair orange, the right one blue, others green."""
        for left, right in self.flip_pairs:
            if joint == left:
                return LEFT
            if joint == right:
                return RIGHT
        return MIDDLE

    def check(self) -> KeypointLayout:
        """Itself, or a LayoutError naming what does not fit together."""
        n, where = self.num_joints, f"layout '{self.name}' ({self.source or 'built'})"
        problems = []
        if n == 0 or len(set(self.joints)) != n:
            problems.append("joint names must be given and distinct")
        if len(self.sigmas) != n or not all(s > 0 for s in self.sigmas):
            problems.append(
                f"{n} positive sigmas are needed, one per joint; {len(self.sigmas)} given"
                + ("" if all(s > 0 for s in self.sigmas) else ", not all positive")
            )
        if self.joint_weights and len(self.joint_weights) != n:
            problems.append(f"{len(self.joint_weights)} joint weights for {n} joints")
        paired = [j for pair in self.flip_pairs for j in pair]
        if len(set(paired)) != len(paired) or any(a == b for a, b in self.flip_pairs):
            problems.append("a joint is in two flip pairs, or paired with itself")
        indices = paired + [j for pair in self.skeleton for j in pair] + list(self.upper_body)
        if any(not 0 <= j < n for j in indices):
            problems.append("an index is out of range")
        if problems:
            raise LayoutError(f"{where}: " + "; ".join(problems))
        return self

    def to_json(self) -> dict:
        """Names rather than indices, as in the YAML files; `from_json` reads it back."""
        name = self.joints.__getitem__
        data = {
            "name": self.name,
            "joints": list(self.joints),
            "flip_pairs": [[name(a), name(b)] for a, b in self.flip_pairs],
            "sigmas": list(self.sigmas),
            "skeleton": [[name(a), name(b)] for a, b in self.skeleton],
            "upper_body": [name(j) for j in self.upper_body],
            "sigmas_known": self.sigmas_known,
        }
        if self.joint_weights:
            data["joint_weights"] = list(self.joint_weights)
        return data

    @classmethod
    def from_json(cls, data: dict, source: str = "") -> KeypointLayout:
        """A layout from its JSON/YAML form; only `joints` is required: flip pairs follow from
        left/right names, sigmas default to DEFAULT_SIGMA, upper-body joints from names."""
        where = f"layout {source or 'data'}"
        if not isinstance(data, dict) or not _strings(data.get("joints")):
            raise LayoutError(f"{where}: 'joints' must be a list of joint names")
        unknown = set(data) - set(_FIELDS)
        if unknown:
            raise LayoutError(f"{where}: unknown keys {sorted(unknown)}; known: {list(_FIELDS)}")
        joints = tuple(data["joints"])
        index = _indexer(joints, where)
        flips = flip_pairs_from_names(joints)
        if "flip_pairs" in data:
            flips = _pairs(data["flip_pairs"], index)
        upper = upper_body_from_names(joints)
        if "upper_body" in data:
            upper = tuple(index(j) for j in data["upper_body"])
        layout = cls(
            name=str(data.get("name") or Path(source).stem or "custom"),
            joints=joints,
            flip_pairs=flips,
            sigmas=_floats(data.get("sigmas", [DEFAULT_SIGMA] * len(joints)), where, "sigmas"),
            skeleton=_pairs(data.get("skeleton", []), index),
            upper_body=upper,
            joint_weights=_floats(data.get("joint_weights", []), where, "joint_weights"),
            sigmas_known=bool(data.get("sigmas_known", "sigmas" in data)),
            source=source,
        )
        return layout.check()


_FIELDS = ("name", "joints", "flip_pairs", "sigmas", "skeleton", "upper_body", "joint_weights")
_FIELDS += ("sigmas_known",)


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS.glob("*.yaml"))


def preset(name: str) -> KeypointLayout:
    path = PRESETS / f"{name}.yaml"
    if not path.is_file():
        raise LayoutError(f"no built-in layout '{name}'; built in: {', '.join(preset_names())}")
    return _read_yaml(path, source=f"preset {name}")


def load_layout(spec: str) -> KeypointLayout:
    """A preset by name, or a layout YAML file by path."""
    if spec in preset_names():
        return preset(spec)
    path = Path(spec)
    if not path.is_file():
        raise LayoutError(
            f"'{spec}' is neither a built-in layout ({', '.join(preset_names())}) nor a file"
        )
    return _read_yaml(path, source=str(path))


def normalised(name: str) -> str:
    """A joint name compared without case, spaces, hyphens or underscores standing apart:
    'Right Shoulder', 'right-shoulder' and 'RIGHT_SHOULDER' are all 'right_shoulder'."""
    return re.sub(r"[\s_\-]+", "_", name.strip().lower()).strip("_")


def describe(layout: KeypointLayout) -> str:
    """One line on a layout: name, joints, flip pairs, whether its OKS sigmas are known."""
    sigmas = "its own OKS sigmas" if layout.sigmas_known else f"OKS sigma {DEFAULT_SIGMA} each"
    return (
        f"'{layout.name}' ({layout.num_joints} joints, {len(layout.flip_pairs)} flip pairs, "
        f"{len(layout.skeleton)} skeleton links, {sigmas})"
    )


def choose_layout(category: dict, requested: str, source: str) -> tuple[KeypointLayout, list]:
    """The layout of the person category of annotation file `source`, and notes for the user.
    `requested` is `auto` (a preset whose joint names match, case, spaces and hyphens aside;
    else one derived from the names and the category's skeleton) or a preset name or layout
    file, whose joint names must match the category's (a few differing names are noted, more
    are refused)."""
    joints = tuple(category.get("keypoints") or ())
    if not joints or not all(isinstance(j, str) for j in joints):
        raise LayoutError(
            f"the person category of '{source}' names no keypoints ('keypoints': "
            f"{category.get('keypoints')!r}); a keypoint dataset lists its joint names there"
        )
    if requested != "auto":
        return _checked_against(load_layout(requested), joints, source)
    same_size = [preset(name) for name in preset_names() if preset(name).num_joints == len(joints)]
    for candidate in same_size:
        if not _differing(candidate.joints, joints):
            if candidate.joints == joints:
                return candidate, []
            return candidate, [
                f"joint names match preset '{candidate.name}' up to case, spaces and hyphens"
            ]
    notes = [
        f"the joints nearly match preset '{candidate.name}' ({_list(differ)}); not taken: pass "
        f"--layout {candidate.name} if they are the same joints"
        for candidate in same_size
        if len(differ := _differing(candidate.joints, joints)) <= _few(len(joints))
    ]
    layout, derived_notes = _derived(category, joints, source)
    return layout, notes + derived_notes


def _derived(category: dict, joints: tuple[str, ...], source: str) -> tuple[KeypointLayout, list]:
    skeleton, notes = _skeleton(category, len(joints))
    data = {"name": f"custom{len(joints)}", "joints": list(joints)}
    data["skeleton"] = [[joints[a], joints[b]] for a, b in skeleton]
    layout = KeypointLayout.from_json(data, source or "the person category")
    if not layout.flip_pairs:
        notes.append(
            "no joint names read as left/right: flip augmentation and the flip test swap nothing"
        )
    notes.append(unknown_sigmas_note(layout))
    return layout, notes


def _skeleton(category: dict, num_joints: int) -> tuple[list[tuple[int, int]], list[str]]:
    """The category's skeleton as 0-based links: COCO writes it 1-based; a link to joint 0
    shows a 0-based one. Any link out of range means it was written for other joints (COCO's
    17-joint skeleton on a 14-joint category, say): then none is used, with a note."""
    links = category.get("skeleton") or []
    pairs = [link for link in links if isinstance(link, list) and len(link) == 2]
    pairs = [(a, b) for a, b in pairs if isinstance(a, int) and isinstance(b, int)]
    if not pairs:
        return [], []
    zero_based = any(0 in pair for pair in pairs)
    shifted = [(a, b) if zero_based else (a - 1, b - 1) for a, b in pairs]
    notes = ["the category's skeleton is 0-based (it links joint 0): read as such"] * zero_based
    if len(pairs) != len(links) or any(not 0 <= j < num_joints for pair in shifted for j in pair):
        top = max(j for pair in pairs for j in pair)
        notes.append(
            f"the category's skeleton does not fit its {num_joints} joints ({len(links)} links, "
            f"joint numbers up to {top}: written for other joints); no limbs are drawn; give a "
            "skeleton in a layout file (--layout)"
        )
        return [], notes
    return shifted, notes


def _checked_against(layout: KeypointLayout, joints: tuple[str, ...], source: str):
    where = f"layout '{layout.name}' ({layout.source})"
    if layout.num_joints != len(joints):
        raise LayoutError(
            f"{where} has {layout.num_joints} joints, the person category of '{source}' "
            f"{len(joints)}: {', '.join(joints)}"
        )
    differ = _differing(layout.joints, joints)
    notes = []
    if len(differ) > _few(len(joints)):
        raise LayoutError(
            f"{where} does not name the joints of the person category of '{source}': "
            f"{len(differ)} of {len(joints)} differ ({_list(differ)}); give the layout of this "
            "dataset, or --layout auto"
        )
    if differ:
        notes.append(f"{where} differs from the category's joint names: {_list(differ)}; used")
    if not layout.sigmas_known:
        notes.append(unknown_sigmas_note(layout))
    return layout, notes


def _differing(layout_joints, joints) -> list[tuple[int, str, str]]:
    """(index, the data's name, the layout's) where the normalised names differ."""
    return [
        (i, theirs, ours)
        for i, (ours, theirs) in enumerate(zip(layout_joints, joints))
        if normalised(ours) != normalised(theirs)
    ]


def _few(num_joints: int) -> int:
    """How many names may differ between a layout and a category that are still the same joints
    under other names (CrowdPose's 'head' for 'top_head')."""
    return max(2, num_joints // 10)


def _list(differ: list[tuple[int, str, str]], shown: int = 3) -> str:
    parts = [
        f"joint {i}: '{theirs}' in the data, '{ours}' in the layout" for i, theirs, ours in differ
    ]
    more = f"; {len(differ) - shown} more" if len(differ) > shown else ""
    return "; ".join(parts[:shown]) + more


def save_layout(layout: KeypointLayout, path: Path) -> None:
    """Write a layout as a YAML file `load_layout` reads back."""
    import yaml

    from pose.files import atomic_write

    text = yaml.safe_dump(layout.to_json(), default_flow_style=None, sort_keys=False, width=100)
    atomic_write(path, text)


def one_layout(found: dict[str, KeypointLayout], configured: str = "") -> KeypointLayout:
    """The layout that every source in `found` (where -> layout) has, and that `configured` (a
    preset or file; "" = any) names; a LayoutError naming both sides where they differ."""
    (first_where, first), *others = found.items()
    for where, other in others:
        if other.joints != first.joints:
            differ = next(
                (i for i, (a, b) in enumerate(zip(first.joints, other.joints)) if a != b), None
            )
            detail = (
                f"; joint {differ} is '{first.joints[differ]}' in one, '{other.joints[differ]}' "
                "in the other"
                if differ is not None
                else ""
            )
            raise LayoutError(
                f"{first_where} has keypoint layout '{first.name}' ({first.num_joints} joints), "
                f"{where} '{other.name}' ({other.num_joints}){detail}: they must be the same"
            )
        for what in ("sigmas", "flip_pairs", "skeleton"):
            if getattr(other, what) != getattr(first, what):
                raise LayoutError(
                    f"{first_where} and {where} have the same joints but different {what} in "
                    f"their layouts ('{first.name}', '{other.name}'): one set of shards would be "
                    "trained or scored with the other's; shard both with the same --layout"
                )
    if configured:
        wanted = load_layout(configured)
        if wanted.joints != first.joints:
            raise LayoutError(
                f"config key 'data.layout': '{wanted.name}' ({wanted.num_joints} joints) is not "
                f"the layout of {first_where}, '{first.name}' ({first.num_joints} joints)"
            )
    return first


def unknown_sigmas_note(layout: KeypointLayout) -> str:
    return (
        f"keypoint layout '{layout.name}' ({layout.num_joints} joints) has no OKS sigmas of "
        f"its own: every joint uses {DEFAULT_SIGMA} (the mean of COCO's), so its AP is not "
        "comparable with published numbers; give sigmas in a layout file (--layout)"
    )


# A left/right marker before the name or after it; its twin is the same name with the other.
_LEFT_MARKERS = (re.compile(r"^(left|l)[_\-]"), re.compile(r"[_\-](left|l)$"))


def flip_pairs_from_names(joints: tuple[str, ...]) -> tuple[tuple[int, int], ...]:
    """(left, right) index pairs of joints whose names differ only in a left/right marker:
    `left_`/`right_` or `l_`/`r_` before the name, or `_left`/`_right`, `_l`/`_r` after it,
    in any letter case and with spaces or hyphens for the underscore ('Right Shoulder',
    'Right-ankle')."""
    names = [normalised(name) for name in joints]
    index = {name: i for i, name in enumerate(names)}
    pairs = []
    for i, name in enumerate(names):
        for marker in _LEFT_MARKERS:
            match = marker.search(name)
            if not match:
                continue
            word = match.group(1)
            twin_word = {"left": "right", "l": "r"}[word]
            start, end = match.span(1)
            twin = name[:start] + twin_word + name[end:]
            if twin in index and index[twin] != i:
                pairs.append((i, index[twin]))
                break
    return tuple(pairs)


def upper_body_from_names(joints: tuple[str, ...]) -> tuple[int, ...]:
    """Joints whose names name a part above the hips (head, face, arms, hands)."""
    return tuple(i for i, name in enumerate(joints) if any(w in name.lower() for w in _UPPER_WORDS))


def _read_yaml(path: Path, source: str) -> KeypointLayout:
    try:
        data = read_yaml_mapping(path, what="layout file")
    except ConfigError as e:
        raise LayoutError(str(e)) from None
    return KeypointLayout.from_json(data, source=source)


def _strings(value) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, str) for v in value)


def _indexer(joints: tuple[str, ...], where: str):
    positions = {name: i for i, name in enumerate(joints)}

    def index(name) -> int:
        if name not in positions:
            raise LayoutError(f"{where}: '{name}' is not one of its joints")
        return positions[name]

    return index


def _pairs(pairs, index) -> tuple[tuple[int, int], ...]:
    if not isinstance(pairs, list) or not all(isinstance(p, list) and len(p) == 2 for p in pairs):
        raise LayoutError("flip_pairs and skeleton are lists of [joint, joint] pairs")
    return tuple((index(a), index(b)) for a, b in pairs)


def _floats(values, where: str, key: str) -> tuple[float, ...]:
    ok = isinstance(values, list) and all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in values
    )
    if not ok:
        raise LayoutError(f"{where}: '{key}' must be a list of numbers")
    return tuple(float(v) for v in values)


COCO_17 = preset("coco17")
