"""A trained model for inference, the one way: eval, predict, export and the sweep's pictures
turn a `--checkpoint` (a run folder, a checkpoint folder inside one, a state-dict file, or an
export folder; pose.folders.resolve_trained works out which) into the config it was trained
with, its keypoint layout and the model with its weights.

The config is the one given (a file or a shipped name such as `demo`), else the run's or the
export's own; a checkpoint with neither is an error, never the built-in defaults.
`model.pretrained` is left out: the checkpoint holds every weight, and the backbone file a run
started from may be gone (only a training that starts fresh loads it)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from torch import nn

from pose.config import Config, load_config
from pose.data.layout import KeypointLayout, load_layout
from pose.data.union import UnionLayout, load_union
from pose.folders import TrainedFiles, TrainedModelError, resolve_trained
from pose.models.build import build_model
from pose.models.dataset_heads import DatasetView
from pose.models.weights import load_model_weights


@dataclass
class TrainedModel:
    cfg: Config
    layout: KeypointLayout
    model: nn.Module  # in eval mode, on the CPU
    files: TrainedFiles  # what the checkpoint resolved to
    union: UnionLayout | None = None  # trained on several datasets: each one's joints in layout

    @property
    def weights(self) -> Path:
        """The file the weights came from."""
        return self.files.weights

    def as_dataset(self, name: str) -> TrainedModel:
        """A model trained on several datasets as dataset `name`'s: its joints, its layout, its
        head (with model.heads=per_dataset); without a name, the union (each joint the mean of
        the heads that predict it)."""
        if not name:
            return self
        if self.union is None:
            raise TrainedModelError(
                f"'{self.files.given}' was trained on one dataset: there is no dataset '{name}' "
                "to choose"
            )
        names = self.union.names
        if name not in names:
            raise TrainedModelError(
                f"'{self.files.given}' was trained on the datasets {names}; '{name}' is not one"
            )
        index = names.index(name)
        part = self.union.parts[index]
        view = DatasetView(self.model, index, part.to_union).eval()
        return TrainedModel(self.cfg, part.layout, view, self.files, None)


def load_trained_model(
    checkpoint: str | Path | TrainedFiles,
    config: str | Config | None = None,
    overrides: list[str] = (),
    layout: str | KeypointLayout | None = None,
) -> TrainedModel:
    """The model of `checkpoint` with its weights; its config (`config` when given: a file, a
    shipped name or a loaded Config) with `overrides`; its layout (`layout` when given: a
    layout, a preset name or a file)."""
    files = checkpoint if isinstance(checkpoint, TrainedFiles) else resolve_trained(checkpoint)
    cfg = trained_config(files, config, overrides)
    if not isinstance(layout, KeypointLayout):
        layout = trained_layout(files, layout)
    union = load_union(files.union) if files.union is not None else None
    if union is not None and union.layout.joints != layout.joints:
        raise TrainedModelError(
            f"'{files.given}': its union of datasets ({files.union}) is not over the joints of "
            f"the layout it is used with, '{layout.name}' ({layout.num_joints} joints)"
        )
    if cfg.model.heads == "per_dataset" and union is None:
        raise TrainedModelError(
            f"'{files.given}' has one head per dataset (model.heads=per_dataset) but no union "
            "layout in its run or export folder (union.yaml) saying which joints each predicts"
        )
    model = build_model(cfg.model, layout.num_joints, dataset_channels(union))
    load_model_weights(model, files.weights)
    return TrainedModel(cfg, layout, model.eval(), files, union)


def dataset_channels(union: UnionLayout | None) -> tuple[tuple[int, ...], ...]:
    """Each dataset's channels in a union model (what per-dataset heads are built from)."""
    return () if union is None else tuple(part.to_union for part in union.parts)


def trained_config(
    files: TrainedFiles, config: str | Config | None = None, overrides: list[str] = ()
) -> Config:
    """The config to use with a trained model: `config` (a file, a shipped name or a Config)
    with `overrides`, else the one its folder recorded; pretrained weights left out."""
    if isinstance(config, Config):
        return replace(config, model=replace(config.model, pretrained=""))
    if config is None and files.config is None:
        raise TrainedModelError(
            f"'{files.given}' has no config in its run or export folder: name the config it "
            "was trained with (--config FILE, or a shipped name such as demo)"
        )
    kept = [o for o in overrides if not o.startswith("model.pretrained=")]
    return load_config(config or files.config, [*kept, "model.pretrained="], config is None)


def trained_layout(files: TrainedFiles, override: str | None = None) -> KeypointLayout:
    """The layout to predict or export with: `override` (a preset or file) when given, else the
    one its folder recorded; an error for a checkpoint without one (a plain state dict)."""
    if override:
        return load_layout(override)
    if files.layout is None:
        raise TrainedModelError(
            f"'{files.given}' has no keypoint layout in its run or export folder (a plain state "
            "dict): name the joints its heatmaps are, --layout coco17 (a preset) or a file"
        )
    return load_layout(str(files.layout))
