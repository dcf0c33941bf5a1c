"""Shared test fixtures: the real COCO fixtures (outside the project), a small synthetic set,
and the local Slurm cluster (one node, or several namespace hosts); helpers for killed runs."""

from __future__ import annotations

import contextlib
import importlib
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml

from pose.caches import use_cache_folders
from pose.folders import MODEL_STATES_FILE, RunFolder

use_cache_folders()  # as the entry points do: tools write their caches under the project

ROOT = Path(__file__).resolve().parents[1]
FIXTURES_ENV = "POSESCALE_FIXTURES"
# Set by the GPU check (benchmarks/gpu_check.py): a missing fixture or optional extra fails
# there, as under CI, instead of skipping.
REQUIRE_ALL_ENV = "POSESCALE_REQUIRE_ALL"


def absence_fails() -> bool:
    """Whether a missing fixture or extra is a failure (CI, the GPU check) rather than a skip."""
    return os.environ.get("CI") == "true" or os.environ.get(REQUIRE_ALL_ENV) == "1"


def import_extra(module: str, extra: str):
    """`module`, which an optional extra of posescale's installs (`extra`: its name). Without it
    the calling test module's tests are skipped, the extra named, instead of its collection
    failing; where absence fails (CI, the GPU check), it fails, naming the extra."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        reason = f"needs the {extra} extra (pip install 'posescale[{extra}]'): {e}"
    if absence_fails():
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def fixtures_dir() -> Path:
    """`$POSESCALE_FIXTURES`, else the shared fixtures beside the checkout."""
    return Path(os.environ.get(FIXTURES_ENV, ROOT.parent / "shared" / "fixtures"))


@pytest.fixture(scope="session")
def coco_fixtures() -> Path:
    """Folder with the real COCO images, annotations and detections. Skips when absent, except
    under CI=true or in the GPU check, where their absence is a failure."""
    folder = fixtures_dir() / "coco"
    if not (folder / "test_coco.json").is_file():
        reason = (
            f"real COCO fixtures not found at {folder} (set {FIXTURES_ENV} to the folder that "
            "holds coco/test_coco.json)"
        )
        if absence_fails():
            pytest.fail(reason)
        pytest.skip(reason)
    return folder


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory, request) -> Path:
    """A folder for the runs one test module shares, removed when its tests end.

    A whole suite trains a few hundred runs of ~130 MB checkpoints; kept to the end (as
    `tmp_path_factory` keeps them) they fill a CI disk with a few GB free. Per-test folders go
    at each test's end by `tmp_path_retention_policy = failed` (setup.cfg)."""
    path = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory) -> Path:
    """A small synthetic COCO-format dataset, generated once per test session."""
    from data_prep.synthetic import generate

    out = tmp_path_factory.mktemp("synthetic")
    generate(out, seed=7, train_images=24, val_images=12, progress=False)
    return out


@pytest.fixture(scope="session")
def shards(synthetic_dataset, tmp_path_factory):
    """The synthetic set sharded at a small detail, for training runs."""
    from pose.data.sharding import ShardRequest, shard_dataset

    out = tmp_path_factory.mktemp("engine")
    for split in ("train", "val"):
        request = ShardRequest(
            annotations=synthetic_dataset / "annotations" / f"person_keypoints_{split}.json",
            images=synthetic_dataset / "images" / split,
            out=out / split,
            split=split,
            detail=(96, 64),
            progress=False,
        )
        shard_dataset(request)
    return out


