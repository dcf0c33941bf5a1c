"""The training loop: one function that calls data, step, logging, evaluation and checkpointing
explicitly. Device values reach the host only at log intervals."""

from __future__ import annotations

import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from pose.config import Config, save_config
from pose.data.codec import encode_heatmaps
from pose.data.loader import build_loader
from pose.engine import checkpoint as ckpt
from pose.engine.deepspeed_config import build_engine, resolve_precision
from pose.engine.distributed import DistEnv, barrier, init_distributed
from pose.engine.loss import joints_mse_loss
from pose.engine.schedule import base_lr, lr_factor
from pose.eval.evaluate import evaluate
from pose.models import build_model
from pose.tracking import Tracker
from pose.viz.panels import prediction_panel


class TrainingError(RuntimeError):
    """The run cannot go on (a NaN loss, say); the message names the step."""


@dataclass
class RunState:
    epoch: int = 0
    step_in_epoch: int = 0  # micro-batches done in `epoch`
    global_step: int = 0  # optimizer steps
    best_ap: float = -1.0


class StopRequest:
    """SIGTERM, SIGUSR1 and SIGUSR2 (what Slurm and submitit send before a preemption, a requeue
    or a time-out) ask the loop to checkpoint and stop at the next step boundary. With several
    ranks the request is agreed on at log intervals, so that every rank stops at the same step.
    `restore()` puts back the handlers that were there before (submitit's, say), so a caller
    can hand them the signal after the checkpoint is written."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)

    def __init__(self):
        self.signum: int | None = None
        self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}

    def _handle(self, signum, frame) -> None:
        self.signum = self.signum or signum

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def agreed(self, env: DistEnv, at_log_step: bool) -> bool:
        """Whether all ranks stop now (one rank alone stops at once)."""
        if env.world_size == 1:
            return self.requested
        if not at_log_step:
            return False
        flag = torch.tensor([self.signum or 0], device=env.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        self.signum = int(flag.item()) or None
        return self.requested

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def train(cfg: Config, run_dir: str | Path, env: DistEnv | None = None) -> dict:
    """Train as `cfg` says in `run_dir` (resuming from its latest checkpoint if any); returns a
    summary with the final state and the last evaluation."""
    env = env or init_distributed(cfg.launch)
    run_dir = Path(run_dir)
    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
    barrier()
    precision = resolve_precision(cfg.train.precision, env.device)
    torch.manual_seed(cfg.seed + env.rank)
    np.random.seed(cfg.seed + env.rank)

    train_loader = build_loader(
        cfg.data, "train", cfg.train.batch_size, env.rank, env.world_size, env.device, cfg.seed
    )
    val_loader = build_loader(
        cfg.data, "val", cfg.eval.batch_size, env.rank, env.world_size, env.device, cfg.seed
    )
    steps_per_epoch = train_loader.steps_per_epoch // cfg.train.grad_accum
    model = build_model(cfg.model, cfg.data.num_joints).to(env.device)
    optimizer_cls = torch.optim.AdamW if cfg.train.optimizer == "adamw" else torch.optim.Adam
    optimizer = optimizer_cls(
        model.parameters(),
        lr=base_lr(cfg.train, env.world_size),
        weight_decay=cfg.train.weight_decay,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg.train, steps_per_epoch))
    engine = build_engine(model, optimizer, scheduler, cfg, env.world_size, precision)

    state = RunState()
    resumed = ckpt.has_checkpoint(run_dir)
    if resumed:
        state = RunState(**ckpt.load_latest(engine, run_dir))
        if env.is_main:
            print(
                f"train: resuming {run_dir} at step {state.global_step} (epoch {state.epoch}, "
                f"batch {state.step_in_epoch})",
                flush=True,
            )
    tracker = Tracker(cfg, run_dir, enabled=env.is_main)
    # One record per (re)start: what compare and sweep status read besides the metrics.
    tracker.log(
        {
            "step": state.global_step,
            "epoch": state.epoch,
            "split": "run",
            "params": sum(p.numel() for p in model.parameters()),
            "steps_per_epoch": steps_per_epoch,
            "world_size": env.world_size,
            "precision": precision,
            "launcher": env.source,
            "resumed": resumed,
        }
    )
    stop = StopRequest()
    autocast = torch.autocast(env.device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    total_steps = cfg.train.epochs * steps_per_epoch
    if cfg.train.max_steps:
        total_steps = min(total_steps, cfg.train.max_steps)
    bar = tqdm(total=total_steps, initial=state.global_step, disable=not env.is_main, unit="step")
    last_eval: dict = {}
    window = _Window(env.device)
    finished = state.global_step >= total_steps
    stopping = False
    saved_at = state.global_step if resumed else -1
    while not finished and state.epoch < cfg.train.epochs:
        data_start = time.perf_counter()
        for batch in train_loader.epoch(state.epoch, state.step_in_epoch):
            window.data_time += time.perf_counter() - data_start
            loss, skipped = train_step(engine, batch, cfg)
            state.step_in_epoch += 1
            window.add(loss, skipped, batch["image"].shape[0], state.global_step)
            if engine.global_steps == state.global_step:  # accumulating: no optimizer step yet
                data_start = time.perf_counter()
                continue
            state.global_step = engine.global_steps
            finished = state.global_step >= total_steps
            if state.global_step % cfg.train.log_every == 0 or finished:
                record = window.flush(state, optimizer, env)  # host sync
                tracker.log(record)
                bar.set_postfix(
                    loss=f"{record['loss']:.3g}",
                    lr=f"{record['lr']:.2e}",
                    img_s=f"{record['images_per_s']:.0f}",
                )
            bar.update(1)
            stopping = stop.agreed(env, at_log_step=state.global_step % cfg.train.log_every == 0)
            if state.global_step % cfg.train.checkpoint_every == 0 or stopping:
                _save(engine, run_dir, state, cfg, env)
                saved_at = state.global_step
            if finished or stopping:
                break
            data_start = time.perf_counter()
        if stopping:
            break
        if state.step_in_epoch >= train_loader.steps_per_epoch:
            state.epoch, state.step_in_epoch = state.epoch + 1, 0
        epoch_done = state.step_in_epoch == 0
        last = finished or state.epoch >= cfg.train.epochs
        if epoch_done or last:
            improved = False
            if cfg.train.eval_every and (state.epoch % cfg.train.eval_every == 0 or last):
                last_eval = _evaluate(engine, val_loader, cfg, run_dir, state, tracker, autocast)
                improved = last_eval["AP"] >= state.best_ap  # the same on every rank
                state.best_ap = max(state.best_ap, last_eval["AP"])
            again = "-epoch-end" if saved_at == state.global_step else ""
            tag = _save(engine, run_dir, state, cfg, env, again)
            saved_at = state.global_step
            if improved and env.is_main:
                ckpt.mark_best(run_dir, tag)
    bar.close()
    tracker.finish()
    stop.restore()
    return {
        "state": state.__dict__,
        "eval": last_eval,
        "precision": precision,
        "stopped": stopping,
        "stop_signal": stop.signum if stopping else None,
    }


def train_step(engine, batch: dict, cfg: Config) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward, JointsMSELoss on device-made targets, backward, optimizer step (DeepSpeed
    applies it at the gradient-accumulation boundary). Returns the loss and whether fp16 loss
    scaling skipped the step (1) or not (0), both on the device."""
    data = cfg.data
    targets, weights = encode_heatmaps(
        batch["keypoints"], data.image_size, data.heatmap_size, data.sigma, data.target
    )
    heatmaps = engine(batch["image"])
    loss = joints_mse_loss(heatmaps, targets, weights, cfg.train.ohkm_topk if cfg.train.ohkm else 0)
    engine.backward(loss)
    scale_before = _loss_scale(engine)
    engine.step()
    skipped = torch.zeros((), device=loss.device)
    if scale_before is not None:  # the scaler halves its scale when it skips an overflow
        skipped = (_loss_scale(engine) < scale_before).float()
    return loss.detach(), skipped


