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
from pose.data.shards import ShardSet
from pose.data.union import UnionLayout, load_union, union_of_datasets
from pose.distributed import DistEnv, init_distributed, leave_group
from pose.eval.coco_eval import write_json
from pose.eval.datasets import ValSet, best_set, combined_metrics, print_per_dataset
from pose.eval.evaluate import (
    check_ground_truth,
    evaluate,
    ground_truth_predictor,
    model_predictor,
)
from pose.folders import TrainedModelError, resolve_trained
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
    the config, shards, checkpoint or evaluation raise after leaving the process group. A
    config of several datasets scores each val set in its own layout (pose/eval/datasets.py)."""
    env = None
    try:
        cfg = eval_config(request)
        env = init_distributed(cfg.launch)
        val_sets, union = open_val_sets(cfg, env)
        model = (
            _model(cfg, request.checkpoint, val_sets, union, env) if request.checkpoint else None
        )
        per_set = {}
        for val_set in val_sets:
            if model is not None:
                flips = val_set.layout.flip_permutation
                predict = model_predictor(val_set.view(model), cfg.eval, val_set.data, flips)
            else:
                size = heatmap_size(cfg.data.image_size, cfg.model.output_stride)
                codec = HeatmapCodec.of(val_set.data, size)
                predict = ground_truth_predictor(codec, union_channels(val_set, union))
            results = Path(request.results) if request.results else None
            with torch.no_grad():
                metrics = evaluate(
                    predict,
                    val_set.loader,
                    cfg.eval,
                    val_set.data,
                    val_set.results_path(results),
                    env=env,
                    ceiling=model is not None,
                )
            per_set[val_set.name] = metrics
    except BaseException:
        leave_group(env, together=False)
        raise
    metrics = None
    if env.is_main:
        metrics = combined_metrics(per_set, cfg.eval.best_by)
        _report(per_set, metrics, cfg, request, model, best_set(val_sets, cfg.eval.best_by))
    leave_group(env, together=True)
    return metrics


def open_val_sets(cfg: Config, env: DistEnv) -> tuple[list[ValSet], UnionLayout | None]:
    """The config's val sets (each checked against its annotations) and, with several datasets,
    their union (of every dataset's layout, as training made it)."""

    def loader(data) -> Loader:
        spec = LoaderSpec(data, "val", cfg.eval.batch_size, env.rank, env.world_size, env.device)
        opened = build_loader(spec)
        for note in check_ground_truth(data.val_ann, opened.shards):
            if env.is_main:
                print(f"eval: {note}")
        return opened

    if not cfg.data.datasets:
        return [ValSet("", 0, loader(cfg.data), cfg.data)], None
    layouts = {d.name: ShardSet.open(d.train_shards).layout for d in cfg.data.datasets}
    union = union_of_datasets(cfg.data, layouts)
    val_sets = []
    for index, dataset in enumerate(cfg.data.datasets):
        if dataset.val_shards:
            data = cfg.data.single(dataset)
            val_set = ValSet(dataset.name, index, loader(data), data, union.parts[index].to_union)
            one_layout(
                {
                    f"dataset '{dataset.name}'": layouts[dataset.name],
                    **{f"its val shards ({dataset.val_shards})": val_set.layout},
                }
            )
            val_sets.append(val_set)
    if not val_sets:
        raise ConfigError("config key 'data.datasets': no dataset has val_shards to evaluate on")
    return val_sets, union


def union_channels(val_set: ValSet, union: UnionLayout | None) -> tuple | None:
    """For the ground truth through the union: the union's size and this set's channels."""
    if union is None:
        return None
    return union.layout.num_joints, val_set.channels


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


def _model(
    cfg: Config, checkpoint: str, val_sets: list[ValSet], union: UnionLayout | None, env: DistEnv
) -> torch.nn.Module:
    """The checkpoint's model, built from `cfg`, its keypoint layout checked against the val
    shards' (or, with several datasets, its union against theirs)."""
    files = resolve_trained(checkpoint)
    if union is None:
        layouts = {str(val_sets[0].loader.shards.folder): val_sets[0].layout}
    else:
        layouts = {f"the union of data.datasets ({union.layout.name})": union.layout}
        recorded = load_union(files.union) if files.union is not None else None
        if recorded is None or recorded.to_json() != union.to_json():
            what = f"datasets {recorded.names}" if recorded else "one dataset"
            raise TrainedModelError(
                f"checkpoint '{checkpoint}' was trained on {what}, not on the union of "
                f"data.datasets ({union.names}, '{union.layout.name}') of the config"
            )
    if files.layout is not None:
        layouts[f"checkpoint '{checkpoint}'"] = load_layout(str(files.layout))
    layout = one_layout(layouts, cfg.data.layout)
    return load_trained_model(files, cfg, layout=layout).model.to(env.device)


def _report(
    per_set: dict, metrics: dict, cfg: Config, request: EvalRequest, model, pictured: ValSet
) -> None:
    size = heatmap_size(cfg.data.image_size, cfg.model.output_stride)
    print_per_dataset(per_set, cfg.data, pictured.name, "eval", size)
    if request.out:
        write_json(request.out, metrics)
    if request.pictures and model is not None and cfg.eval.panel_people:
        batches = pictured.loader.epoch(0)
        batch = next(batches)
        batches.close()
        path = Path(request.pictures)
        with torch.no_grad():
            prediction_panel(
                pictured.view(model),
                batch,
                path,
                pictured.layout,
                pictured.data,
                cfg.eval.panel_people,
                cfg.eval.keypoint_thr,
                cfg.eval.panel_joints,
            )
        print(f"eval: wrote {path}")