@pytest.fixture(scope="session")
def tiny_overrides():
    """A function: the overrides of a seconds-long training run on `shards` into `run_dir`
    (a tiny ResNet-18 at 96x64, fp32, no wandb), updated by `extra`. `shards` None: no data
    paths (a run over several datasets names them in data.datasets)."""

    def overrides(shards: Path | None, run_dir: Path, **extra) -> list[str]:
        data = {}
        if shards is not None:
            data = {
                "data.train_shards": shards / "train",
                "data.val_shards": shards / "val",
                "data.val_ann": shards.parent.parent / "dummy",
            }
        values = {
            **data,
            "data.image_size": "[96,64]",
            "data.num_workers": 0,
            "model.backbone": "resnet18",
            "model.deconv_filters": 32,
            "train.batch_size": 8,
            "train.budget_images": 0,  # configs/demo.yaml trains to an image budget
            "schedule.warmup_steps": 2,
            "log.every_steps": 2,
            "checkpoint.every_steps": 4,
            "eval.every_epochs": 0,
            "engine.precision": "fp32",
            "log.wandb": "off",
            "run.dir": run_dir,
        }
        values.update(extra)
        return [f"{k}={v}" for k, v in values.items()]

    return overrides


@pytest.fixture(scope="session")
def write_sweep(tiny_overrides):
    """A function that writes a sweep file over the tiny training runs of `shards`."""

    def write(
        path: Path, shards: Path, val_ann: Path, grid: dict, slurm: dict | None = None, **extra
    ) -> Path:
        overrides = tiny_overrides(shards, "unused", **{"data.val_ann": val_ann, **extra})
        overrides = [o for o in overrides if not o.startswith("run.dir=")]
        spec = {
            "base": "configs/demo.yaml",
            "name": path.stem,
            "overrides": overrides,
            "grid": grid,
            "slurm": {"cpus_per_task": 1, "time_min": 20, "signal_delay_s": 30, **(slurm or {})},
        }
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
        return path

    return write


@pytest.fixture(scope="session")
def val_ann(synthetic_dataset):
    return synthetic_dataset / "annotations" / "person_keypoints_val.json"


@pytest.fixture(scope="session")
def clean_env():
    """A function: this process's environment without the distributed variables an in-process
    test set, one intra-op thread, unbuffered output, updated by `extra`."""

    def environment(**extra) -> dict:
        from pose.distributed import TORCHRUN_VARS

        env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARS}
        return {**env, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}

    return environment


