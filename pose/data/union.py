"""The union of several datasets' keypoint layouts, for one model trained on all of them.

Joints are matched by name with the comparison layout detection uses (`normalised`: case,
spaces and hyphens aside) and a short table of names the field writes for the same joint
(CrowdPose's 'top_head' is AIC's and MPII's 'head_top'); a file may say otherwise (`read_matching`).
COCO-17 and AIC-14 share their 12 body joints; the union is COCO's 17 and AIC's neck and head top.

The union's joints are the first dataset's in its order, then each further dataset's joints
that no earlier one has, in their order. Its flip pairs, skeleton links and upper-body joints
are those of the parts, mapped; each joint's OKS sigma and loss weight are those of the first
dataset that has it. A model over the union has one heatmap channel per union joint; each
dataset annotates only its own joints, and the others are unknown for its samples (weight 0
in the loss, never scored against it). Evaluation takes each dataset's channels back out
(`DatasetPart.to_union`) and scores them in its own layout with its own sigmas.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pose.config import ConfigError, read_yaml_mapping
from pose.data.layout import KeypointLayout, LayoutError, normalised

# Names different datasets give the same joint (normalised), each to the name it is matched as.
SAME_JOINT = {
    "top_head": "head_top",
    "headtop": "head_top",
    "top_of_head": "head_top",
}


def matched_name(name: str) -> str:
    """The name a joint is matched under: normalised, then through SAME_JOINT."""
    key = normalised(name)
    return SAME_JOINT.get(key, key)


@dataclass(frozen=True)
class DatasetPart:
    """One dataset in a union: its name, its own layout, and the union joint of each of its
    joints."""

    name: str
    layout: KeypointLayout
    to_union: tuple[int, ...]

    @property
    def channels(self) -> np.ndarray:
        """The union channels of this dataset's joints, in its order (int64)."""
        return np.asarray(self.to_union, dtype=np.int64)


@dataclass(frozen=True)
class UnionLayout:
    """The union layout and the datasets it is made of."""

    layout: KeypointLayout
    parts: tuple[DatasetPart, ...]

    @property
    def names(self) -> list[str]:
        return [part.name for part in self.parts]

    def part(self, name: str) -> DatasetPart:
        for part in self.parts:
            if part.name == name:
                return part
        raise ConfigError(f"no dataset '{name}' in the union; its datasets: {self.names}")

    def known(self, index: int) -> np.ndarray:
        """A boolean mask over the union's joints: those dataset `index` annotates."""
        mask = np.zeros(self.layout.num_joints, bool)
        mask[list(self.parts[index].to_union)] = True
        return mask

    def table(self) -> str:
        """The mapping for review: one row per union joint, the name each dataset gives it
        ('-': the dataset does not annotate it)."""
        columns = [self.layout.joints] + [
            [_name_of(part, u) for u in range(self.layout.num_joints)] for part in self.parts
        ]
        header = ["union joint", *self.names]
        widths = [max(len(h), *(len(v) for v in col)) for h, col in zip(header, columns)]
        rows = [header, *zip(*columns)]
        lines = ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in rows]
        shared = sum(
            all(u in part.to_union for part in self.parts) for u in range(self.layout.num_joints)
        )
        lines.append(f"{self.layout.num_joints} union joints; {shared} annotated by every dataset")
        return "\n".join(lines)

    def to_json(self) -> dict:
        """The union and its parts (each with its whole layout), as `from_json` reads back."""
        return {
            "union": self.layout.to_json(),
            "datasets": [
                {"name": p.name, "layout": p.layout.to_json(), "to_union": list(p.to_union)}
                for p in self.parts
            ],
        }

    @classmethod
    def from_json(cls, data: dict, source: str = "") -> UnionLayout:
        where = f"union layout {source or 'data'}"
        try:
            layout = KeypointLayout.from_json(data["union"], source)
            parts = tuple(
                DatasetPart(
                    str(p["name"]),
                    KeypointLayout.from_json(p["layout"], f"{source} {p['name']}"),
                    tuple(int(u) for u in p["to_union"]),
                )
                for p in data["datasets"]
            )
        except (KeyError, TypeError, ValueError) as e:
            raise LayoutError(f"{where} is malformed: {e!r}") from None
        for part in parts:
            if len(part.to_union) != part.layout.num_joints or not all(
                0 <= u < layout.num_joints for u in part.to_union
            ):
                raise LayoutError(f"{where}: dataset '{part.name}' maps outside the union")
        return cls(layout, parts)


def _name_of(part: DatasetPart, union_joint: int) -> str:
    if union_joint in part.to_union:
        return part.layout.joints[part.to_union.index(union_joint)]
    return "-"


def read_matching(path: str | Path) -> dict[str, dict[str, str | None]]:
    """A matching file: for each dataset (by its name in `data.datasets`), its joints that are
    another union joint than their names say, or a joint of their own (null):

        crowdpose: {head: head_top}     # CrowdPose's 'head' is the union's head_top
        mpii: {upper_neck: neck, thorax: null}
    """
    data = read_yaml_mapping(path, what="joint matching file")
    for dataset, joints in data.items():
        if not isinstance(joints, dict) or not all(
            isinstance(k, str) and (v is None or isinstance(v, str)) for k, v in joints.items()
        ):
            raise ConfigError(
                f"joint matching file '{path}': '{dataset}' must map joint names to a union "
                "joint's name or null"
            )
    return data


