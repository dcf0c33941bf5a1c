"""Evaluating a checkpoint as `posescale-eval` does: its config (the one given, else the
checkpoint's own), the val shards of that config on every rank, the model whose layout must be
the shards', COCO AP on rank 0 and, on request, the metrics and COCO results as JSON and a
picture of val people. Runs as one process or under torchrun (each rank evaluates its part)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from pose.config import Config, ConfigError, load_config
from pose.data.backends import build_loader
from pose.data.codec import HeatmapCodec, heatmap_size
from pose.data.layout import load_layout, one_layout
from pose.data.loader import Loader, LoaderSpec
from pose.distributed import DistEnv, init_distributed, leave_group
from pose.eval.coco_eval import write_json
from pose.eval.evaluate import (
    ceiling_note,
    check_ground_truth,
    evaluate,
    ground_truth_predictor,
    model_predictor,
    print_metrics,
)
from pose.folders import resolve_trained
from pose.models.trained import load_trained_model
from pose.viz.panels import prediction_panel


@dataclass
class EvalRequest:
    config: str | None = None  # a file or shipped name; None: the checkpoint's own
    checkpoint: str | None = None  # None: the ground truth through the codec instead
    overrides: list[str] = field(default_factory=list)
    out: str | None = None  # the metrics as JSON
    results: str | None = None  # the COCO results (the detections scored)
    pictures: str | None = None  # a PNG of val people: truth, prediction, heatmaps, attention


def evaluate_checkpoint(request: EvalRequest) -> dict | None:
    """The metrics (on rank 0; None on the others), printed and written as asked. Errors of
    the config, shards, checkpoint or evaluation raise after leaving the process group."""
    env = None
    try:
        cfg = eval_config(request)
        env = init_distributed(cfg.launch)
        loader = build_loader(
            LoaderSpec(cfg.data, "val", cfg.eval.batch_size, env.rank, env.world_size, env.device)
        )
        for note in check_ground_truth(cfg.data.val_ann, loader.shards):
            if env.is_main:
                print(f"eval: {note}")
        model = None
        if request.checkpoint:
            model = _model(cfg, request.checkpoint, loader, env)
            predict = model_predictor(model, cfg.eval, cfg.data, loader.layout.flip_permutation)
        else:
            size = heatmap_size(cfg.data.image_size, cfg.model.output_stride)
            predict = ground_truth_predictor(HeatmapCodec.of(cfg.data, size))
        with torch.no_grad():
            metrics = evaluate(
                predict,
                loader,
                cfg.eval,
                cfg.data,
                request.results,
                env=env,
                ceiling=model is not None,
            )
    except BaseException:
        leave_group(env, together=False)
        raise
    if env.is_main:
        _report(metrics, cfg, request, model, loader)
    leave_group(env, together=True)
    return metrics


def eval_config(request: EvalRequest) -> Config:
    """The config given, else the one the checkpoint's run or export folder recorded."""
    if request.config:
        return load_config(request.config, request.overrides)
    recorded = resolve_trained(request.checkpoint).config if request.checkpoint else None
    if recorded is None:
        raise ConfigError(
            "give --config: the ground truth needs one"
            if not request.checkpoint
            else f"'{request.checkpoint}' has no config in its run or export folder: give --config"
        )
    return load_config(recorded, request.overrides, recorded=True)


def _model(cfg: Config, checkpoint: str, loader: Loader, env: DistEnv) -> torch.nn.Module:
    """The checkpoint's model, built from `cfg`, its keypoint layout checked against the val
    shards'."""
    files = resolve_trained(checkpoint)
    layouts = {str(loader.shards.folder): loader.layout}
    if files.layout is not None:
        layouts[f"checkpoint '{checkpoint}'"] = load_layout(str(files.layout))
    layout = one_layout(layouts, cfg.data.layout)
    return load_trained_model(files, cfg, layout=layout).model.to(env.device)


def _report(metrics: dict, cfg: Config, request: EvalRequest, model, loader: Loader) -> None:
    print_metrics(metrics)
    size = heatmap_size(cfg.data.image_size, cfg.model.output_stride)
    note = ceiling_note(metrics, cfg.data, size)
    if note:
        print(f"eval: note: {note}")
    if request.out:
        write_json(request.out, metrics)
    if request.pictures and model is not None and cfg.eval.panel_people:
        batches = loader.epoch(0)
        batch = next(batches)
        batches.close()
        path = Path(request.pictures)
        with torch.no_grad():
            prediction_panel(
                model,
                batch,
                path,
                loader.layout,
                cfg.data,
                cfg.eval.panel_people,
                cfg.eval.keypoint_thr,
                cfg.eval.panel_joints,
            )
        print(f"eval: wrote {path}")
