"""Evaluation of a run that trains on several datasets (`data.datasets`): each val set scored in
its own layout, with its own OKS sigmas and annotations, the union model's channels for its
joints taken back out (its own head, with model.heads=per_dataset), and the metrics reported per
dataset, as a table, and flat: every metric as `NAME/AP` and so on, and the dataset named by
`eval.best_by` (default: the first) unprefixed as the run's AP. A run of one dataset is the same
with one val set and no prefixes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

from pose.config import DataConfig
from pose.data.layout import KeypointLayout
from pose.data.loader import Loader
from pose.eval.coco_eval import METRIC_NAMES
from pose.eval.evaluate import ceiling_note, print_metrics
from pose.models.dataset_heads import DatasetView


@dataclass
class ValSet:
    """One val set of a run: `name` ("" for a run's only dataset), its index in data.datasets,
    its loader, its data config as if it were the run's only dataset (its val annotations), and
    its joints' channels in the model's heatmaps (None: the model's heatmaps are its joints)."""

    name: str
    index: int
    loader: Loader
    data: DataConfig
    channels: tuple[int, ...] | None = None

    @property
    def layout(self) -> KeypointLayout:
        return self.loader.layout

    def view(self, model: nn.Module) -> nn.Module:
        """The model as this dataset's: heatmaps of its joints, in its order."""
        if self.channels is None:
            return model
        return DatasetView(model, self.index, self.channels)

    def results_path(self, path: Path | None) -> Path | None:
        """Where its COCO results go, beside `path` (the run's): results_NAME.json."""
        if path is None or not self.name:
            return path
        return path.with_name(f"{path.stem}_{self.name}{path.suffix}")


def best_set(val_sets: list[ValSet], best_by: str) -> ValSet:
    """The val set whose AP is the run's: `best_by`'s, else the first."""
    for val_set in val_sets:
        if val_set.name == best_by:
            return val_set
    return val_sets[0]


def combined_metrics(per_set: dict[str, dict], best_by: str) -> dict:
    """One flat dict: the `best_by` dataset's metrics unprefixed, every dataset's as NAME/KEY
    (a single unnamed val set: its own metrics)."""
    if list(per_set) == [""]:
        return dict(per_set[""])
    best = best_by if best_by in per_set else next(iter(per_set))
    combined = dict(per_set[best])
    for name, metrics in per_set.items():
        combined.update({f"{name}/{key}": value for key, value in metrics.items()})
    return combined


def split_metrics(combined: dict) -> dict[str, dict]:
    """`combined_metrics` taken apart: each dataset's metrics by its name (a run of one
    dataset: {"": its metrics})."""
    per_set: dict[str, dict] = {}
    for key, value in combined.items():
        name, slash, metric = key.partition("/")
        if slash:
            per_set.setdefault(name, {})[metric] = value
    return per_set or ({"": dict(combined)} if combined else {})


def datasets_table(per_set: dict[str, dict]) -> str:
    """A Markdown table: one row per dataset, AP to ARl and the instances scored."""
    names = [n for n in METRIC_NAMES if any(n in m for m in per_set.values())]
    head = "| dataset | " + " | ".join(names) + " | instances |"
    rule = "|---|" + "---|" * (len(names) + 1)
    rows = [
        f"| {name} | "
        + " | ".join(f"{m[n]:.3f}" if n in m else "-" for n in names)
        + f" | {m.get('instances', '-')} |"
        for name, m in per_set.items()
    ]
    return "\n".join([head, rule, *rows])


def print_per_dataset(
    per_set: dict[str, dict],
    data: DataConfig,
    best: str,
    program: str,
    heatmap_pixels: tuple[int, int] | None = None,
) -> None:
    """Each val set's metrics (named, with several) and its ceiling note, then, with several,
    the table and which dataset's AP is the run's (`best`)."""
    for name, metrics in per_set.items():
        if name:
            print(f"dataset {name}:")
        print_metrics(metrics)
        note = ceiling_note(metrics, data, heatmap_pixels)
        if note:
            print(f"{program}: note: {note}", flush=True)
    if len(per_set) > 1:
        print(f"{datasets_table(per_set)}\n(the run's AP: {best}'s)", flush=True)