def union_of(
    layouts: dict[str, KeypointLayout],
    matching: dict[str, dict[str, str | None]] | None = None,
    source: str = "",
) -> UnionLayout:
    """The union of `layouts` (dataset name -> its layout, in order), with `matching` (as
    `read_matching` reads it; `source` names its file in messages) deciding where it says."""
    matching = matching or {}
    unknown = set(matching) - set(layouts)
    if unknown:
        raise ConfigError(
            f"joint matching file '{source}' names datasets {sorted(unknown)} that the run does "
            f"not have ({list(layouts)})"
        )
    joints: list[str] = []  # the union's, named as the first dataset that has them
    by_name: dict[str, int] = {}
    parts = []
    for name, layout in layouts.items():
        rules = {normalised(k): v for k, v in matching.get(name, {}).items()}
        stray = set(rules) - {normalised(j) for j in layout.joints}
        if stray:
            raise ConfigError(
                f"joint matching file '{source}': dataset '{name}' has no joints "
                f"{sorted(stray)}; its joints: {', '.join(layout.joints)}"
            )
        to_union = []
        for joint in layout.joints:
            rule = rules.get(normalised(joint), "")
            if rule is None:  # a joint of its own, whatever its name
                key = f"{name}:{normalised(joint)}"
            elif rule:
                key = matched_name(rule)
                if key not in by_name:
                    raise ConfigError(
                        f"joint matching file '{source}': '{joint}' of dataset '{name}' is "
                        f"matched to '{rule}', which no earlier dataset has; union joints so "
                        f"far: {', '.join(joints)}"
                    )
            else:
                key = matched_name(joint)
            if key in by_name and by_name[key] in to_union:
                raise LayoutError(
                    f"dataset '{name}' ({layout.name}) has two joints matched to union joint "
                    f"'{joints[by_name[key]]}'; say which is which in a joint matching file"
                )
            if key not in by_name:
                by_name[key] = len(joints)
                joints.append(joint if joint not in joints else f"{name}_{joint}")
            to_union.append(by_name[key])
        parts.append(DatasetPart(name, layout, tuple(to_union)))
    return UnionLayout(_union_layout(joints, parts), tuple(parts))


def _union_layout(joints: list[str], parts: list[DatasetPart]) -> KeypointLayout:
    count = len(joints)
    sigma_from = [None] * count  # (part, joint) whose sigma a union joint takes
    weights = [None] * count
    flips, skeleton, upper = [], [], set()
    for part in parts:
        layout, u = part.layout, part.to_union
        for j, union_joint in enumerate(u):
            taken = sigma_from[union_joint]
            if taken is None or (layout.sigmas_known and not taken[0].sigmas_known):
                sigma_from[union_joint] = (layout, j)
            if weights[union_joint] is None and layout.joint_weights:
                weights[union_joint] = layout.joint_weights[j]
        for a, b in layout.flip_pairs:
            pair = (u[a], u[b])
            if pair not in flips and pair[::-1] not in flips:
                flips.append(pair)
        for a, b in layout.skeleton:
            link = (u[a], u[b])
            if link not in skeleton and link[::-1] not in skeleton:
                skeleton.append(link)
        upper.update(u[j] for j in layout.upper_body)
    weighted = any(w is not None for w in weights)
    union = KeypointLayout(
        name="+".join(part.layout.name for part in parts),
        joints=tuple(joints),
        flip_pairs=tuple(flips),
        sigmas=tuple(layout.sigmas[j] for layout, j in sigma_from),
        skeleton=tuple(skeleton),
        upper_body=tuple(sorted(upper)),
        joint_weights=tuple(1.0 if w is None else w for w in weights) if weighted else (),
        sigmas_known=all(part.layout.sigmas_known for part in parts),
        source="the union of " + ", ".join(part.name for part in parts),
    )
    try:
        return union.check()
    except LayoutError as e:
        raise LayoutError(
            f"{e}: the datasets' flip pairs disagree once matched; say which joints are the "
            "same in a joint matching file (data.joint_matching)"
        ) from None


def save_union(union: UnionLayout, path: Path) -> None:
    """Write a union as YAML (atomically), as `load_union` reads it back."""
    import yaml

    from pose.files import atomic_write

    atomic_write(path, yaml.safe_dump(union.to_json(), default_flow_style=None, sort_keys=False))


def load_union(path: str | Path) -> UnionLayout:
    try:
        data = read_yaml_mapping(path, what="union layout file")
    except ConfigError as e:
        raise LayoutError(str(e)) from None
    return UnionLayout.from_json(data, source=str(path))


def union_of_datasets(data, layouts: dict[str, KeypointLayout]) -> UnionLayout:
    """The union of the run's datasets' `layouts` (name -> layout), matched as
    `data.joint_matching` (a DataConfig's) says where it is given."""
    matching = read_matching(data.joint_matching) if data.joint_matching else None
    return union_of(layouts, matching, data.joint_matching)
