"""Training a pose model: `Trainer` builds the run (loaders, model, optimizer, schedule, engine,
resume) and `Trainer.train` is the loop, one pass per optimizer step, in which the checkpointer
and the evaluator decide when they act. The epoch and the position inside it follow from the step
counter. Device values reach the host only at log steps."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from pose.config import Config, DataConfig, LossConfig, save_config
from pose.data.backends import build_loader
from pose.data.codec import HeatmapCodec
from pose.data.layout import KeypointLayout, LayoutError, load_layout, one_layout, save_layout
from pose.data.loader import Loader, LoaderSpec
from pose.data.mixing import MixedLoader
from pose.data.union import UnionLayout, load_union, save_union, union_of_datasets
from pose.distributed import (
    BatchNormAverage,
    DistEnv,
    any_rank,
    barrier,
    init_distributed,
    start_heartbeat,
)
from pose.engine.budget import BudgetClock
from pose.engine.build import build_training
from pose.engine.checkpoint import Checkpointer, RunState
from pose.engine.deepspeed_adapter import TrainEngine, deepspeed_config
from pose.engine.evaluator import Evaluator
from pose.engine.loss import joints_mse_loss
from pose.engine.progress import Progress
from pose.engine.schedule import StepPlan, images_per_step
from pose.engine.step_metrics import StepMetrics
from pose.engine.stop import StopRequest
from pose.eval.datasets import ValSet
from pose.eval.evaluate import check_ground_truth
from pose.files import atomic_write
from pose.folders import RunFolder, RunFolderBusy, RunLock
from pose.models import build_model
from pose.models.trained import dataset_channels
from pose.tracking import Tracker


@dataclass(frozen=True)
class TrainResult:
    step: int  # optimizer steps done
    images: int  # training images of those steps, all ranks together
    epochs: int  # epochs completed
    best_ap: float  # -1 before any evaluation
    metrics: dict  # the last evaluation's, {} if none ran
    precision: str
    stop_signal: int | None  # the signal that stopped the run early; None: it ran to its end

    @property
    def stopped(self) -> bool:
        return self.stop_signal is not None


class Trainer:
    """Everything of the run is built and checked (a resume included) before anything is
    written to the run folder, which rank 0 holds locked until the run ends."""

    def __init__(self, cfg: Config, run: RunFolder, env: DistEnv):
        self.cfg, self.run, self.env = cfg, run, env  # the run's whole config: it builds all
        self.lock = _lock_run_folder(run, env)
        try:
            self._build()
        except BaseException:
            if self.lock is not None:
                self.lock.release()
            raise

    def _build(self) -> None:
        cfg, run, env = self.cfg, self.run, self.env
        torch.manual_seed(cfg.seed + env.rank)
        np.random.seed(cfg.seed + env.rank)
        self.train_loader, val_sets, self.layout, self.union = self._open_data()
        self.joint_weights = None
        if cfg.loss.joint_weights:
            self.joint_weights = torch.tensor(self.layout.weights, device=env.device)
        batches = self.train_loader.batches_per_epoch
        self.plan = StepPlan.of(cfg.train, batches, env.world_size)
        self.images_per_step = images_per_step(cfg.train, env.world_size)
        fresh = run.latest_tag() is None  # a resumed run's weights are in its checkpoint
        channels = dataset_channels(self.union)
        training = build_training(
            cfg, self.layout.num_joints, env, self.plan, pretrained=fresh, dataset_channels=channels
        )
        self.model, self.optimizer = training.model, training.optimizer
        self.engine, self.precision = training.engine, training.precision
        batchnorm = BatchNormAverage(self.model, env)
        self.checkpointer = Checkpointer(
            run, self.engine, cfg.checkpoint, self.plan, env, batchnorm, cfg.train.grad_accum
        )
        self.resumed = self.checkpointer.restore()
        self.state = self.resumed or RunState()
        resume_step = self.state.step if self.resumed else 0
        self.budget_clock = BudgetClock.restore(cfg.train, self.plan, run, env, resume_step)
        if env.is_main:  # the config is known to fit: now it may replace the folder's
            save_config(cfg, run.config)
            save_layout(self.layout, run.layout)
            if self.union is not None:
                save_union(self.union, run.union)
            generated = deepspeed_config(
                cfg.train, cfg.engine, cfg.optimizer.grad_clip, env.world_size, self.precision
            )
            atomic_write(run.deepspeed_config, json.dumps(generated, indent=1) + "\n")
        barrier()
        self.tracker = Tracker(cfg.log, run, env.is_main, resume_step)
        self.evaluator = Evaluator(
            val_sets, cfg.eval, cfg.data, self.plan, run, self.tracker, env, batchnorm
        )
        self.progress = Progress(
            cfg.log,
            cfg.train,
            run,
            self.plan,
            env,
            self.tracker,
            self.train_loader,
            cfg.data.max_bad_fraction,
        )
        self.step_metrics = StepMetrics(env)
        bf16 = self.precision == "bf16"
        self.autocast = torch.autocast(env.device.type, dtype=torch.bfloat16, enabled=bf16)

    def _spec(self, data: DataConfig, split: str, batch_size: int) -> LoaderSpec:
        env = self.env
        return LoaderSpec(
            data, split, batch_size, env.rank, env.world_size, env.device, self.cfg.seed
        )

    def _open_data(self) -> tuple[Loader, list[ValSet], KeypointLayout, UnionLayout | None]:
        """The training loader, the val sets, the model's keypoint layout and, with several
        datasets, their union; every layout checked against the others (and a resumed run's)."""
        cfg, run, env = self.cfg, self.run, self.env
        train_batch, eval_batch = cfg.train.batch_size, cfg.eval.batch_size
        if not cfg.data.datasets:
            train = build_loader(self._spec(cfg.data, "train", train_batch))
            val = build_loader(self._spec(cfg.data, "val", eval_batch))
            self._check_val(cfg.data, val)
            layouts = {cfg.data.train_shards: train.layout, cfg.data.val_shards: val.layout}
            union, val_sets = None, [ValSet("", 0, val, cfg.data)]
        else:
            loaders, own, vals = [], {}, []
            for index, dataset in enumerate(cfg.data.datasets):
                data = cfg.data.single(dataset)
                loaders.append(build_loader(self._spec(data, "train", train_batch)))
                found = {f"dataset '{dataset.name}' ({dataset.train_shards})": loaders[-1].layout}
                if dataset.val_shards:
                    val = build_loader(self._spec(data, "val", eval_batch))
                    self._check_val(data, val)
                    found[f"dataset '{dataset.name}' ({dataset.val_shards})"] = val.layout
                    vals.append((index, dataset.name, val, data))
                own[dataset.name] = one_layout(found)
            union = union_of_datasets(cfg.data, own)
            _check_resumed_union(run, union)
            if env.is_main:
                print(f"train: the union of {len(own)} datasets' joints:\n{union.table()}")
            weights = [dataset.weight for dataset in cfg.data.datasets]
            train = MixedLoader(loaders, union, cfg.data.mix, weights, cfg.seed)
            val_sets = [
                ValSet(name, i, val, data, union.parts[i].to_union) for i, name, val, data in vals
            ]
            layouts = {f"the union of data.datasets ({union.layout.name})": union.layout}
        if run.latest_tag() is not None and run.layout.is_file():  # resuming: the same joints
            layouts[f"the run being resumed ({run.layout})"] = load_layout(str(run.layout))
        return train, val_sets, one_layout(layouts, cfg.data.layout), union

    def _check_val(self, data: DataConfig, val: Loader) -> None:
        """A val file that cannot be scored fails now, not hours later."""
        if not self.cfg.eval.every_epochs:
            return
        for note in check_ground_truth(data.val_ann, val.shards):
            if self.env.is_main:
                print(f"train: {note}", flush=True)

    def train(self) -> TrainResult:
        """Run from the current step to the plan's last (or until a stop signal). Each step's
        end is reported to the components, which decide whether to act."""
        state, plan, env = self.state, self.plan, self.env
        stop = StopRequest(self.cfg.launch.stop_agree_s)
        heartbeat = start_heartbeat(env)  # names a rank that hangs, when a collective fails
        micro_batches = self._micro_batches()
        self.progress.start(state.step, self._start_record(), self.budget_clock)
        if self.budget_clock is not None:
            self.budget_clock.begin()
        stopping, last_eval = False, {}
        try:
            while not plan.is_last(state.step) and not stopping:
                self._optimizer_step(micro_batches, state.step + 1)
                state.step += 1
                if heartbeat is not None:
                    heartbeat.step = state.step
                self._measure_budget(state.step)
                stopping = stop.agreed(env, state.step)
                self.progress.after_step(state.step, stopping, self.step_metrics, self._lr())
                evaluation = self.evaluator.after_step(
                    self._model_to_evaluate, state.step, stopping, self.autocast
                )
                self.checkpointer.after_step(state, stopping, evaluation, self.step_metrics)
                last_eval = last_eval if evaluation is None else evaluation
        finally:
            if heartbeat is not None:
                heartbeat.stop()
            micro_batches.close()
            self.progress.close()
            self.tracker.finish()
            stop.restore()
            if self.lock is not None:
                self.lock.release()
        return self._result(stop.signum if stopping else None, last_eval)

    def _result(self, stop_signal: int | None, last_eval: dict) -> TrainResult:
        step, plan = self.state.step, self.plan
        images = step * self.images_per_step
        epochs = plan.completed_epochs(step)
        best = self.state.best_ap
        return TrainResult(step, images, epochs, best, last_eval, self.precision, stop_signal)

    def _model_to_evaluate(self) -> torch.nn.Module:
        """The trained module itself; under ZeRO-3 (weights in slices, every forward pass a
        collective, while ranks evaluate different numbers of batches) a whole copy on each
        rank."""
        if not self.engine.partitions_weights:
            return self.model
        channels = dataset_channels(self.union)
        whole = build_model(self.cfg.model, self.layout.num_joints, channels)
        whole = whole.to(self.env.device)
        whole.load_state_dict(self.engine.full_state_dict())
        return whole

    def _start_record(self) -> dict:
        """What the trainer adds to the record of each (re)start."""
        return {
            "params": self.engine.parameter_count(),
            "precision": self.precision,
            "resumed": self.resumed is not None,
        }

    def _measure_budget(self, step: int) -> None:
        """With a wall-clock budget not measured yet: time this step, and at the last
        calibration step fix the run's length."""
        if self.budget_clock is None:
            return
        measured = self.budget_clock.observe(step)
        if measured is not None:
            self.budget_clock = None
            self.progress.budget_measured(measured)

    def _optimizer_step(self, micro_batches: Iterator[dict], step: int):
        """The micro-batches of one optimizer step (DeepSpeed steps at the last of them)."""
        for _ in range(self.cfg.train.grad_accum):
            wait = time.perf_counter()
            batch = next(micro_batches)
            self.step_metrics.data_time += time.perf_counter() - wait
            data, loss_cfg = self.cfg.data, self.cfg.loss
            loss, skipped = train_step(self.engine, batch, data, loss_cfg, self.joint_weights)
            self.step_metrics.add(loss, skipped, batch["image"].shape[0], step)

    def _micro_batches(self) -> Iterator[dict]:
        """The training batches from the current step on, epoch after epoch; each epoch gives
        exactly steps_per_epoch x grad_accum of them."""
        accum, plan = self.cfg.train.grad_accum, self.plan
        epoch, within = divmod(self.state.step, plan.steps_per_epoch)
        while True:
            batches = self.train_loader.epoch(epoch, start_batch=within * accum)
            try:
                for _ in range((plan.steps_per_epoch - within) * accum):
                    yield next(batches)
            finally:
                batches.close()
            epoch, within = epoch + 1, 0

    def _lr(self) -> float:
        """The lr of the head (the highest, with layer-wise decay)."""
        return max(group["lr"] for group in self.optimizer.param_groups)


def train_step(
    engine: TrainEngine,
    batch: dict,
    data: DataConfig,
    loss_cfg: LossConfig,
    joint_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward, JointsMSELoss on device-made targets at the model's output size (each joint's
    term weighed by `joint_weights` when given, and 0 for joints the sample's dataset does not
    annotate), backward, optimizer step (DeepSpeed applies it at the gradient-accumulation
    boundary). Returns the loss and whether fp16 loss scaling skipped the step (1) or not (0),
    both on the device."""
    extra = {"dataset": batch["dataset"]} if "dataset" in batch else {}
    heatmaps = engine(batch["image"], **extra)
    targets, weights = HeatmapCodec.of(data, heatmaps.shape[-2:]).encode(batch["keypoints"])
    if "known" in batch:  # several datasets: the joints a sample's dataset does not annotate
        weights = weights * batch["known"]
    if joint_weights is not None:
        weights = weights * joint_weights
    loss = joints_mse_loss(heatmaps, targets, weights, loss_cfg.ohkm_topk if loss_cfg.ohkm else 0)
    engine.backward(loss)
    scale_before = engine.loss_scale()
    engine.step()
    skipped = torch.zeros((), device=loss.device)
    if scale_before is not None:  # the scaler halves its scale when it skips an overflow
        skipped = (engine.loss_scale() < scale_before).float()
    return loss.detach(), skipped


def _check_resumed_union(run: RunFolder, union: UnionLayout) -> None:
    """A resumed run of several datasets must have the same datasets and joints."""
    if run.latest_tag() is None or not run.union.is_file():
        return
    recorded = load_union(run.union)
    if recorded.to_json() != union.to_json():
        raise LayoutError(
            f"the run being resumed ({run.union}) was trained on the union of "
            f"{recorded.names} ('{recorded.layout.name}'), this config's datasets make "
            f"{union.names} ('{union.layout.name}'): resume with the same data.datasets, or "
            "start a new run folder"
        )


def _lock_run_folder(run: RunFolder, env: DistEnv) -> RunLock | None:
    """Rank 0 locks the run folder; every rank learns whether it could."""
    lock, error = None, None
    if env.is_main:
        try:
            lock = run.lock()
        except RunFolderBusy as e:
            error = e
    if any_rank(error is not None, env):
        raise error or RunFolderBusy(f"rank 0 could not lock the run folder '{run.path}'")
    return lock


def train(cfg: Config, run_dir, env: DistEnv | None = None) -> TrainResult:
    """Train as `cfg` says in `run_dir` (resuming from its latest checkpoint if any)."""
    env = env or init_distributed(cfg.launch)
    return Trainer(cfg, RunFolder(run_dir), env).train()
