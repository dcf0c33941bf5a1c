"""A trained model for inference, the one way: eval, predict, export and the sweep's pictures
turn a `--checkpoint` (a run folder, a checkpoint folder inside one, a state-dict file, or an
export folder) into the config it was trained with, its keypoint layout and the model with
its weights.

The config is the one given (a file or a shipped name such as `demo`), else the run's or the
export's own config; a checkpoint with neither is an error, never the built-in defaults.
`model.pretrained` is left out: the checkpoint holds every weight, and the backbone file a run
started from may be gone (only a training that starts fresh loads it)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from torch import nn

from pose.config import Config, load_config
from pose.data.layout import KeypointLayout
from pose.engine.checkpoint import layout_to_use, owning_folders, resolve_checkpoint
from pose.engine.errors import CheckpointError
from pose.folders import ExportFolder, RunFolder
from pose.models import build_model
from pose.models.weights import load_model_weights


@dataclass
class TrainedModel:
    cfg: Config
    layout: KeypointLayout
    model: nn.Module  # in eval mode, on the CPU
    weights: Path  # the file its weights came from


def run_config(checkpoint: str | Path) -> Path | None:
    """The config file that belongs to a checkpoint: its export folder's or its run folder's."""
    for folder in owning_folders(checkpoint):
        for owner in (ExportFolder(folder), RunFolder(folder)):
            if owner.config.is_file():
                return owner.config
    return None


def load_trained_model(
    checkpoint: str | Path,
    config: str | Config | None = None,
    overrides: list[str] = (),
    layout: str | KeypointLayout | None = None,
) -> TrainedModel:
    """The model of `checkpoint` with its weights; its config (`config` when given: a file, a
    shipped name or a loaded Config) with `overrides`; its layout (`layout` when given: a
    layout, a preset name or a file)."""
    if isinstance(config, Config):
        cfg = replace(config, model=replace(config.model, pretrained=""))
    else:
        source = config or run_config(checkpoint)
        if source is None:
            raise CheckpointError(
                f"'{checkpoint}' has no config in its run or export folder: name the "
                "config it was trained with (--config FILE, or a shipped name such as demo)"
            )
        kept = [o for o in overrides if not o.startswith("model.pretrained=")]
        cfg = load_config(source, [*kept, "model.pretrained="])
    if not isinstance(layout, KeypointLayout):
        layout = layout_to_use(checkpoint, layout)
    model = build_model(cfg.model, layout.num_joints)
    weights = resolve_checkpoint(checkpoint)
    load_model_weights(model, weights)
    return TrainedModel(cfg, layout, model.eval(), weights)
