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
from pose.folders import TrainedFiles, TrainedModelError, resolve_trained
from pose.models.build import build_model
from pose.models.weights import load_model_weights


@dataclass
class TrainedModel:
    cfg: Config
    layout: KeypointLayout
    model: nn.Module  # in eval mode, on the CPU
    files: TrainedFiles  # what the checkpoint resolved to

    @property
    def weights(self) -> Path:
        """The file the weights came from."""
        return self.files.weights


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
    model = build_model(cfg.model, layout.num_joints)
    load_model_weights(model, files.weights)
    return TrainedModel(cfg, layout, model.eval(), files)


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
