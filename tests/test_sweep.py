"""Sweeps: sweep files, --dry-run and --local without Slurm, and a real one-node Slurm cluster
(slurm/local-cluster.sh) for job arrays, multi-task jobs, requeue, the time-out signal and
cancel."""

import json
import os
import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import clean_env, tiny_overrides

from pose.config import ConfigError
from pose.sweep.compare import comparison_table, group_runs, local_runs, summarise
from pose.sweep.spec import load_sweep, plan_runs, run_config
from pose.sweep.submit import read_manifest
from pose.tracking import read_metrics

ROOT = Path(__file__).resolve().parents[1]


def write_sweep(
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


def sweep_cli(*args, env=None, timeout=900):
    return subprocess.run(
        [sys.executable, "launch/sweep.py", *map(str, args)],
        cwd=ROOT,
        env=clean_env(**(env or {})),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def val_ann(synthetic_dataset):
    return synthetic_dataset / "annotations" / "person_keypoints_val.json"


# --------------------------------------------------------------------------------------------
# Without Slurm
# --------------------------------------------------------------------------------------------


def test_sweep_file_expands_grid_times_list_with_names_and_tags(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "base": "configs/demo.yaml",
                "overrides": ["train.epochs=2"],
                "grid": {"model.attention": ["none", "partwise"], "seed": [0, 1]},
                "runs": [["train.lr=0.001"], ["train.lr=0.0005"]],
            }
        )
    )
    sweep = load_sweep(path, ["train.batch_size=4"])
    assert sweep.name == "s" and len(sweep.runs) == 8
    names = [r.name for r in sweep.runs]
    assert names[0] == "attention-none_seed-0_lr-0.001" and len(set(names)) == 8
    assert names[-1] == "attention-partwise_seed-1_lr-0.0005"
    run = sweep.runs[-1]
    assert run.overrides[:2] == ("train.epochs=2", "train.batch_size=4")
    cfg = run_config(sweep, run, tmp_path / "runs" / run.name)
    got = (cfg.model.attention, cfg.seed, cfg.train.lr, cfg.train.epochs)
    assert got == ("partwise", 1, 5e-4, 2)
    assert cfg.log.group == "s" and cfg.log.name == f"s/{run.name}"
    assert cfg.log.tags == ["attention=partwise", "seed=1", "lr=0.0005"]
    assert cfg.run.dir == str(tmp_path / "runs" / run.name)


def test_one_key_that_differs_names_runs_by_it_alone():
    from pose.sweep.spec import SweepFile

    runs = plan_runs(SweepFile(base="x", grid={"model.backbone": ["resnet50"], "seed": [0, 1, 2]}))
    assert [r.name for r in runs] == ["seed-0", "seed-1", "seed-2"]
    assert runs[0].varying == {"seed": 0}


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"base": "configs/demo.yaml", "slurm": {"gpus": 2}}, "unknown config key 'slurm.gpus'"),
        ({"base": "configs/demo.yaml", "slurm": {"nodes": 0}}, "'slurm.nodes': 0 must be positive"),
        (
            {"base": "configs/demo.yaml", "grid": {"model.attention": ["none", "holstic"]}},
            "run 'attention-holstic': config key 'model.attention': 'holstic' is not allowed",
        ),
        (
            {"base": "configs/demo.yaml", "grid": {"train.lr": []}},
            "'grid.train.lr': needs at least",
        ),
        ({"base": "configs/nope.yaml"}, "base config 'configs/nope.yaml' not found"),
        ({"grid": {"seed": [0]}}, "'base': name the base config"),
    ],
)
def test_bad_sweep_files_fail_before_submitting_naming_the_key(tmp_path, spec, message):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_sweep(path)


def test_dry_run_prints_runs_and_the_sbatch_array_without_slurm(tmp_path):
    path = tmp_path / "gpu.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "base": "configs/coco_res50_256x192.yaml",
                "grid": {"model.attention": ["none", "holistic", "partwise"], "seed": [0, 1]},
                "slurm": {
                    "partition": "gpu",
                    "account": "pose",
                    "nodes": 2,
                    "gpus_per_node": 4,
                    "cpus_per_task": 8,
                    "mem_gb": 200,
                    "time_min": 600,
                    "max_running": 2,
                    "sbatch": {"exclusive": True},
                    "setup": ["module load cuda"],
                },
            }
        )
    )
    env = {"PATH": "/usr/local/bin:/bin"}  # no srun here, whatever this machine has
    done = sweep_cli(path, "--dry-run", "--out", tmp_path / "sw", env=env)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "6 runs" in out and "attention-partwise_seed-1:" in out
    for line in (
        "--array=0-5%2",
        "--partition=gpu",
        "--account=pose",
        "--nodes=2",
        "--ntasks-per-node=4",
        "--gpus-per-node=4",
        "--cpus-per-task=8",
        "--mem=200GB",
        "--time=600",
        "--signal=USR2@120",
        "--requeue",
        "--exclusive",
    ):
        assert f"#SBATCH {line}\n" in out, line
    assert "module load cuda" in out and "submitit.core._submit" in out
    assert not (tmp_path / "sw").exists()


