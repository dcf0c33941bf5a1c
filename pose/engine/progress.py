"""What a training run says while it runs: the record of each (re)start, a train record every
`log.every_steps` steps (and at a stop and the last step), a progress bar on a terminal or a
plain line every `log.progress_every_s` seconds in a log file, the budget's length, and the
samples that do not decode (named, counted, and the run stopped past `data.max_bad_fraction`).
The loop only tells it that a step is done."""

from __future__ import annotations

import sys
import time

from tqdm import tqdm

from pose.config import LogConfig, TrainConfig
from pose.data.loader import Loader
from pose.distributed import DistEnv, rank_hosts, sum_over_ranks
from pose.engine.budget import BudgetClock, MeasuredBudget
from pose.engine.errors import TrainingError
from pose.engine.schedule import StepPlan, images_per_step
from pose.engine.step_metrics import StepMetrics
from pose.folders import RunFolder
from pose.tracking import StartRecord, Tracker, TrainRecord


class Progress:
    """`cfg`: its own section; `train`: the run's length and batch it reports against;
    `max_bad_fraction`: data.max_bad_fraction, the share of undecodable samples that stops a
    run."""

    def __init__(
        self,
        cfg: LogConfig,
        train: TrainConfig,
        run: RunFolder,
        plan: StepPlan,
        env: DistEnv,
        tracker: Tracker,
        loader: Loader,
        max_bad_fraction: float,
    ):
        self.cfg, self.train, self.run, self.plan, self.env = cfg, train, run, plan, env
        self.tracker, self.loader, self.max_bad_fraction = tracker, loader, max_bad_fraction
        self.images_per_step = images_per_step(train, env.world_size)
        self.bar: tqdm | None = None
        self.bad_reported = 0
        self.last_line = 0.0

    def is_log_step(self, step: int) -> bool:
        return step % self.cfg.every_steps == 0

    def start(self, step: int, start_record: dict, clock: BudgetClock | None) -> None:
        """Say where the run starts (and what its budget is), log the start record (with the
        trainer's `start_record`: params, precision, resumed)."""
        if self.env.is_main:
            if start_record["resumed"]:
                epoch, within = divmod(step, self.plan.steps_per_epoch)
                print(
                    f"train: resuming {self.run.path} at step {step} (epoch {epoch}, step "
                    f"{within} of the epoch)",
                    flush=True,
                )
            line = self._budget_line(clock)
            if line:
                print(f"train: {line}", flush=True)
        self.tracker.log(self._start_record(step, start_record))
        self.bar = tqdm(
            total=self.plan.total_steps or None,
            initial=step,
            disable=not self.env.is_main or not sys.stderr.isatty(),
            unit="step",
        )

    def after_step(self, step: int, stopping: bool, metrics: StepMetrics, lr: float) -> None:
        """A train record when this step ends a log interval, the run or its last step."""
        if self.is_log_step(step) or stopping or self.plan.is_last(step):
            record = metrics.flush(step, self.plan.completed_epochs(step), lr)
            self._log(self._count_bad_samples(self._with_budget(record)))
        self.bar.update(1)

    def budget_measured(self, measured: MeasuredBudget) -> None:
        """A wall-clock budget fixed the run's length."""
        self.bar.total = self.plan.total_steps
        self.bar.refresh()
        if self.env.is_main:
            line = describe_budget(measured, self.plan, self.images_per_step)
            print(f"train: {line}", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def _start_record(self, step: int, extra: dict) -> StartRecord:
        """One record per (re)start: what compare and sweep status read besides the metrics."""
        train, plan, env = self.train, self.plan, self.env
        return StartRecord(
            step,
            plan.completed_epochs(step),
            **extra,
            steps_per_epoch=plan.steps_per_epoch,
            total_steps=plan.total_steps,
            budget_images=train.budget_images,
            budget_minutes=train.budget_minutes,
            world_size=env.world_size,
            hosts=rank_hosts(env),
            launcher=env.source,
        )

    def _budget_line(self, clock: BudgetClock | None) -> str:
        """What the run's budget is, at its start ("" without one)."""
        train, plan = self.train, self.plan
        if train.budget_images:
            epochs = plan.total_steps / plan.steps_per_epoch
            return (
                f"budget of {train.budget_images} images = {plan.total_steps} steps of "
                f"{self.images_per_step} images ({epochs:.1f} epochs)"
            )
        if clock is not None:
            return (
                f"budget of {train.budget_minutes:g} min: steps {clock.start + 1}-{clock.end} "
                "are timed to fix the run's length"
            )
        return ""

    def _with_budget(self, record: TrainRecord) -> TrainRecord:
        """Images seen so far (all ranks) and, with a budget, the part of it used."""
        train, step = self.train, record.step
        record.images = step * self.images_per_step
        if (train.budget_images or train.budget_minutes) and self.plan.known:
            record.budget_used = step / self.plan.total_steps
        return record

    def _count_bad_samples(self, record: TrainRecord) -> TrainRecord:
        """Samples skipped because they do not decode: named in the log as they appear,
        counted in the record, and the run stopped once they are more than
        `data.max_bad_fraction` of those read (on all ranks together)."""
        loader = self.loader
        for name in loader.bad_sample_names[self.bad_reported :]:
            print(f"train: skipped a sample that does not decode: {name}", flush=True)
        self.bad_reported = len(loader.bad_sample_names)
        bad, read = sum_over_ranks([loader.bad_samples, loader.samples_read], self.env)
        record.bad_samples = int(bad)
        limit = self.max_bad_fraction
        if bad > limit * read:
            raise TrainingError(
                f"{int(bad)} of {int(read)} samples read did not decode, more than "
                f"data.max_bad_fraction={limit}; check the shards with "
                f"data_prep.verify {' '.join(map(str, loader.folders))}"
            )
        return record

    def _log(self, record: TrainRecord) -> None:
        self.tracker.log(record)
        epoch = self.plan.epoch_of(record.step)
        self.bar.set_postfix(
            epoch=epoch,
            loss=f"{record.loss:.3g}",
            lr=f"{record.lr:.2e}",
            img_s=f"{record.images_per_s:.0f}",
        )
        if self.bar.disable and self.env.is_main:
            self._plain_line(record, epoch)

    def _plain_line(self, record: TrainRecord, epoch: int) -> None:
        """Without a terminal: one plain line every `log.progress_every_s` seconds."""
        now, step, total = time.time(), record.step, self.plan.total_steps
        if now - self.last_line < self.cfg.progress_every_s and step != total:
            return
        self.last_line = now
        of_total, eta = (f"/{total}", "") if total else ("", "")
        if total and record.step_time > 0:
            seconds = (total - step) * record.step_time * self.train.grad_accum
            eta = f", eta {int(seconds // 60)} min {int(seconds % 60)} s"
        print(
            f"train: step {step}{of_total} (epoch {epoch}), loss {record.loss:.4g}, "
            f"lr {record.lr:.3g}, {record.images_per_s:.1f} images/s{eta}",
            flush=True,
        )


def describe_budget(measured: MeasuredBudget, plan: StepPlan, images_per_step: int) -> str:
    images = plan.total_steps * images_per_step
    first, last = measured.timed_steps
    return (
        f"budget of {measured.budget_minutes:g} min = {plan.total_steps} steps at "
        f"{measured.seconds_per_step:.3g} s/step (timed over steps {first}-{last}): "
        f"{images} images, {images / (plan.steps_per_epoch * images_per_step):.1f} epochs"
    )
