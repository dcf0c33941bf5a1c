"""Sweeps: sweep files, --dry-run and --local without Slurm, and a real one-node Slurm cluster
(slurm/local-cluster.sh) for job arrays, multi-task jobs, requeue, the time-out signal and
cancel."""

import json
import os
import pickle
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from conftest import local_slurm

from pose.sweep.submit import read_manifest
from pose.tracking import read_metrics

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_local_sweep_runs_and_compares_without_slurm(
    shards, val_ann, tmp_path, write_sweep, sweep_cli, run_python
):
    path = write_sweep(
        tmp_path / "local.yaml",
        shards,
        val_ann,
        {"model.attention": ["none", "holistic"]},
        **{"train.max_steps": 6, "eval.every_epochs": 1},
    )
    out = tmp_path / "sweep"
    done = sweep_cli(path, "--local", "--out", out)
    assert done.returncode == 0, done.stdout + done.stderr
    manifest = read_manifest(out)
    assert manifest.executor == "local" and len(manifest.runs) == 2
    assert "attention-holistic" in done.stdout and "done" in done.stdout
    for run in manifest.runs:
        records = read_metrics(run.run_dir)
        assert records[0]["split"] == "run" and records[0]["launcher"] == "single"
        assert [r["step"] for r in records if r["split"] == "train"][-1] == 6
        assert any(r["split"] == "val" and "AP" in r for r in records)
    again = sweep_cli(path, "--local", "--out", out)
    assert again.returncode == 2 and "already holds a sweep" in again.stderr
    again = sweep_cli(path, "--local", "--out", out, "--resubmit")  # finished runs end at once
    assert again.returncode == 0, again.stdout + again.stderr
    for run in read_manifest(out).runs:
        starts = [r for r in read_metrics(run.run_dir) if r["split"] == "run"]
        assert [(s["step"], s["resumed"]) for s in starts] == [(0, False), (6, True)]
    compared = run_python(["launch/compare.py", out])
    assert compared.returncode == 0, compared.stderr
    assert "| attention=none | 1 |" in compared.stdout
    assert "| attention=holistic | 1 |" in compared.stdout
    for name in ("comparison.md", "ap.png", "loss.png"):
        assert (out / "compare" / name).stat().st_size > 0
    assert "| attention=holistic | attention=none | 1 |" in compared.stdout  # paired by seed
    import cv2

    picture = cv2.imread(str(out / "compare" / "attention.png"))
    # 4 val people, 2x enlarged 96x64 crops, 4 px apart: ground truth, none's prediction and
    # heatmaps, holistic's prediction, heatmaps and attention side by side
    assert picture.shape == (4 * (2 * 96 + 4), 6 * 2 * 64, 3)


@pytest.fixture(scope="module")
def slurm(tmp_path_factory, clean_env):
    """A one-node Slurm cluster of our own for this module; stopped (only its own daemons)
    afterwards. Skips where it cannot run, except under CI=true."""
    with local_slurm(tmp_path_factory.mktemp("slurm"), clean_env) as cluster:
        yield cluster


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
    os.environ["SLURM_CONF"] = slurm.conf["SLURM_CONF"]
    try:
        return {r.name: r.state for r in sweep_status(out)}
    finally:
        if old is None:
            os.environ.pop("SLURM_CONF")
        else:
            os.environ["SLURM_CONF"] = old


def job_log(out: Path) -> str:
    return "\n".join(p.read_text()[-3000:] for p in sorted(out.rglob("*_log.*")))


@pytest.mark.slow
def test_slurm_sweep_of_three_variants_completes_and_compares(
    slurm, shards, val_ann, tmp_path, write_sweep, sweep_cli, run_python
):
    path = write_sweep(
        tmp_path / "three.yaml",
        shards,
        val_ann,
        {"model.attention": ["none", "holistic", "partwise"]},
        **{"train.max_steps": 6, "eval.every_epochs": 1},
    )
    out = tmp_path / "sweep"
    done = sweep_cli(path, "--out", out, "--wait", env=slurm.conf)
    assert done.returncode == 0, done.stdout + done.stderr + job_log(out)
    manifest = read_manifest(out)
    assert manifest.executor == "slurm"
    array = {r.job_id.split("_")[0] for r in manifest.runs}
    assert len(array) == 1, "one job array"
    assert sorted(r.job_id.split("_")[1] for r in manifest.runs) == ["0", "1", "2"]
    status = sweep_cli("status", out, env=slurm.conf)
    assert status.stdout.count(" done ") == 3, status.stdout
    for run in manifest.runs:
        cfg = yaml.safe_load((Path(run.run_dir) / "config.yaml").read_text())
        assert cfg["log"]["group"] == "three" and cfg["model"]["attention"] in run.name
    compared = run_python(["launch/compare.py", out, "--by", "model.attention"])
    assert compared.returncode == 0, compared.stderr
    lines = compared.stdout.splitlines()
    rows = [line for line in lines if line.startswith("| attention=")]
    summary = [row for row in rows if row.split("|")[2].strip() == "1"]
    assert len(summary) == 3 and all(" - |" not in row.split("|", 4)[3] for row in summary)
    paired = [row for row in rows if row.split("|")[2].strip() == "attention=none"]
    assert len(paired) == 2, "holistic and partwise, each against the baseline"
    assert (out / "compare" / "ap.png").is_file() and (out / "compare" / "loss.png").is_file()