@pytest.mark.slow
def test_local_sweep_runs_and_compares_without_slurm(shards, val_ann, tmp_path):
    path = write_sweep(
        tmp_path / "local.yaml",
        shards,
        val_ann,
        {"model.attention": ["none", "holistic"]},
        **{"train.max_steps": 6, "train.eval_every": 1},
    )
    out = tmp_path / "sweep"
    done = sweep_cli(path, "--local", "--out", out)
    assert done.returncode == 0, done.stdout + done.stderr
    manifest = read_manifest(out)
    assert manifest["executor"] == "local" and len(manifest["runs"]) == 2
    assert "attention-holistic" in done.stdout and "done" in done.stdout
    for run in manifest["runs"]:
        records = read_metrics(run["run_dir"])
        assert records[0]["split"] == "run" and records[0]["launcher"] == "single"
        assert [r["step"] for r in records if r["split"] == "train"][-1] == 6
        assert any(r["split"] == "val" and "AP" in r for r in records)
    again = sweep_cli(path, "--local", "--out", out)
    assert again.returncode == 2 and "already holds a sweep" in again.stderr
    again = sweep_cli(path, "--local", "--out", out, "--resubmit")  # finished runs end at once
    assert again.returncode == 0, again.stdout + again.stderr
    for run in read_manifest(out)["runs"]:
        starts = [r for r in read_metrics(run["run_dir"]) if r["split"] == "run"]
        assert [(s["step"], s["resumed"]) for s in starts] == [(0, False), (6, True)]
    compared = subprocess.run(
        [sys.executable, "launch/compare.py", str(out)],
        cwd=ROOT,
        env=clean_env(),
        capture_output=True,
        text=True,
    )
    assert compared.returncode == 0, compared.stderr
    assert "| attention=none | 1 |" in compared.stdout
    assert "| attention=holistic | 1 |" in compared.stdout
    for name in ("comparison.md", "ap.png", "loss.png"):
        assert (out / "compare" / name).stat().st_size > 0


def write_fake_runs(folder: Path) -> None:
    """Two variants, two seeds each, as a training run writes them."""
    for variant, aps in (("none", (0.5, 0.7)), ("partwise", (0.6, 0.6))):
        for seed, ap in enumerate(aps):
            run = folder / f"{variant}-{seed}"
            run.mkdir(parents=True)
            config = {
                "seed": seed,
                "model": {"attention": variant},
                "run": {"dir": str(run)},
                "log": {"wandb": "off", "name": run.name},
            }
            (run / "config.yaml").write_text(yaml.safe_dump(config))
            lines = [
                {
                    "step": 0,
                    "epoch": 0,
                    "split": "run",
                    "params": 2_000_000 + seed,
                    "steps_per_epoch": 10,
                },
                *(
                    {
                        "step": s,
                        "epoch": s // 10,
                        "split": "train",
                        "loss": 1 / s,
                        "images_per_s": 100.0 + s,
                    }
                    for s in (5, 10, 15, 20)
                ),
                {"step": 10, "epoch": 1, "split": "val", "AP": ap + 0.1, "AP50": 0.9},
                {"step": 20, "epoch": 2, "split": "val", "AP": ap, "AP50": 0.8},
            ]
            (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))


def test_compare_table_means_and_spreads_over_seeds(tmp_path):
    write_fake_runs(tmp_path)
    runs = local_runs(tmp_path)
    keys, variants = group_runs(runs, None)
    assert keys == ["model.attention"] and [v.label for v in variants] == [
        "attention=none",
        "attention=partwise",
    ]
    first = summarise(variants[0].runs[0])
    assert first["AP"] == 0.5 and first["best AP"] == pytest.approx(0.6)
    assert first["images/s"] == 115.0 and first["epochs"] == 2.0  # the first window left out
    table = comparison_table(variants).splitlines()
    assert table[2] == (
        "| attention=none | 2 | 0.600 ± 0.141 | 0.700 ± 0.141 | 0.800 ± 0.000 "
        "| - | - | - | - | 2.00 ± 0.00 | 115 ± 0 |"
    )
    assert table[3].startswith("| attention=partwise | 2 | 0.600 ± 0.000 | 0.700 ± 0.000 |")


