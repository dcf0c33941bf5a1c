"""Training a pose model: `Trainer` builds the run (loaders, model, optimizer, schedule, engine,
resume) and `Trainer.train` is the loop, one pass per optimizer step, in which the checkpointer
and the evaluator decide when they act. The epoch and the position inside it follow from the step
counter. Device values reach the host only at log steps."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from pose.config import Config, DataConfig, TrainConfig, save_config, to_dict
from pose.data.backends import build_loader
from pose.data.codec import HeatmapCodec
from pose.data.layout import one_layout, save_layout
from pose.data.loader import LoaderSpec
from pose.engine.budget import BudgetClock, MeasuredBudget
from pose.engine.checkpoint import Checkpointer, RunState, resolve_checkpoint
from pose.engine.deepspeed_adapter import (
    TrainEngine,
    build_engine,
    deepspeed_config,
    resolve_precision,
)
from pose.engine.distributed import (
    DistEnv,
    any_rank,
    average_batchnorm_statistics,
    barrier,
    init_distributed,
    rank_hosts,
    sum_over_ranks,
    use_sync_batchnorm,
)
from pose.engine.errors import TrainingError
from pose.engine.evaluator import Evaluator
from pose.engine.loss import joints_mse_loss
from pose.engine.schedule import StepPlan, base_lr, images_per_step, lr_factor
from pose.engine.step_metrics import StepMetrics
from pose.engine.stop import StopRequest
from pose.eval.evaluate import check_ground_truth
from pose.files import atomic_write
from pose.folders import RunFolder, RunFolderBusy, RunLock
from pose.models import build_model, load_pretrained
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
        self.cfg, self.run, self.env = cfg, run, env
        self.lock = _lock_run_folder(run, env)
        try:
            self._build()
        except BaseException:
            if self.lock is not None:
                self.lock.release()
            raise

    def _build(self) -> None:
        cfg, run, env = self.cfg, self.run, self.env
        self.precision = resolve_precision(cfg.train.precision, env.device)
        torch.manual_seed(cfg.seed + env.rank)
        np.random.seed(cfg.seed + env.rank)
        self.train_loader = build_loader(self._spec("train", cfg.train.batch_size))
        val_loader = build_loader(self._spec("val", cfg.eval.batch_size))
        if cfg.train.eval_every:  # a val file that cannot be scored fails now, not hours later
            for note in check_ground_truth(cfg.data.val_ann, val_loader.shards):
                if env.is_main:
                    print(f"train: {note}", flush=True)
        self.layout = one_layout(
            {
                f"{cfg.data.train_shards}": self.train_loader.layout,
                cfg.data.val_shards: val_loader.layout,
            },
            cfg.data.layout,
        )
        self.joint_weights = None
        if cfg.train.joint_weights:
            self.joint_weights = torch.tensor(self.layout.weights, device=env.device)
        batches = self.train_loader.batches_per_epoch
        self.plan = StepPlan.of(cfg.train, batches, env.world_size)
        self.images_per_step = images_per_step(cfg.train, env.world_size)
        model = build_model(cfg.model, self.layout.num_joints)
        if cfg.model.pretrained and run.latest_tag() is None:  # a resumed run's are in its
            load_pretrained(model, resolve_checkpoint(cfg.model.pretrained))  # checkpoint
        model = use_sync_batchnorm(model, cfg.model.sync_bn, env)
        self.model = prepare_model(model, cfg.train, env.device)
        self.engine = self._build_engine()
        apply_memory_format(self.model, cfg.train, env.device)
        self.checkpointer = Checkpointer(run, self.engine, cfg.train, self.plan, env.is_main)
        self.resumed = self.checkpointer.restore()
        self.state = self.resumed or RunState()
        resume_step = self.state.step if self.resumed else 0
        self.budget_clock = BudgetClock.restore(cfg.train, self.plan, run, env, resume_step)
        if env.is_main:  # the config is known to fit: now it may replace the folder's
            save_config(cfg, run.config)
            save_layout(self.layout, run.layout)
            generated = deepspeed_config(cfg.train, env.world_size, self.precision)
            atomic_write(run.deepspeed_config, json.dumps(generated, indent=1) + "\n")
        barrier()
        self.tracker = Tracker(cfg.log, run, to_dict(cfg), env.is_main, resume_step)
        self.bad_reported = 0
        self.evaluator = Evaluator(
            val_loader,
            cfg.eval,
            cfg.data,
            cfg.train.eval_every,
            self.plan,
            run,
            self.tracker,
            cfg.log,
        )
        bf16 = self.precision == "bf16"
        self.autocast = torch.autocast(env.device.type, dtype=torch.bfloat16, enabled=bf16)

    def _spec(self, split: str, batch_size: int) -> LoaderSpec:
        env = self.env
        return LoaderSpec(
            self.cfg.data, split, batch_size, env.rank, env.world_size, env.device, self.cfg.seed
        )

    def _build_engine(self) -> TrainEngine:
        train = self.cfg.train
        optimizer_cls = torch.optim.AdamW if train.optimizer == "adamw" else torch.optim.Adam
        lr = base_lr(train, self.env.world_size)
        params = self.model.parameters()
        optimizer = optimizer_cls(params, lr=lr, weight_decay=train.weight_decay)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(train, self.plan))
        self.optimizer = optimizer
        return build_engine(
            self.model,
            optimizer,
            schedule,
            train,
            self.env.world_size,
            self.precision,
            self.cfg.launch.collective_timeout_s,
        )

    def train(self) -> TrainResult:
        """Run from the current step to the plan's last (or until a stop signal)."""
        state, plan, log_every = self.state, self.plan, self.cfg.train.log_every
        self._log_start()
        stop, metrics = StopRequest(), StepMetrics(self.env)
        micro_batches = self._micro_batches()
        bar = tqdm(
            total=plan.total_steps or None,
            initial=state.step,
            disable=not self.env.is_main or not sys.stderr.isatty(),
            unit="step",
        )
        self.last_progress_line = 0.0
        if self.budget_clock is not None:
            self.budget_clock.begin()
        last_eval, stopping = {}, False
        try:
            while not plan.is_last(state.step) and not stopping:
                self._optimizer_step(micro_batches, metrics, state.step + 1)
                state.step += 1
                self._measure_budget(state.step, bar)
                at_log_step = state.step % log_every == 0
                stopping = stop.agreed(self.env, at_log_step)
                if at_log_step or stopping or plan.is_last(state.step):
                    self._log_step(metrics, bar)
                bar.update(1)
                improved = False
                evaluating = self.evaluator.due(state.step) and not stopping
                if evaluating or self.checkpointer.due(state.step, stopping):
                    average_batchnorm_statistics(self.model)  # one set, used and saved
                if evaluating:
                    last_eval = self.evaluator.evaluate(self.model, state.step, self.autocast)
                    improved = last_eval.get("AP", -1.0) >= state.best_ap  # the same on all ranks
                    state.best_ap = max(state.best_ap, last_eval.get("AP", -1.0))
                if self.checkpointer.due(state.step, stopping):
                    self._check_healthy(metrics, state.step)
                    tag = self.checkpointer.save(state)
                    if improved:
                        self.checkpointer.mark_best(tag)
        finally:
            micro_batches.close()
            bar.close()
            self.tracker.finish()
            stop.restore()
            if self.lock is not None:
                self.lock.release()
        signal = stop.signum if stopping else None
        epochs = plan.completed_epochs(state.step)
        images = state.step * self.images_per_step
        return TrainResult(
            state.step, images, epochs, state.best_ap, last_eval, self.precision, signal
        )

    def _measure_budget(self, step: int, bar: tqdm) -> None:
        """With a wall-clock budget not measured yet: time this step, and at the last
        calibration step fix the run's length."""
        if self.budget_clock is None:
            return
        measured = self.budget_clock.observe(step)
        if measured is None:
            return
        self.budget_clock = None
        bar.total = self.plan.total_steps
        bar.refresh()
        if self.env.is_main:
            line = describe_budget(measured, self.plan, self.images_per_step)
            print(f"train: {line}", flush=True)

    def _with_budget(self, record: dict) -> dict:
        """Images seen so far (all ranks) and, with a budget, the part of it used."""
        train, step = self.cfg.train, record["step"]
        record["images"] = step * self.images_per_step
        if (train.budget_images or train.budget_minutes) and self.plan.known:
            record["budget_used"] = step / self.plan.total_steps
        return record

    def _optimizer_step(self, micro_batches: Iterator[dict], metrics: StepMetrics, step: int):
        """The micro-batches of one optimizer step (DeepSpeed steps at the last of them)."""
        for _ in range(self.cfg.train.grad_accum):
            wait = time.perf_counter()
            batch = next(micro_batches)
            metrics.data_time += time.perf_counter() - wait
            data, train = self.cfg.data, self.cfg.train
            loss, skipped = train_step(self.engine, batch, data, train, self.joint_weights)
            metrics.add(loss, skipped, batch["image"].shape[0], step)

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

    def _check_healthy(self, metrics: StepMetrics, step: int) -> None:
        """Before a checkpoint: no non-finite loss since the last log step, no non-finite
        weight, on any rank; a run that fails this stops with the last good checkpoint as
        `latest`."""
        bad_loss = int(metrics.first_bad)  # a host sync, once per checkpoint
        finite = torch.stack([p.detach().isfinite().all() for p in self.model.parameters()])
        if any_rank(bad_loss >= 0 or not bool(finite.all()), self.env):
            where = f"at step {bad_loss}" if bad_loss >= 0 else f"by step {step}"
            raise TrainingError(
                f"loss or weights are not finite {where}; no checkpoint of them is written, "
                f"the last good one is {self.run.latest_tag() or 'none'} in {self.run.checkpoints}"
            )

    def _count_bad_samples(self, record: dict) -> dict:
        """Samples skipped because they do not decode: named in the log as they appear,
        counted in the record, and the run stopped once they are more than
        `data.max_bad_fraction` of those read (on all ranks together)."""
        loader = self.train_loader
        for name in loader.bad_sample_names[self.bad_reported :]:
            print(f"train: skipped a sample that does not decode: {name}", flush=True)
        self.bad_reported = len(loader.bad_sample_names)
        bad, read = sum_over_ranks([loader.bad_samples, loader.samples_read], self.env)
        record["bad_samples"] = int(bad)
        if bad > self.cfg.data.max_bad_fraction * read:
            raise TrainingError(
                f"{int(bad)} of {int(read)} samples read did not decode, more than "
                f"data.max_bad_fraction={self.cfg.data.max_bad_fraction}; check the shards with "
                f"data_prep.verify {loader.spec.folder}"
            )
        return record

    def _lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def _log_start(self) -> None:
        """One record per (re)start: what compare and sweep status read besides the metrics."""
        state, env = self.state, self.env
        if self.resumed and env.is_main:
            epoch, within = divmod(state.step, self.plan.steps_per_epoch)
            print(
                f"train: resuming {self.run.path} at step {state.step} (epoch {epoch}, "
                f"step {within} of the epoch)",
                flush=True,
            )
        if env.is_main and self._budget_line():
            print(f"train: {self._budget_line()}", flush=True)
        record = {
            "step": state.step,
            "epoch": self.plan.completed_epochs(state.step),
            "split": "run",
            "params": sum(p.numel() for p in self.model.parameters()),
            "steps_per_epoch": self.plan.steps_per_epoch,
            "total_steps": self.plan.total_steps,  # 0: a wall-clock budget not measured yet
            "budget_images": self.cfg.train.budget_images,
            "budget_minutes": self.cfg.train.budget_minutes,
            "world_size": env.world_size,
            "hosts": rank_hosts(env),  # of each rank
            "precision": self.precision,
            "launcher": env.source,
            "resumed": self.resumed is not None,
        }
        self.tracker.log(record)

    def _budget_line(self) -> str:
        """What the run's budget is, at its start ("" without one)."""
        train, plan = self.cfg.train, self.plan
        if train.budget_images:
            epochs = plan.total_steps / plan.steps_per_epoch
            return (
                f"budget of {train.budget_images} images = {plan.total_steps} steps of "
                f"{self.images_per_step} images ({epochs:.1f} epochs)"
            )
        if self.budget_clock is not None:
            first, last = self.budget_clock.start + 1, self.budget_clock.end
            return (
                f"budget of {train.budget_minutes:g} min: steps {first}-{last} are timed to fix "
                "the run's length"
            )
        return ""

    def _log_step(self, metrics: StepMetrics, bar: tqdm) -> None:
        """The record of the log interval that ends at this step."""
        step = self.state.step
        record = metrics.flush(step, self.plan.completed_epochs(step), self._lr())
        self._log(self._count_bad_samples(self._with_budget(record)), bar)

    def _log(self, record: dict, bar: tqdm) -> None:
        self.tracker.log(record)
        epoch = self.plan.epoch_of(record["step"])
        bar.set_postfix(
            epoch=epoch,
            loss=f"{record['loss']:.3g}",
            lr=f"{record['lr']:.2e}",
            img_s=f"{record['images_per_s']:.0f}",
        )
        if bar.disable and self.env.is_main:
            self._progress_line(record, epoch)

    def _progress_line(self, record: dict, epoch: int) -> None:
        """Without a terminal: one plain line every `log.progress_every_s` seconds."""
        now, step, total = time.time(), record["step"], self.plan.total_steps
        if now - self.last_progress_line < self.cfg.log.progress_every_s and step != total:
            return
        self.last_progress_line = now
        of_total, eta = (f"/{total}", "") if total else ("", "")
        if total and record["step_time"] > 0:
            seconds = (total - step) * record["step_time"] * self.cfg.train.grad_accum
            eta = f", eta {int(seconds // 60)} min {int(seconds % 60)} s"
        print(
            f"train: step {step}{of_total} (epoch {epoch}), loss {record['loss']:.4g}, "
            f"lr {record['lr']:.3g}, {record['images_per_s']:.1f} images/s{eta}",
            flush=True,
        )


