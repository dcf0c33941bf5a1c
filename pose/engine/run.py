"""Training as `posescale-train` runs it: the config loaded and checked, distribution started,
the run folder trained (or resumed), and what ended it said in one line with its exit code:

    0  the run reached its last step
    1  it failed while training (a non-finite loss or weight, too many samples that do not
       decode, a checkpoint that could not be written, a collective that timed out or lost a
       peer: the message names the rank and host)
    2  it could not start (config, shards, the checkpoint to resume, a run folder in use, the
       distributed environment)
    75 (EX_TEMPFAIL) a stop signal (SIGTERM, SIGUSR1, SIGUSR2) made it write a checkpoint and
       stop early: the same command resumes
    130 Ctrl-C outside the training loop (nothing saved)
"""

from __future__ import annotations

import signal
import sys

from pose.config import ConfigError, config_yaml, load_config
from pose.data.shards import ShardError
from pose.distributed import (
    DistributedSetupError,
    init_distributed,
    is_collective_failure,
    shutdown,
    silent_ranks,
    where_am_i,
)
from pose.engine.errors import CheckpointError, TrainingError
from pose.engine.trainer import TrainResult, train
from pose.eval.datasets import datasets_table, split_metrics
from pose.eval.evaluate import print_metrics
from pose.folders import RunFolder, RunFolderBusy
from pose.models.weights import WeightsError

EXIT_FAILED, EXIT_NOT_STARTED, EXIT_STOPPED, EXIT_INTERRUPTED = 1, 2, 75, 130
NOT_STARTED = (
    ConfigError,
    ShardError,
    DistributedSetupError,
    CheckpointError,
    RunFolderBusy,
    WeightsError,  # model.pretrained that cannot be read or does not fit
)


def run_training(config: str, overrides: list[str], print_config: bool = False) -> int:
    """Train as `config` with `overrides` says (or print the resolved config); the exit code."""
    env = None
    try:
        cfg = load_config(config, overrides)
        if print_config:
            print(config_yaml(cfg), end="")
            return 0
        env = init_distributed(cfg.launch)
        run = RunFolder(cfg.run.dir) if cfg.run.dir else RunFolder.default_for(config)
        result = train(cfg, run.path, env)
    except NOT_STARTED as e:
        return _say(f"train: error: {e}", EXIT_NOT_STARTED)
    except TrainingError as e:
        return _say(f"train: stopped: {e}", EXIT_FAILED)
    except KeyboardInterrupt:  # before the loop catches Ctrl-C, or after it let go
        return _say("train: interrupted (Ctrl-C) outside the training loop: nothing saved", 130)
    except RuntimeError as e:
        if not is_collective_failure(e):
            raise
        return _say(collective_failure(e), EXIT_FAILED)
    finally:
        shutdown()
    if env.is_main:
        report(result)
    if result.stopped:
        name = signal.Signals(result.stop_signal).name
        return _say(
            f"train: stopped by {name} after writing a checkpoint at step {result.step}; run "
            f"the same command again to resume (exit code {EXIT_STOPPED})",
            EXIT_STOPPED,
        )
    return 0


def report(result: TrainResult) -> None:
    print(
        f"train: {result.step} steps ({result.images} images), {result.epochs} epochs, "
        f"precision {result.precision}"
    )
    per_dataset = split_metrics(result.metrics)
    if len(per_dataset) > 1:
        print(datasets_table(per_dataset))
    elif result.metrics:
        print_metrics(result.metrics)


def collective_failure(error: RuntimeError) -> str:
    silent = silent_ranks()
    culprit = (
        f"not heard from: {'; '.join(silent)}"
        if silent
        else "another rank has died, hung or lost its link"
    )
    return (
        f"train: error: a collective failed on {where_am_i()}: {str(error).splitlines()[0]}\n"
        f"train: {culprit} (launch.collective_timeout_s bounds the wait); run the same command "
        "again to resume from the last checkpoint"
    )


def _say(message: str, code: int) -> int:
    print(message, file=sys.stderr)
    return code