def test_compare_logs_a_summary_run_to_wandb_offline(tmp_path):
    write_fake_runs(tmp_path / "runs")
    out = tmp_path / "cmp"
    done = subprocess.run(
        [
            sys.executable,
            "launch/compare.py",
            str(tmp_path / "runs"),
            "--out",
            str(out),
            "--log-wandb",
            "offline",
        ],
        cwd=ROOT,
        env=clean_env(WANDB_DIR=str(tmp_path / "wandb")),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "logged to wandb (offline)" in done.stdout
    offline = list((out / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(offline) == 1 and offline[0].stat().st_size > 0
    images = list((out / "wandb").glob("offline-run-*/files/media/images/plots/*.png"))
    assert len(images) == 2, "ap.png and loss.png logged"


# --------------------------------------------------------------------------------------------
# A real one-node Slurm
# --------------------------------------------------------------------------------------------


def _why_no_slurm() -> str | None:
    have = all(shutil.which(b) for b in ("slurmctld", "slurmd", "sbatch", "munged", "slurmdbd"))
    if have:
        return None
    if os.geteuid() != 0:
        return "Slurm is not installed and this user is not root (cannot apt-get install it)"
    if not shutil.which("apt-get"):
        return "Slurm is not installed and there is no apt-get to install it"
    return None


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A one-node Slurm cluster of our own for this module; stopped (only its own daemons)
    afterwards. Skips where it cannot run, except under CI=true."""
    reason = _why_no_slurm()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    state = tmp_path_factory.mktemp("slurm")
    env = {**os.environ, "POSESCALE_SLURM_DIR": str(state)}
    script = ["bash", str(ROOT / "slurm" / "local-cluster.sh")]
    started = subprocess.run(
        [*script, "start"], env=env, capture_output=True, text=True, timeout=900
    )
    if started.returncode != 0:
        logs = "\n".join(
            f"== {p.name}\n{p.read_text()[-2000:]}" for p in sorted((state / "log").glob("*.log"))
        )
        pytest.fail(f"local Slurm did not start: {started.stderr}\n{logs}")
    try:
        yield {"SLURM_CONF": str(state / "etc" / "slurm.conf")}
    finally:
        subprocess.run([*script, "stop"], env=env, capture_output=True, timeout=120)


def slurm_run(slurm, *args) -> str:
    done = subprocess.run(
        list(args), env=clean_env(**slurm), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, f"{args}: {done.stderr}"
    return done.stdout


def wait_until(predicate, timeout: float, what: str, poll: float = 0.5):
    end = time.time() + timeout
    while time.time() < end:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def train_steps(run_dir: Path) -> list[int]:
    try:
        return [r["step"] for r in read_metrics(run_dir) if r["split"] == "train"]
    except (OSError, json.JSONDecodeError):
        return []


def status_of(out: Path, slurm) -> dict[str, str]:
    from pose.sweep.submit import sweep_status

    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = slurm["SLURM_CONF"]
    try:
        return {r.name: r.state for r in sweep_status(out)}
    finally:
        if old is None:
            os.environ.pop("SLURM_CONF")
        else:
            os.environ["SLURM_CONF"] = old


def start_now(slurm, job_id: str) -> bool:
    """Slurm holds a requeued job for 120 s; bring its begin time to two seconds from now (not
    `now`: a job started while the node still clears the old instance fails with "credential
    revoked" and is held again). `scontrol show job`, as squeue hides a job while Slurm
    requeues it."""
    from datetime import datetime

    fields = dict(
        f.split("=", 1)
        for f in slurm_run(slurm, "scontrol", "show", "job", "-o", job_id).split()
        if "=" in f
    )
    if fields.get("JobState") == "RUNNING" and fields.get("Restarts", "0") != "0":
        return True
    if fields.get("JobState") == "PENDING" and fields.get("Reason") == "BeginTime":
        eligible = datetime.fromisoformat(fields["EligibleTime"])
        if (eligible - datetime.now()).total_seconds() > 5:
            subprocess.run(
                ["scontrol", "update", f"jobid={job_id}", "starttime=now+2"],
                env=clean_env(**slurm),
                capture_output=True,
                timeout=60,
            )
    return False


def job_log(out: Path) -> str:
    return "\n".join(p.read_text()[-3000:] for p in sorted(out.rglob("*_log.*")))


@pytest.mark.slow
def test_slurm_sweep_of_three_variants_completes_and_compares(slurm, shards, val_ann, tmp_path):
    path = write_sweep(
        tmp_path / "three.yaml",
        shards,
        val_ann,
        {"model.attention": ["none", "holistic", "partwise"]},
        **{"train.max_steps": 6, "train.eval_every": 1},
    )
    out = tmp_path / "sweep"
    done = sweep_cli(path, "--out", out, "--wait", env=slurm)
    assert done.returncode == 0, done.stdout + done.stderr + job_log(out)
    manifest = read_manifest(out)
    assert manifest["executor"] == "slurm"
    array = {r["job_id"].split("_")[0] for r in manifest["runs"]}
    assert len(array) == 1, "one job array"
    assert sorted(r["job_id"].split("_")[1] for r in manifest["runs"]) == ["0", "1", "2"]
    status = sweep_cli("status", out, env=slurm)
    assert status.stdout.count(" done ") == 3, status.stdout
    for run in manifest["runs"]:
        cfg = yaml.safe_load((Path(run["run_dir"]) / "config.yaml").read_text())
        assert cfg["log"]["group"] == "three" and cfg["model"]["attention"] in run["name"]
    compared = subprocess.run(
        [sys.executable, "launch/compare.py", str(out), "--by", "model.attention"],
        cwd=ROOT,
        env=clean_env(),
        capture_output=True,
        text=True,
    )
    assert compared.returncode == 0, compared.stderr
    rows = [line for line in compared.stdout.splitlines() if line.startswith("| attention=")]
    assert len(rows) == 3 and all(" - |" not in row.split("|", 4)[3] for row in rows)
    assert (out / "compare" / "ap.png").is_file() and (out / "compare" / "loss.png").is_file()


@pytest.mark.slow
def test_slurm_job_with_two_tasks_trains_two_gloo_ranks(slurm, shards, val_ann, tmp_path):
    path = write_sweep(
        tmp_path / "ddp.yaml",
        shards,
        val_ann,
        {"seed": [0]},
        slurm={"tasks_per_node": 2},
        **{"train.max_steps": 6, "train.zero_stage": 1},
    )
    out = tmp_path / "sweep"
    done = sweep_cli(path, "--out", out, "--wait", env=slurm)
    assert done.returncode == 0, done.stdout + done.stderr + job_log(out)
    run_dir = Path(read_manifest(out)["runs"][0]["run_dir"])
    start = read_metrics(run_dir)[0]
    assert (start["world_size"], start["launcher"]) == (2, "slurm")
    assert train_steps(run_dir)[-1] == 6
    logs = job_log(out)
    assert "_0_log.out" in " ".join(p.name for p in out.rglob("*_log.out"))
    assert "_1_log.err" in " ".join(p.name for p in out.rglob("*_log.err")), logs


@pytest.mark.slow
def test_requeued_and_timed_out_jobs_resume_from_their_checkpoints(
    slurm, shards, val_ann, tmp_path
):
    """Run 0 is requeued by `scontrol requeue` (SIGTERM, then Slurm requeues it); run 1 gets
    the time-out signal (USR2), checkpoints and is requeued by submitit. Both come back and
    carry on from their checkpoint, then the sweep is cancelled."""
    path = write_sweep(
        tmp_path / "requeue.yaml",
        shards,
        val_ann,
        {"seed": [0, 1]},
        **{"train.max_steps": 2000, "train.checkpoint_every": 1000},
    )
    out = tmp_path / "sweep"
    done = sweep_cli(path, "--out", out, env=slurm)
    assert done.returncode == 0, done.stderr
    runs = read_manifest(out)["runs"]
    dirs = [Path(r["run_dir"]) for r in runs]
    for d in dirs:
        wait_until(lambda d=d: len(train_steps(d)) >= 3, 240, f"{d.name} to train")
    slurm_run(slurm, "scontrol", "requeue", runs[0]["job_id"])
    slurm_run(slurm, "scancel", "--signal=USR2", runs[1]["job_id"])
    for run in runs:
        wait_until(
            lambda r=run: status_of(out, slurm)[r["name"]] == "requeued",
            120,
            f"{run['name']} to be requeued\n{job_log(out)}",
        )
        wait_until(lambda r=run: start_now(slurm, r["job_id"]), 120, f"{run['name']} to start")
    for d in dirs:
        wait_until(
            lambda d=d: (
                sum(r["split"] == "run" for r in read_metrics(d)) == 2
                and train_steps(d)[-1]
                > [r for r in read_metrics(d) if r["split"] == "run"][1]["step"]
            ),
            240,
            f"{d.name} to resume and train\n{job_log(out)}",
        )
    cancelled = sweep_cli("cancel", out, env=slurm)
    assert "cancelled 2 job(s)" in cancelled.stdout, cancelled.stdout + cancelled.stderr
    for d in dirs:
        starts = [r for r in read_metrics(d) if r["split"] == "run"]
        assert [s["resumed"] for s in starts] == [False, True]
        resumed_at = starts[1]["step"]
        assert resumed_at >= 6, "resumed from the checkpoint written on the signal"
        steps = train_steps(d)
        assert steps == sorted(set(steps)), "no step trained twice: it did not start over"
        signalled = "SIGTERM" if d == dirs[0] else "SIGUSR2"
        assert f"{signalled} received, checkpoint written at step {resumed_at}" in job_log(out)
    # submitit checkpointed the timed-out job's callable with one more requeue counted.
    from submitit.core.utils import JobPaths

    pickled = JobPaths(out / "submitit" / "%j", job_id=runs[1]["job_id"]).submitted_pickle
    assert pickle.loads(pickled.read_bytes()).function.requeues == 1
    states = wait_until(
        lambda: (s := status_of(out, slurm)) and all(v == "cancelled" for v in s.values()) and s,
        120,
        "the runs to be cancelled",
    )
    assert set(states.values()) == {"cancelled"}


@pytest.mark.slow
def test_sbatch_template_runs_torchrun_and_requeues_near_the_time_limit(
    slurm, shards, val_ann, tmp_path
):
    """slurm/train.sbatch without submitit: srun starts torchrun with two processes; the
    time-limit signal (USR1 to the batch shell) makes them checkpoint, the script requeues the
    job, and the requeued job resumes in the same run folder."""
    run_dir = tmp_path / "run"
    overrides = tiny_overrides(
        shards, run_dir, **{"data.val_ann": val_ann, "train.epochs": 500, "train.zero_stage": 1}
    )
    env = clean_env(**slurm, CONFIG="configs/demo.yaml", PROCS_PER_NODE="2", RUN_DIR=str(run_dir))
    log = tmp_path / "job.out"
    submitted = subprocess.run(
        [
            "sbatch",
            "--parsable",
            "--nodes=1",
            "--gpus-per-node=0",
            "--cpus-per-task=2",
            "--mem=4G",
            f"--output={log}",
            "slurm/train.sbatch",
            *overrides,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert submitted.returncode == 0, submitted.stderr
    job = submitted.stdout.strip()
    wait_until(lambda: len(train_steps(run_dir)) >= 2, 240, f"training to start\n{_tail(log)}")
    slurm_run(slurm, "scancel", "--batch", "--signal=USR1", job)
    wait_until(lambda: "requeueing job" in _tail(log), 120, f"the requeue\n{_tail(log)}")
    wait_until(
        lambda: start_now(slurm, job),
        120,
        "the requeued job to start\n"
        + slurm_run(slurm, "scontrol", "show", "job", job)
        + _tail(log),
    )
    wait_until(
        lambda: (
            sum(r["split"] == "run" for r in read_metrics(run_dir)) == 2
            and train_steps(run_dir)[-1]
            > [r for r in read_metrics(run_dir) if r["split"] == "run"][1]["step"]
        ),
        240,
        f"the run to resume\n{_tail(log)}",
    )
    slurm_run(slurm, "scancel", job)
    starts = [r for r in read_metrics(run_dir) if r["split"] == "run"]
    assert [(s["world_size"], s["launcher"], s["resumed"]) for s in starts] == [
        (2, "torchrun", False),
        (2, "torchrun", True),
    ]
    assert starts[1]["step"] > 0 and starts[1]["step"] % 2 == 0, "ranks agree at a log step"
    steps = train_steps(run_dir)
    assert steps == sorted(set(steps))
    assert "(restart 1)" in _tail(log)


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-4000:] if path.is_file() else ""


def test_compare_reads_runs_back_from_the_wandb_api(monkeypatch):
    """`--wandb ENTITY/PROJECT/GROUP`: the history rows wandb keeps (`split/metric` keys) come
    back as metrics.jsonl records, so the same table is made from either source (the API is
    replaced here: this machine has no network)."""
    import wandb

    from pose.sweep.compare import CompareError, wandb_runs

    class FakeRun:
        def __init__(self, name, attention, ap):
            self.name = f"sweep/{name}"
            self.config = {"seed": 0, "model": {"attention": attention}, "log": {"wandb": "online"}}
            self.rows = [
                {"_step": 0, "run/params": 3e6, "run/steps_per_epoch": 10},
                {
                    "_step": 10,
                    "train/loss": 0.5,
                    "train/images_per_s": 90.0,
                    "train/epoch": 1,
                    "val/AP": None,
                },
                {"_step": 20, "train/loss": 0.4, "train/images_per_s": 100.0},
                {"_step": 20, "val/AP": ap, "val/AP50": 0.9, "val/epoch": 2},
            ]

        def scan_history(self):
            return iter(self.rows)

    asked = {}

    class FakeApi:
        def __init__(self, timeout):
            pass

        def runs(self, path, filters):
            asked.update(path=path, filters=filters)
            return [
                FakeRun("attention-none", "none", 0.4),
                FakeRun("attention-partwise", "partwise", 0.5),
            ]

    monkeypatch.setattr(wandb, "Api", FakeApi)
    runs = wandb_runs("me/posescale/attention")
    assert asked == {"path": "me/posescale", "filters": {"group": "attention"}}
    assert [r.name for r in runs] == ["attention-none", "attention-partwise"]
    assert runs[0].of("val") == [{"step": 20, "split": "val", "AP": 0.4, "AP50": 0.9, "epoch": 2}]
    keys, variants = group_runs(runs, None)
    assert keys == ["model.attention"]
    summary = summarise(variants[1].runs[0])
    assert (summary["AP"], summary["params"], summary["images/s"], summary["epochs"]) == (
        0.5,
        3e6,
        100.0,
        2.0,
    )
    with pytest.raises(CompareError, match="ENTITY/PROJECT/GROUP"):
        wandb_runs("me/posescale")


def test_status_reads_results_processes_and_progress(tmp_path, monkeypatch):
    """Without Slurm at hand: submitit's result files say done or failed (with the error's
    last line), a local job whose process is gone is cancelled, a Slurm job nobody knows is
    unknown; progress comes from the run folders."""
    import cloudpickle

    from pose.sweep.submit import format_status, sweep_status

    monkeypatch.setenv("PATH", "/usr/local/bin:/bin")  # no sacct/squeue, whatever is here
    folder = tmp_path / "submitit"
    runs = []
    for name, job_id, result in (
        ("a", "101", ("success", {})),
        ("b", "102", ("error", "Traceback...\nValueError: bad shard")),
        ("c", "99999999", None),
    ):
        run_dir = tmp_path / "runs" / name
        run_dir.mkdir(parents=True)
        records = [
            {"step": 0, "epoch": 0, "split": "run"},
            {"step": 5, "epoch": 1, "split": "run"},
            {"step": 8, "epoch": 1, "split": "train", "loss": 1.0},
            {"step": 8, "epoch": 2, "split": "val", "AP": 0.25},
        ]
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        if result:
            job_folder = folder / job_id
            job_folder.mkdir(parents=True)
            (job_folder / f"{job_id}_0_result.pkl").write_bytes(cloudpickle.dumps(result))
        runs.append({"name": name, "job_id": job_id, "run_dir": str(run_dir), "overrides": []})
    manifest = {"executor": "local", "submitit_folder": str(folder), "runs": runs}
    (tmp_path / "sweep.json").write_text(json.dumps(manifest))
    rows = sweep_status(tmp_path)
    assert [(r.state, r.detail) for r in rows] == [
        ("done", ""),
        ("failed", "ValueError: bad shard"),
        ("cancelled", "process ended without a result"),
    ]
    assert (rows[0].restarts, rows[0].epoch, rows[0].step, rows[0].best_ap) == (1, 2, 8, 0.25)
    assert "0.250" in format_status(rows)
    (tmp_path / "sweep.json").write_text(json.dumps(manifest | {"executor": "slurm"}))
    assert [r.state for r in sweep_status(tmp_path)] == ["done", "failed", "unknown"]