def _loss_scale(engine) -> torch.Tensor | None:
    """The fp16 grad scaler's current scale (a device tensor, no sync), or None without one."""
    scaler = getattr(engine, "torch_autocast_z0_gradscaler", None)
    scale = getattr(scaler, "_scale", None) if scaler is not None else None
    return scale.clone() if scale is not None else None


class _Window:
    """Loss and throughput between log points, kept on the device until a flush."""

    def __init__(self, device: torch.device):
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.loss_sum = torch.zeros((), device=self.device)
        self.skipped = torch.zeros((), device=self.device)
        self.first_bad = torch.full((), -1, device=self.device, dtype=torch.long)
        self.batches = self.images = 0
        self.data_time = 0.0
        self.start = time.perf_counter()

    def add(self, loss: torch.Tensor, skipped: torch.Tensor, images: int, step: int) -> None:
        self.skipped += skipped
        # A step the fp16 loss scaler skipped is counted, not fatal.
        bad = ~torch.isfinite(loss) & (skipped == 0) & (self.first_bad < 0)
        self.first_bad = torch.where(bad, torch.full_like(self.first_bad, step + 1), self.first_bad)
        self.loss_sum += loss
        self.batches += 1
        self.images += images

    def flush(self, state: RunState, optimizer, env: DistEnv) -> dict:
        first_bad = int(self.first_bad)  # the host sync of this log interval
        if first_bad >= 0:
            raise TrainingError(
                f"loss is not finite at step {first_bad}; the last good "
                f"checkpoint is kept, see {CHECKPOINT_HINT}"
            )
        seconds = max(time.perf_counter() - self.start, 1e-9)
        record = {
            "step": state.global_step,
            "epoch": state.epoch,
            "split": "train",
            "loss": float(self.loss_sum) / max(self.batches, 1),
            "lr": optimizer.param_groups[0]["lr"],
            "images_per_s": self.images * env.world_size / seconds,
            "images_per_s_per_device": self.images / seconds,
            "data_wait": min(1.0, self.data_time / seconds),
            "step_time": seconds / max(self.batches, 1),
            "memory_gb": _memory_gb(env.device),
            "skipped_steps": int(self.skipped),  # fp16 overflows skipped by the loss scaler
        }
        self.reset()
        return record