def prepare_model(model: torch.nn.Module, train: TrainConfig, device: torch.device):
    """The model on `device`, compiled when `train.compile` is set (on its first call)."""
    model = model.to(device)
    if train.compile:
        model.compile()
    return model


def apply_memory_format(model: torch.nn.Module, train: TrainConfig, device: torch.device):
    """channels_last weights as `train.memory_format` says (auto: on a GPU, without ZeRO), once
    the engine is built: DeepSpeed broadcasts parameters viewed as bytes at its start, which a
    channels_last weight refuses, and ZeRO flattens them into buffers that a conversion would
    detach them from. The parameters stay the same objects, so the optimizer keeps them."""
    wanted = train.memory_format == "channels_last" or (
        train.memory_format == "auto" and device.type == "cuda" and train.zero_stage == 0
    )
    if wanted:
        model.to(memory_format=torch.channels_last)
    return model


def train_step(
    engine: TrainEngine,
    batch: dict,
    data: DataConfig,
    train: TrainConfig,
    joint_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward, JointsMSELoss on device-made targets at the model's output size (each joint's
    term weighed by `joint_weights` when given), backward, optimizer step (DeepSpeed applies it
    at the gradient-accumulation boundary). Returns the loss and whether fp16 loss scaling
    skipped the step (1) or not (0), both on the device."""
    heatmaps = engine(batch["image"])
    targets, weights = HeatmapCodec.of(data, heatmaps.shape[-2:]).encode(batch["keypoints"])
    if joint_weights is not None:
        weights = weights * joint_weights
    loss = joints_mse_loss(heatmaps, targets, weights, train.ohkm_topk if train.ohkm else 0)
    engine.backward(loss)
    scale_before = engine.loss_scale()
    engine.step()
    skipped = torch.zeros((), device=loss.device)
    if scale_before is not None:  # the scaler halves its scale when it skips an overflow
        skipped = (engine.loss_scale() < scale_before).float()
    return loss.detach(), skipped


def describe_budget(measured: MeasuredBudget, plan: StepPlan, images_per_step: int) -> str:
    images = plan.total_steps * images_per_step
    first, last = measured.timed_steps
    return (
        f"budget of {measured.budget_minutes:g} min = {plan.total_steps} steps at "
        f"{measured.seconds_per_step:.3g} s/step (timed over steps {first}-{last}): "
        f"{images} images, {images / (plan.steps_per_epoch * images_per_step):.1f} epochs"
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