@pytest.mark.slow
def test_slurm_job_with_two_tasks_trains_two_gloo_ranks(
    slurm, shards, val_ann, tmp_path, write_sweep, sweep_cli
):
    path = write_sweep(
        tmp_path / "ddp.yaml",
        shards,
        val_ann,
        {"seed": [0]},
        slurm={"tasks_per_node": 2},
        **{"train.max_steps": 6, "engine.zero_stage": 1},
    )
    out = tmp_path / "sweep"
    done = sweep_cli(path, "--out", out, "--wait", env=slurm.conf)
    assert done.returncode == 0, done.stdout + done.stderr + job_log(out)
    run_dir = Path(read_manifest(out).runs[0].run_dir)
    start = read_metrics(run_dir)[0]
    assert (start["world_size"], start["launcher"]) == (2, "slurm")
    assert train_steps(run_dir)[-1] == 6
    logs = job_log(out)
    assert "_0_log.out" in " ".join(p.name for p in out.rglob("*_log.out"))
    assert "_1_log.err" in " ".join(p.name for p in out.rglob("*_log.err")), logs


@pytest.mark.slow
def test_requeued_and_timed_out_jobs_resume_from_their_checkpoints(
    slurm, shards, val_ann, tmp_path, write_sweep, sweep_cli
):
    """Run 0 is requeued by `scontrol requeue` (SIGTERM, then Slurm requeues it); run 1 gets
    the time-out signal (USR2), checkpoints and is requeued by submitit. Both come back and
    carry on from their checkpoint, then the sweep is cancelled."""
    path = write_sweep(
        tmp_path / "requeue.yaml",
        shards,
        val_ann,
        {"seed": [0, 1]},
        **{"train.max_steps": 2000, "checkpoint.every_steps": 1000},
    )
    out = tmp_path / "sweep"
    done = sweep_cli(path, "--out", out, env=slurm.conf)
    assert done.returncode == 0, done.stderr
    runs = read_manifest(out).runs
    dirs = [Path(r.run_dir) for r in runs]
    for d in dirs:
        wait_until(lambda d=d: len(train_steps(d)) >= 3, 240, f"{d.name} to train")
    slurm.run("scontrol", "requeue", runs[0].job_id)
    slurm.run("scancel", "--signal=USR2", runs[1].job_id)
    for run in runs:
        wait_until(
            lambda r=run: status_of(out, slurm)[r.name] == "requeued",
            120,
            f"{run.name} to be requeued\n{job_log(out)}",
        )
        wait_until(lambda r=run: slurm.start_requeued_now(r.job_id), 120, f"{run.name} to start")
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
    cancelled = sweep_cli("cancel", out, env=slurm.conf)
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

    pickled = JobPaths(out / "submitit" / "%j", job_id=runs[1].job_id).submitted_pickle
    assert pickle.loads(pickled.read_bytes()).function.requeues == 1
    states = wait_until(
        lambda: (s := status_of(out, slurm)) and all(v == "cancelled" for v in s.values()) and s,
        120,
        "the runs to be cancelled",
    )
    assert set(states.values()) == {"cancelled"}


@pytest.mark.slow
def test_sbatch_template_runs_torchrun_and_requeues_near_the_time_limit(
    slurm, shards, val_ann, tmp_path, tiny_overrides, request
):
    """slurm/train.sbatch without submitit, submitted as README says (`CONFIG=... sbatch ...
    slurm/train.sbatch run.dir=...`, the log where the script puts it): srun starts torchrun
    with two processes; the time-limit signal (USR1 to the batch shell) makes them checkpoint,
    the script requeues the job, and the requeued job resumes in the same run folder."""
    run_dir = tmp_path / "run"
    overrides = tiny_overrides(
        shards, run_dir, **{"data.val_ann": val_ann, "train.epochs": 500, "engine.zero_stage": 1}
    )
    assert f"run.dir={run_dir}" in overrides  # the run folder as README gives it
    env = {**slurm.env, "CONFIG": "configs/demo.yaml", "PROCS_PER_NODE": "2"}
    env.pop("RUN_DIR", None)
    resources = ["--nodes=1", "--gpus-per-node=0", "--cpus-per-task=2", "--mem=4G"]
    submitted = subprocess.run(
        ["sbatch", "--parsable", *resources, "slurm/train.sbatch", *overrides],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert submitted.returncode == 0, submitted.stderr
    job = submitted.stdout.strip()
    log = ROOT / f"posescale-{job}.out"  # the script's --output, in the submission folder
    request.addfinalizer(lambda: log.unlink(missing_ok=True))
    wait_until(lambda: len(train_steps(run_dir)) >= 2, 240, f"training to start\n{_tail(log)}")
    slurm.run("scancel", "--batch", "--signal=USR1", job)
    wait_until(lambda: "requeueing job" in _tail(log), 120, f"the requeue\n{_tail(log)}")
    wait_until(
        lambda: slurm.start_requeued_now(job),
        120,
        "the requeued job to start\n" + slurm.run("scontrol", "show", "job", job) + _tail(log),
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
    slurm.run("scancel", job)
    starts = [r for r in read_metrics(run_dir) if r["split"] == "run"]
    assert [(s["world_size"], s["launcher"], s["resumed"]) for s in starts] == [
        (2, "torchrun", False),
        (2, "torchrun", True),
    ]
    assert starts[1]["step"] > 0  # both ranks stopped at the step they agreed on, and saved it
    steps = train_steps(run_dir)
    assert steps == sorted(set(steps))
    assert "(restart 1)" in _tail(log)
    assert f"run folder {run_dir}" in _tail(log)


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-4000:] if path.is_file() else ""


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
        runs.append(
            {
                "name": name,
                "job_id": job_id,
                "run_dir": str(run_dir),
                "overrides": [],
                "varying": {},
            }
        )
    manifest = {
        "name": "status",
        "sweep_file": "sweep.yaml",
        "base": "configs/demo.yaml",
        "executor": "local",
        "submitit_folder": str(folder),
        "submitted": 0.0,
        "runs": runs,
    }
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
