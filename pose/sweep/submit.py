"""Submitting a sweep (one Slurm job array through submitit's AutoExecutor, or submitit's local
executor), its manifest, and what `status`, `wait` and `cancel` read back from Slurm and from
the run folders. What a sweep folder holds: pose.folders.SweepFolder."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pose.folders import SweepFolder, SweepManifest, SweepRun
from pose.sweep.job import TrainingJob
from pose.sweep.spec import Sweep, run_overrides
from pose.sweep.submitit_adapter import read_result, sbatch_script, submission_errors
from pose.tracking import read_run_metrics

FINAL_STATES = ("done", "failed", "cancelled")


class SweepError(RuntimeError):
    """A sweep cannot be submitted or read (no Slurm, a missing manifest, ...)."""


def slurm_available() -> bool:
    return shutil.which("srun") is not None and shutil.which("sbatch") is not None


def cluster_problem(timeout_s: float = 30) -> str | None:
    """Why the Slurm controller does not answer (`sinfo` fails), or None when it does."""
    try:
        done = subprocess.run(
            ["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, timeout=timeout_s
        )
    except FileNotFoundError:
        return "sinfo is not on PATH"
    except subprocess.TimeoutExpired:
        return f"sinfo did not answer within {timeout_s:.0f} s"
    if done.returncode != 0:
        return f"sinfo: {(done.stderr or done.stdout).strip()[:300]}"
    return None


def executor_parameters(sweep: Sweep, local: bool) -> dict[str, Any]:
    """AutoExecutor parameters from the sweep's resources: shared names where submitit has
    them, `slurm_*` for the rest. With `local`, one process per run on this machine."""
    res = sweep.spec.slurm
    params: dict[str, Any] = {"name": sweep.name, "timeout_min": res.time_min}
    if local:
        return params | {"tasks_per_node": 1, "gpus_per_node": min(res.gpus_per_node, 1)}
    params |= {
        "nodes": res.nodes,
        "tasks_per_node": res.tasks,
        "cpus_per_task": res.cpus_per_task,
        "slurm_signal_delay_s": res.signal_delay_s,
    }
    if res.gpus_per_node:
        params["gpus_per_node"] = res.gpus_per_node
    if res.mem_gb:
        params["mem_gb"] = res.mem_gb
    for key in ("partition", "account", "qos", "constraint"):
        if getattr(res, key):
            params[f"slurm_{key}"] = getattr(res, key)
    if res.max_running:
        params["slurm_array_parallelism"] = res.max_running
    # Requeueable, so that a preemption or a node failure requeues rather than ends the run.
    params["slurm_additional_parameters"] = {"requeue": True} | {
        k.replace("_", "-"): v for k, v in res.sbatch.items()
    }
    if res.setup:
        params["slurm_setup"] = list(res.setup)
    return params


def sbatch_preview(sweep: Sweep, folder: Path) -> str:
    """The `#SBATCH` lines submitit will write for this sweep's job array (for --dry-run; needs
    no Slurm)."""
    return sbatch_script(executor_parameters(sweep, local=False), folder, len(sweep.runs))


def submit(sweep: Sweep, out: Path, local: bool = False, resubmit: bool = False) -> SweepManifest:
    """Submit every run of `sweep` as one job array; writes and returns the manifest."""
    out = out.resolve()
    _check_submittable(sweep, out, local, resubmit)
    made = not out.exists()
    try:
        return _submit(sweep, out, local)
    except submission_errors() as e:  # sbatch refused, or is not there after all
        if made:
            shutil.rmtree(out, ignore_errors=True)
        detail = getattr(e, "stderr", None) or getattr(e, "output", None) or str(e)
        raise SweepError(f"submitting the sweep failed: {str(detail).strip()[:500]}") from None


def _submit(sweep: Sweep, out: Path, local: bool) -> SweepManifest:
    import submitit

    folder = SweepFolder(out)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(sweep.path, folder.spec)
    executor = submitit.AutoExecutor(
        folder=folder.job_pattern,
        cluster="local" if local else "slurm",
        slurm_max_num_timeout=sweep.spec.slurm.max_requeues,
    )
    executor.update_parameters(**executor_parameters(sweep, local))
    # The local executor starts every run at once: share this machine's cores between them.
    threads = max(1, (os.cpu_count() or 1) // len(sweep.runs)) if local else 0
    jobs_to_run, rows = [], []
    for run in sweep.runs:
        run_dir = folder.run(run.name).path
        overrides = tuple(run_overrides(sweep, run, run_dir))
        max_requeues = sweep.spec.slurm.max_requeues
        job = TrainingJob(str(sweep.base), overrides, os.getcwd(), max_requeues, threads=threads)
        jobs_to_run.append(job)
        rows.append((run, overrides, run_dir))
    jobs = executor.submit_array(jobs_to_run)
    runs = [
        SweepRun(run.name, list(overrides), run.varying, str(run_dir), str(job.job_id))
        for (run, overrides, run_dir), job in zip(rows, jobs, strict=True)
    ]
    manifest = SweepManifest(
        name=sweep.name,
        sweep_file=str(sweep.path.resolve()),
        base=str(sweep.base),
        executor="local" if local else "slurm",
        submitit_folder=str(folder.submitit),
        submitted=time.time(),
        runs=runs,
    )
    folder.write_manifest(manifest)
    return manifest


def _check_submittable(sweep: Sweep, out: Path, local: bool, resubmit: bool) -> None:
    if SweepFolder(out).is_sweep() and not resubmit:
        raise SweepError(
            f"{out} already holds a sweep (see `sweep.py status {out}`); pass "
            f"--resubmit to submit its runs again (they resume from their "
            f"checkpoints) or choose another --out"
        )
    if not local and not slurm_available():
        raise SweepError(
            "no Slurm here (srun/sbatch not on PATH); use --local to run the "
            "sweep on this machine, or --dry-run to see what would be submitted"
        )
    if not local:
        problem = cluster_problem()
        if problem:
            raise SweepError(
                f"sbatch is here but no Slurm cluster answers ({problem}); start one or point "
                "SLURM_CONF at it, or use --local to run the sweep on this machine"
            )
    if local and sweep.spec.slurm.nodes * sweep.spec.slurm.tasks > 1:
        print(
            f"sweep: --local runs each run as one process (the sweep asks for "
            f"{sweep.spec.slurm.nodes} node(s) x {sweep.spec.slurm.tasks} task(s))",
            file=sys.stderr,
        )


def dry_run(sweep: Sweep, out: Path) -> str:
    """What `--dry-run` prints: the runs, and the sbatch lines of their job array."""
    lines = [f"sweep '{sweep.name}': {len(sweep.runs)} runs from {sweep.base} into {out}"]
    lines += [f"  {run.name}: {' '.join(run.overrides)}" for run in sweep.runs]
    where = "Slurm" if slurm_available() else "Slurm (not on this machine: use --local here)"
    lines += ["", f"{where} would get one job array:", ""]
    return "\n".join(lines) + "\n" + sbatch_preview(sweep, SweepFolder(out.resolve()).job_pattern)


def submit_and_follow(
    sweep: Sweep, out: Path, local: bool, resubmit: bool, wait_for_end: bool
) -> int:
    """Submit (or run locally, which waits), say so, and with `wait_for_end` wait; the exit
    code: 0, or 1 when a run did not end done."""
    manifest = submit(sweep, out, local=local, resubmit=resubmit)
    first = manifest.runs[0].job_id.split("_")[0]
    print(
        f"sweep '{sweep.name}': {len(manifest.runs)} runs submitted "
        f"({manifest.executor}, job {first}) into {out}"
    )
    if wait_for_end or local:
        rows = wait(out)
        print(format_status(rows))
        return 0 if all(r.state == "done" for r in rows) else 1
    print(f"follow it with: python launch/sweep.py status {out}")
    return 0


def manage(command: str, sweep_dir: Path) -> int:
    """`status`, `wait` or `cancel` a submitted sweep; the exit code."""
    if command == "status":
        print(format_status(sweep_status(sweep_dir)))
    elif command == "wait":
        rows = wait(sweep_dir)
        print(format_status(rows))
        return 0 if all(r.state == "done" for r in rows) else 1
    else:
        ids = cancel(sweep_dir)
        done = f"cancelled {len(ids)} job(s): {' '.join(ids)}" if ids else "nothing left to cancel"
        print(f"sweep: {done}")
    return 0


def read_manifest(sweep_dir: Path) -> SweepManifest:
    folder = SweepFolder(sweep_dir)
    if not folder.is_sweep():
        raise SweepError(
            f"no sweep manifest at {folder.manifest} (is this the folder sweep.py submitted to?)"
        )
    try:
        return folder.read_manifest()
    except ValueError as e:
        raise SweepError(str(e)) from None


@dataclass
class RunStatus:
    name: str
    job_id: str
    state: str  # pending, running, requeued, done, failed, cancelled, unknown
    detail: str  # Slurm's own state, or why
    restarts: int  # starts after the first (resumed from a checkpoint)
    epoch: int | None
    step: int | None
    best_ap: float | None
    run_dir: str


def sweep_status(sweep_dir: Path) -> list[RunStatus]:
    """Each run's state, from Slurm's accounting (or submitit's result files for local runs),
    and its progress from the run folder."""
    manifest = read_manifest(sweep_dir)
    slurm = manifest.executor == "slurm"
    slurm_states = _slurm_states([r.job_id for r in manifest.runs]) if slurm else {}
    out = []
    for run in manifest.runs:
        result = _result_state(Path(manifest.submitit_folder), run.job_id)
        state, detail = slurm_states.get(run.job_id, (None, ""))
        if state is None and slurm:
            state, detail = result or ("unknown", "neither sacct nor squeue knows this job")
        elif state is None:
            state, detail = result or _local_state(run.job_id)
        elif state == "done" and result and result[0] == "failed":
            state, detail = result
        progress = _progress(Path(run.run_dir))
        out.append(RunStatus(run.name, run.job_id, state, detail, **progress, run_dir=run.run_dir))
    return out


def format_status(rows: list[RunStatus]) -> str:
    header = ("run", "job", "state", "restarts", "epoch", "step", "best AP", "detail")
    lines = [header]
    for r in rows:
        lines.append(
            (
                r.name,
                r.job_id,
                r.state,
                str(r.restarts),
                _dash(r.epoch),
                _dash(r.step),
                "-" if r.best_ap is None else f"{r.best_ap:.3f}",
                r.detail,
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines)


def wait(
    sweep_dir: Path, poll_s: float = 5.0, timeout_s: float | None = None, echo: bool = True
) -> list[RunStatus]:
    """Block until every run is done, failed or cancelled; prints state changes."""
    start, seen, unknown_polls = time.time(), {}, 0
    while True:
        rows = sweep_status(sweep_dir)
        unknown_polls = unknown_polls + 1 if any(r.state == "unknown" for r in rows) else 0
        if unknown_polls * poll_s > 120:  # Slurm's accounting lost them, or it is down
            raise SweepError(
                f"Slurm has not known some jobs of {sweep_dir} for two minutes: "
                + ", ".join(r.job_id for r in rows if r.state == "unknown")
            )
        for r in rows:
            if echo and seen.get(r.name) != r.state:
                print(
                    f"sweep: {r.name}: {r.state}" + (f" ({r.detail})" if r.detail else ""),
                    flush=True,
                )
            seen[r.name] = r.state
        if all(r.state in FINAL_STATES for r in rows):
            return rows
        if timeout_s is not None and time.time() - start > timeout_s:
            raise SweepError(f"sweep {sweep_dir} not finished after {timeout_s:.0f} s")
        time.sleep(poll_s)


def cancel(sweep_dir: Path) -> list[str]:
    """Cancel the sweep's jobs that have not ended; returns their ids. A cancelled run keeps
    its checkpoints (it saves one on the way out) and can be submitted again."""
    manifest = read_manifest(sweep_dir)
    live = [r for r in sweep_status(sweep_dir) if r.state not in FINAL_STATES]
    ids = [r.job_id for r in live]
    if not ids:
        return []
    if manifest.executor == "slurm":
        subprocess.run(["scancel", *ids], check=True, capture_output=True, text=True, timeout=60)
    else:
        for job_id in ids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(job_id), signal.SIGTERM)
    return ids


# --------------------------------------------------------------------------------------------


SLURM_STATES = {
    "PENDING": "pending",
    "CONFIGURING": "running",
    "RUNNING": "running",
    "COMPLETING": "running",
    "SUSPENDED": "running",
    "COMPLETED": "done",
    "REQUEUED": "requeued",
    "REQUEUE_HOLD": "requeued",
    "REQUEUE_FED": "requeued",
    "RESIZING": "running",
    "CANCELLED": "cancelled",
}


def _slurm_states(job_ids: list[str]) -> dict[str, tuple[str, str]]:
    """job id -> (our state, Slurm's) from `sacct` (all attempts, so a requeued run shows as
    such while it waits), with `squeue` for what accounting does not know yet."""
    arrays = sorted({j.split("_")[0] for j in job_ids})
    states = _accounting_states(arrays)
    for job, state in _queue_states(arrays).items():
        if job in job_ids and not states.get(job):
            states[job] = [state]
    restarted: set[str] | None = None  # read once per call, only when needed
    result = {}
    for job in job_ids:
        attempts = states.get(job)
        if not attempts:
            continue
        last = attempts[-1]
        ours = SLURM_STATES.get(last, "failed")  # FAILED, TIMEOUT, NODE_FAIL, OUT_OF_MEMORY...
        if ours == "pending" and "REQUEUED" not in attempts and restarted is None:
            restarted = _restarted(arrays)
        if ours == "pending" and ("REQUEUED" in attempts or job in (restarted or ())):
            ours = "requeued"
        result[job] = (ours, last if len(attempts) == 1 else f"{last}, attempt {len(attempts)}")
    return result


def _accounting_states(arrays: list[str]) -> dict[str, list[str]]:
    """job id -> the state of each of its attempts, from `sacct` ({} without accounting)."""
    command = ["sacct", "-X", "-P", "-n", "--duplicates", "-o", "JobID,State"]
    states: dict[str, list[str]] = {}
    try:
        out = subprocess.run(
            [*command, "-j", ",".join(arrays)],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return states
    for line in out.splitlines():
        job, _, state = line.partition("|")
        states.setdefault(job, []).append(state.split()[0] if state else "UNKNOWN")
    return states


def _queue_states(arrays: list[str]) -> dict[str, str]:
    """job id -> its state in `squeue` (jobs accounting may not know yet)."""
    try:
        out = subprocess.run(
            ["squeue", "-h", "-r", "-o", "%i|%T", "-j", ",".join(arrays)],
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    return dict(line.partition("|")[::2] for line in out.splitlines())


def _restarted(arrays: list[str]) -> set[str]:
    """Array tasks that Slurm has restarted (a requeued job waits as PENDING before accounting
    records the attempt), one `scontrol` call per job array."""
    found = set()
    for array in arrays:
        try:
            out = subprocess.run(
                ["scontrol", "show", "job", "-o", array], capture_output=True, text=True, timeout=30
            ).stdout
        except (OSError, subprocess.SubprocessError):
            continue
        for line in out.splitlines():
            fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
            if fields.get("Restarts", "0") != "0":
                task = fields.get("ArrayTaskId")
                found.add(f"{fields.get('ArrayJobId')}_{task}" if task else fields.get("JobId"))
    return found


def _result_state(folder: Path, job_id: str) -> tuple[str, str] | None:
    """From submitit's result file: ('done', '') or ('failed', the error's last line)."""
    try:
        result = read_result(folder / "%j", job_id)
    except ValueError as e:
        return "unknown", str(e)[:200]
    if result is None:
        return None
    kind, value = result
    if kind == "success":
        return "done", ""
    return "failed", str(value).strip().splitlines()[-1][:200]


def _local_state(job_id: str) -> tuple[str, str]:
    """A local job is its process: alive means running; gone without a result means it was
    stopped (cancelled or killed)."""
    try:
        os.kill(int(job_id), 0)
        return "running", ""
    except (ProcessLookupError, ValueError):
        return "cancelled", "process ended without a result"
    except PermissionError:
        return "running", ""


def _progress(run_dir: Path) -> dict[str, Any]:
    try:
        run = read_run_metrics(run_dir)
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        return {"restarts": 0, "epoch": None, "step": None, "best_ap": None}
    # an evaluation at an epoch's last step counts that epoch as completed; its train record
    # at the same step, as still under way
    last = max([*run.train, *run.val], key=lambda r: (r.step, r.epoch), default=None)
    aps = [r.ap for r in run.scored]
    return {
        "restarts": max(len(run.starts) - 1, 0),
        "epoch": None if last is None else last.epoch,
        "step": None if last is None else last.step,
        "best_ap": max(aps) if aps else None,
    }


def _dash(value: Any) -> str:
    return "-" if value is None else str(value)