CHECKPOINT_HINT = "checkpoints/latest in the run directory"


def _memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    import psutil

    return psutil.Process().memory_info().rss / 2**30


def _save(
    engine, run_dir: Path, state: RunState, cfg: Config, env: DistEnv, suffix: str = ""
) -> str:
    return ckpt.save_checkpoint(
        engine,
        run_dir,
        state.global_step,
        dict(state.__dict__),
        cfg.train.keep_last,
        env.is_main,
        suffix,
    )


def _evaluate(
    engine, loader, cfg: Config, run_dir: Path, state: RunState, tracker: Tracker, autocast
) -> dict:
    metrics = evaluate(
        engine.module, loader, cfg, run_dir / "eval", autocast=autocast, progress=False
    )
    if tracker.enabled:  # a picture of predictions (and attention) on val crops
        batch = next(iter(loader.epoch(0)))
        name = f"predictions_epoch{state.epoch:03d}.png"
        path = prediction_panel(engine.module, batch, run_dir / "pictures" / name)
        tracker.log_images(state.global_step, {"val/predictions": path})
    engine.module.train()
    if metrics is not None:
        tracker.log(
            {
                "step": state.global_step,
                "epoch": state.epoch,
                "split": "val",
                **{k: v for k, v in metrics.items() if not math.isnan(v)},
            }
        )
    return metrics or {}