@pytest.fixture(scope="session")
def run_python(clean_env):
    """A function: run `python ARGS` from the repository root in a clean environment."""

    def run(args: list[str], env: dict | None = None, timeout: float = 600):
        return subprocess.run(
            [sys.executable, *map(str, args)],
            cwd=ROOT,
            env=clean_env(**(env or {})),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    return run


@pytest.fixture(scope="session")
def sweep_cli(run_python):
    """A function: run `launch/sweep.py ARGS` (env: extra variables)."""

    def run(*args, env: dict | None = None, timeout: float = 900):
        return run_python(["launch/sweep.py", *args], env=env, timeout=timeout)

    return run


def why_no_slurm() -> str | None:
    """Why slurm/local-cluster.sh cannot run here (None: it can, installing Slurm if need be)."""
    have = all(shutil.which(b) for b in ("slurmctld", "slurmd", "sbatch", "munged", "slurmdbd"))
    if have:
        return None
    if os.geteuid() != 0:
        return "Slurm is not installed and this user is not root (cannot apt-get install it)"
    if not shutil.which("apt-get"):
        return "Slurm is not installed and there is no apt-get to install it"
    return None


def why_no_namespaces() -> str | None:
    """Why the hosts of `local-cluster.sh start --hosts N` cannot be made here (None: they can,
    tried by making and removing one network namespace)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    missing = [b for b in ("ip", "nsenter", "unshare") if not shutil.which(b)]
    if missing:
        return f"no {', '.join(missing)} on this machine (iproute2, util-linux)"
    name = f"posescale-probe-{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return None


def skip_or_fail(reason: str | None) -> None:
    """Skip with `reason`, except under CI=true, where it is a failure."""
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)


@dataclass(frozen=True)
class SlurmCluster:
    conf: dict[str, str]  # what a command needs to reach it (SLURM_CONF)
    env: dict[str, str]  # a clean environment with it
    script_env: dict[str, str]  # what local-cluster.sh needs to find it (POSESCALE_SLURM_DIR)

    def run(self, *args) -> str:
        done = subprocess.run(list(args), env=self.env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"{args}: {done.stderr}"
        return done.stdout

    def job_fields(self, job_id: str) -> dict[str, str]:
        """`scontrol show job` (squeue hides a job while Slurm requeues it)."""
        out = self.run("scontrol", "show", "job", "-o", job_id)
        return dict(f.split("=", 1) for f in out.split() if "=" in f)

    def start_requeued_now(self, job_id: str) -> bool:
        """Whether the requeued job runs again. Slurm holds a requeued job for 120 s; this
        brings its begin time to two seconds from now (not `now`: a job started while the node
        still clears the old instance fails with "credential revoked" and is held again), once
        (a begin time already near is left alone)."""
        from datetime import datetime

        fields = self.job_fields(job_id)
        if (
            fields.get("JobState") in ("RUNNING", "COMPLETED")
            and fields.get("Restarts", "0") != "0"
        ):
            return True
        if fields.get("JobState") == "PENDING" and fields.get("Reason") == "BeginTime":
            eligible = datetime.fromisoformat(fields["EligibleTime"])
            if (eligible - datetime.now()).total_seconds() > 5:
                subprocess.run(
                    ["scontrol", "update", f"jobid={job_id}", "starttime=now+2"],
                    env=self.env,
                    capture_output=True,
                    timeout=60,
                )
        return False

    def on_host(self, host: str, args: list, **popen) -> subprocess.Popen:
        """Start `args` on one of the cluster's namespace hosts. The process is `args` itself
        (`local-cluster.sh exec` execs into it), so kill() ends it, not just a wrapper."""
        script = ["bash", str(ROOT / "slurm" / "local-cluster.sh"), "exec", host]
        return subprocess.Popen([*script, *map(str, args)], env=self.script_env, **popen)


@contextlib.contextmanager
def local_slurm(state: Path, clean_env, hosts: int = 0):
    """slurm/local-cluster.sh's cluster in `state` (with `hosts` namespace hosts, or this
    machine as its one node); stopped afterwards, its own daemons and hosts only."""
    skip_or_fail(why_no_slurm() or (why_no_namespaces() if hosts else None))
    env = {**os.environ, "POSESCALE_SLURM_DIR": str(state)}
    script = ["bash", str(ROOT / "slurm" / "local-cluster.sh")]
    start = [*script, "start", *(["--hosts", str(hosts)] if hosts else [])]
    started = subprocess.run(start, env=env, capture_output=True, text=True, timeout=900)
    try:
        if started.returncode != 0:
            logs = "\n".join(
                f"== {p.name}\n{p.read_text()[-2000:]}"
                for p in sorted((state / "log").glob("*.log"))
            )
            pytest.fail(f"local Slurm did not start: {started.stderr}\n{logs}")
        conf = {"SLURM_CONF": str(state / "etc" / "slurm.conf")}
        yield SlurmCluster(
            conf, clean_env(**conf), clean_env(**conf, POSESCALE_SLURM_DIR=str(state))
        )
    finally:
        subprocess.run([*script, "stop"], env=env, capture_output=True, timeout=120)


def final_weights(run_dir: Path) -> dict:
    """The model weights of a run's latest checkpoint."""
    run = RunFolder(run_dir)
    path = run.checkpoint(run.latest_tag()) / MODEL_STATES_FILE
    return torch.load(path, map_location="cpu", weights_only=True)["module"]


def kill_at_checkpoint(args: list[str], run_dir: Path, tag: str, env: dict) -> None:
    """Run `python ARGS` from the repository root and SIGKILL it as soon as checkpoint `tag` is
    the latest in `run_dir` (within 300 s); asserts it was killed there."""
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, **quiet)
    folder, deadline = RunFolder(run_dir), time.time() + 300
    while time.time() < deadline and folder.latest_tag() != tag and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert folder.latest_tag() == tag
