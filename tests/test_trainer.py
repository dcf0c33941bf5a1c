"""The training loop end to end through launch/train.py (pose/engine/trainer.py): two ranks
under torchrun, killed runs resuming to the same weights, stop signals, a busy run folder, hung
ranks and budgets. What needs no process of its own is tested in-process in test_loop.py."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import final_weights, kill_at_checkpoint

from pose.folders import RunFolder
from pose.tracking import read_metrics

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ["launch/train.py", "--config", "configs/demo.yaml"]


def train_records(run_dir: Path) -> list[dict]:
    return [r for r in read_metrics(run_dir) if r["split"] == "train"]


@pytest.mark.slow
def test_torchrun_two_ranks_zero1_fp32_then_bf16(shards, tmp_path, tiny_overrides, run_python):
    from pose.distributed import free_port

    run = tmp_path / "ddp"
    port = str(free_port())  # torchrun's --master_port 0 hangs DeepSpeed's CPU rendezvous
    extra = {"engine.zero_stage": 1, "train.max_steps": 24, "optimizer.lr": 3e-3}
    torchrun = ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port]
    args = [*torchrun, *TRAIN, *tiny_overrides(shards, run, **extra)]
    done = run_python(args)
    assert done.returncode == 0, done.stderr[-3000:]
    records = train_records(run)
    assert records[-1]["step"] == 24
    first, last = records[0]["loss"], sum(r["loss"] for r in records[-3:]) / 3
    assert last < first, (first, last)
    assert records[-1]["images_per_s"] == pytest.approx(2 * records[-1]["images_per_s_per_device"])
    # bf16 autocast: a few steps continue the same run (resumes from step 24), finite losses
    more = {**extra, "train.max_steps": 28, "engine.precision": "bf16"}
    bf16 = run_python([*torchrun, *TRAIN, *tiny_overrides(shards, run, **more)])
    assert bf16.returncode == 0, bf16.stderr[-3000:]
    tail = train_records(run)[-2:]
    assert tail[-1]["step"] == 28 and all(torch.isfinite(torch.tensor(r["loss"])) for r in tail)


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_weights(
    shards, tmp_path, tiny_overrides, run_python, clean_env
):
    steps = {"train.max_steps": 12}
    whole = run_python([*TRAIN, *tiny_overrides(shards, tmp_path / "whole", **steps)])
    assert whole.returncode == 0, whole.stderr[-3000:]
    run = tmp_path / "killed"
    args = [*TRAIN, *tiny_overrides(shards, run, **steps)]
    kill_at_checkpoint(args, run, "step-000000008", clean_env())  # mid-epoch
    resumed = run_python([*TRAIN, *tiny_overrides(shards, run, **steps)])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = final_weights(tmp_path / "whole"), final_weights(run)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key  # bitwise on CPU
    steps = [r["step"] for r in train_records(run)]
    assert steps[-1] == 12 and steps.count(2) == 1  # appended after the resume, not truncated


def wait_for(predicate, timeout: float = 300, poll: float = 0.05):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(poll)
    raise AssertionError("timed out")


def progressed(run: Path, step: int) -> bool:
    try:
        return any(r["step"] >= step for r in train_records(run))
    except (OSError, ValueError):
        return False


@pytest.mark.slow
def test_random_kills_with_loader_workers_resume_to_the_same_weights(
    shards, tmp_path, tiny_overrides, run_python, clean_env
):
    """Three SIGKILLs at random moments (mid-step, mid-checkpoint, mid-epoch) of a run with
    two loader workers: the resumed run ends with the uninterrupted run's weights, and its
    metrics.jsonl holds each step once."""
    import random

    extra = {"train.max_steps": 20, "checkpoint.every_steps": 3, "data.num_workers": 2}
    whole = run_python([*TRAIN, *tiny_overrides(shards, tmp_path / "whole", **extra)])
    assert whole.returncode == 0, whole.stderr[-3000:]
    run = tmp_path / "killed"
    command = [sys.executable, *TRAIN, *tiny_overrides(shards, run, **extra)]
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    rng = random.Random(7)
    done_at = 0
    for _ in range(3):
        proc = subprocess.Popen(command, cwd=ROOT, env=clean_env(), **quiet)
        target = done_at + rng.randint(3, 6)
        wait_for(lambda t=target, p=proc: progressed(run, t) or p.poll() is not None)
        assert progressed(run, target), f"the restarted run exited {proc.returncode} early"
        time.sleep(rng.uniform(0.0, 0.6))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        done_at = max(r["step"] for r in train_records(run))
    resumed = run_python(command[1:])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = final_weights(tmp_path / "whole"), final_weights(run)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    steps = [r["step"] for r in train_records(run)]
    assert steps == sorted(set(steps)) and steps[-1] == 20  # each step once
    assert sum(r["split"] == "run" for r in read_metrics(run)) == 4


def test_a_stop_signal_checkpoints_and_exits_75(shards, tmp_path, tiny_overrides, clean_env):
    run = tmp_path / "run"
    command = [sys.executable, *TRAIN, *tiny_overrides(shards, run, **{"train.epochs": 100})]
    proc = subprocess.Popen(
        command, cwd=ROOT, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    wait_for(lambda: progressed(run, 3))
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, err.decode()[-2000:]
    assert "run the same command again to resume" in err.decode()
    step = max(r["step"] for r in train_records(run))
    assert RunFolder(run).latest_tag() == f"step-{step:09d}"


@pytest.mark.slow
def test_ctrl_c_checkpoints_and_exits_75_without_a_traceback(
    shards, tmp_path, tiny_overrides, clean_env
):
    """Sent to the process group, as a terminal does: the two loader workers get it too."""
    run = tmp_path / "run"
    extra = {"train.epochs": 100, "data.num_workers": 2, "data.backend": "torch"}
    command = [sys.executable, *TRAIN, *tiny_overrides(shards, run, **extra)]
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
    proc = subprocess.Popen(command, cwd=ROOT, env=clean_env(), start_new_session=True, **pipes)
    wait_for(lambda: progressed(run, 3))
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    err = err.decode()
    assert proc.returncode == 75, err[-2000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert "train: stopped by SIGINT after writing a checkpoint at step" in err
    step = max(r["step"] for r in train_records(run))
    assert RunFolder(run).latest_tag() == f"step-{step:09d}"


def test_the_agreement_on_a_stop_is_paced_by_time_not_by_log_steps():
    from pose.engine.stop import steps_within

    assert steps_within(10.0, 0.3) == 33 and steps_within(10.0, 25.0) == 1
    assert steps_within(10.0, 0.0) == 1


@pytest.mark.slow
def test_a_stop_under_torchrun_checkpoints_within_the_agents_grace(
    shards, tmp_path, tiny_overrides, clean_env
):
    """Two ranks whose log steps are 10,000 steps apart: SIGTERM to torchrun's agent, which
    gives its workers 20 s here before it kills them. The ranks agree on stopping within
    launch.stop_agree_s (2 s) and write a checkpoint of the step they stop at."""
    from pose.distributed import free_port

    run = tmp_path / "run"
    extra = {"train.epochs": 1000, "log.every_steps": 10_000, "checkpoint.every_steps": 4}
    extra |= {"launch.stop_agree_s": 2}
    torchrun = ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--shutdown-timeout", "20"]
    torchrun += ["--master_port", str(free_port())]
    command = [sys.executable, *torchrun, *TRAIN, *tiny_overrides(shards, run, **extra)]
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
    proc = subprocess.Popen(command, cwd=ROOT, env=clean_env(), start_new_session=True, **pipes)
    folder = RunFolder(run)
    wait_for(lambda: folder.latest_tag() is not None or proc.poll() is not None)
    first = folder.latest_tag()
    assert first is not None, proc.communicate()[1].decode()[-3000:]
    time.sleep(3)  # a few more steps, none of them a log or checkpoint step for sure
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    err = err.decode()
    assert "after writing a checkpoint at step" in err, err[-3000:]
    stopped = int(err.split("after writing a checkpoint at step ")[1].split(";")[0])
    assert folder.latest_tag() == f"step-{stopped:09d}" and stopped > int(first.split("-")[1])


def test_a_second_ctrl_c_exits_at_once(monkeypatch, capsys):
    from pose.engine import stop

    exits = []
    monkeypatch.setattr(stop.os, "_exit", exits.append)
    request = stop.StopRequest()
    try:
        os.kill(os.getpid(), signal.SIGINT)
        assert request.requested and request.signum == signal.SIGINT and not exits
        os.kill(os.getpid(), signal.SIGINT)
        assert exits == [130]
    finally:
        request.restore()
    err = capsys.readouterr().err
    assert "Ctrl-C again to exit at once" in err and "second Ctrl-C: exiting now" in err


def test_a_run_folder_in_use_is_refused_naming_its_holder(
    shards, tmp_path, tiny_overrides, run_python, clean_env
):
    run = tmp_path / "run"
    args = [*TRAIN, *tiny_overrides(shards, run, **{"train.epochs": 100})]
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    first = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=clean_env(), **quiet)
    try:
        wait_for(lambda: progressed(run, 1))
        second = run_python(args)
        assert second.returncode == 2, second.stderr[-2000:]
        assert f"is in use by pid {first.pid} on host" in second.stderr
        assert len(train_records(run)) == len({r["step"] for r in train_records(run)})
    finally:
        first.kill()
        first.wait()


@pytest.mark.slow
def test_ranks_die_with_their_killed_agent_and_free_the_folder(
    shards, tmp_path, tiny_overrides, run_python, clean_env
):
    from pose.distributed import free_port

    run = tmp_path / "run"
    torchrun = ["-m", "torch.distributed.run", "--nproc_per_node", "2"]
    torchrun += ["--master_port", str(free_port())]
    args = [*TRAIN, *tiny_overrides(shards, run, **{"train.epochs": 100})]
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    agent = subprocess.Popen([sys.executable, *torchrun, *args], cwd=ROOT, env=clean_env(), **quiet)
    wait_for(lambda: progressed(run, 2))
    ranks = [
        int(p) for p in Path(f"/proc/{agent.pid}/task/{agent.pid}/children").read_text().split()
    ]
    assert len(ranks) == 2
    agent.send_signal(signal.SIGKILL)
    agent.wait()
    wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in ranks), timeout=30)
    again = run_python([*args[:-1], "train.epochs=100", "train.max_steps=4"], timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]


@pytest.mark.slow
def test_a_hung_rank_is_reported_with_rank_and_host_within_the_timeout(
    shards, tmp_path, tiny_overrides, clean_env
):
    """Rank 1 frozen (SIGSTOP) mid-run: rank 0's next collective is the gradient all-reduce, on
    DeepSpeed's own group (logs, checkpoints and epoch ends, which use the world group, are made
    rare). It must fail within launch.collective_timeout_s, naming rank and host, and end the
    job (exit 1), not wait for torch's 30-minute default. DeepSpeed's shared-memory op (for
    inference only) is not compiled: the empty extensions folder stays empty."""
    import socket

    from pose.distributed import free_port

    run, timeout_s = tmp_path / "run", 20
    torchrun = ["-m", "torch.distributed.run", "--nproc_per_node", "2"]
    torchrun += ["--master_port", str(free_port())]
    extra = {"train.epochs": 1000, "train.batch_size": 2, "log.every_steps": 10_000}
    extra.update({"checkpoint.every_steps": 10_000, "launch.collective_timeout_s": timeout_s})
    args = [*TRAIN, *tiny_overrides(shards, run, **extra)]
    extensions = tmp_path / "torch_extensions"
    agent = subprocess.Popen(
        [sys.executable, *torchrun, *args],
        cwd=ROOT,
        env=clean_env(TORCH_EXTENSIONS_DIR=str(extensions)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    ranks = []
    try:
        wait_for(lambda: started(run))
        time.sleep(3)  # a few steps in
        children = Path(f"/proc/{agent.pid}/task/{agent.pid}/children").read_text().split()
        ranks = [int(p) for p in children]
        rank1 = next(p for p in ranks if b"RANK=1\0" in Path(f"/proc/{p}/environ").read_bytes())
        os.kill(rank1, signal.SIGSTOP)
        frozen = time.time()
        _, stderr = agent.communicate(timeout=timeout_s + 100)
        waited = time.time() - frozen
    finally:
        for pid in ranks:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGKILL)
        if agent.poll() is None:
            agent.kill()
    assert agent.returncode != 0
    host = socket.gethostname()
    assert f"train: error: a collective failed on rank 0 of 2 on {host}" in stderr, stderr[-3000:]
    # the rank that hung is named: its heartbeat stopped (rank 0's went on)
    assert f"not heard from: rank 1 on {host} (its last step" in stderr, stderr[-3000:]
    assert timeout_s <= waited < timeout_s + 45  # the timeout, then torchrun's teardown
    assert not extensions.exists() or not any(extensions.iterdir())


def started(run: Path) -> bool:
    """Whether the run has begun training (its run record is written)."""
    try:
        return any(r["split"] == "run" for r in read_metrics(run))
    except (OSError, ValueError):
        return False


def test_an_image_budget_ends_at_its_step_with_the_lr_at_its_floor(
    shards, tmp_path, tiny_overrides, run_python
):
    run = tmp_path / "run"
    extra = {"train.budget_images": 100, "schedule.name": "cosine", "train.epochs": 1}
    result = run_python([*TRAIN, *tiny_overrides(shards, run, **extra)])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "budget of 100 images = 13 steps of 8 images" in result.stdout  # ceil(100 / 8)
    last = train_records(run)[-1]
    assert (last["step"], last["images"], last["budget_used"]) == (13, 104, 1.0)
    assert last["lr"] == 0.0
    assert "train: 13 steps (104 images)" in result.stdout
    # no terminal: plain progress lines, the last step's always, instead of a progress bar
    assert "train: step 13/13 (epoch " in result.stdout and "\r" not in result.stderr
    assert "shm_comm_op built" not in result.stdout  # one process compiles no all-reduce op
    generated = json.loads(RunFolder(run).deepspeed_config.read_text())
    assert generated["train_micro_batch_size_per_gpu"] == 8
    summary = run_python(["launch/summary.py", run])
    assert "trained 13 steps, 104 images, " in summary.stdout
    assert "budget 100 images; not evaluated" in summary.stdout


@pytest.mark.slow
def test_a_wall_clock_budget_killed_after_calibration_resumes_to_its_recorded_length(
    shards, tmp_path, tiny_overrides, run_python, clean_env
):
    """The budget's step count is measured once and kept: the killed and resumed run ends at
    it with the weights of an uninterrupted run of that many steps."""
    calibration = 6
    common = {"schedule.name": "cosine", "schedule.warmup_steps": calibration}
    budget = {"train.budget_minutes": 0.15, "train.budget_calibration_steps": calibration}
    run = tmp_path / "budget"
    command = [sys.executable, *TRAIN, *tiny_overrides(shards, run, **common, **budget)]
    proc = subprocess.Popen(
        command, cwd=ROOT, env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    wait_for(lambda: progressed(run, calibration + 2) or proc.poll() is not None)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    measured = RunFolder(run).budget.read_text()
    total = json.loads(measured)["total_steps"]
    assert max(r["step"] for r in train_records(run)) < total, "killed too late to resume"
    resumed = run_python(command[1:])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stdout and "budget of" not in resumed.stdout
    assert RunFolder(run).budget.read_text() == measured  # measured once
    assert train_records(run)[-1]["step"] == total
    assert train_records(run)[-1]["budget_used"] == 1.0

    fixed = {"train.max_steps": total, "train.epochs": 1000}
    whole = run_python([*TRAIN, *tiny_overrides(shards, tmp_path / "whole", **common, **fixed)])
    assert whole.returncode == 0, whole.stderr[-3000:]
    a, b = final_weights(tmp_path / "whole"), final_weights(run)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_channels_last_is_applied_after_the_engine_and_refused_with_zero():
    from pose.config import ConfigError, load_config
    from pose.distributed import init_distributed
    from pose.engine.build import apply_memory_format, build_training, prepare_model
    from pose.engine.deepspeed_adapter import build_engine
    from pose.models import build_model

    cfg = load_config(None, ["engine.memory_format=channels_last", "model.backbone=resnet18"])
    env = init_distributed(cfg.launch)
    model = prepare_model(build_model(cfg.model, 17), cfg.engine, torch.device("cpu"))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    build_engine(model, optimizer, None, cfg.train, cfg.engine, 0.0, 1, "fp32")  # contiguous
    params = list(model.parameters())
    apply_memory_format(model, cfg.engine, torch.device("cpu"))
    assert all(a is b for a, b in zip(params, model.parameters()))  # the optimizer's still
    convs = [m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    auto = load_config(None, ["model.backbone=resnet18"]).engine
    plain = build_model(cfg.model, 17)
    apply_memory_format(plain, auto, torch.device("cpu"))  # auto: not on a CPU
    assert all(m.weight.is_contiguous() for m in plain.modules() if isinstance(m, torch.nn.Conv2d))
    training = build_training(cfg, 17, env)  # the one function: in its order, no refusal
    assert training.model.final_layer.weight.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(ConfigError, match=r"engine\.memory_format.*zero_stage=0"):
        load_config(None, ["engine.memory_format=channels_last", "engine.zero_stage=1"])


@pytest.mark.slow
def test_zero3_two_ranks_resume_exactly_evaluate_and_leave_whole_weights(
    shards, val_ann, tmp_path, tiny_overrides, run_python, clean_env
):
    """ZeRO-3 on two gloo ranks: each holds half of every weight. A run killed after its
    step-8 checkpoint resumes to the uninterrupted run's weights bit for bit; the evaluation
    after the last step runs on whole copies (the ranks evaluate different batches); each
    checkpoint carries the gathered weights, which load for inference."""
    from pose.distributed import free_port
    from pose.models.trained import load_trained_model

    extra = {"engine.zero_stage": 3, "train.max_steps": 12, "optimizer.lr": 3e-3}
    extra |= {"data.val_ann": val_ann, "eval.every_epochs": 1000, "eval.flip_test": "false"}

    def command(run: Path) -> list[str]:
        torchrun = ["-m", "torch.distributed.run", "--nproc_per_node", "2"]
        torchrun += ["--master_port", str(free_port())]
        return [*torchrun, *TRAIN, *tiny_overrides(shards, run, **extra)]

    whole = run_python(command(tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr[-3000:]
    run = tmp_path / "killed"
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    proc = subprocess.Popen(
        [sys.executable, *command(run)], cwd=ROOT, env=clean_env(), start_new_session=True, **quiet
    )
    folder = RunFolder(run)
    wait_for(lambda: folder.latest_tag() == "step-000000008" or proc.poll() is not None)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert folder.latest_tag() == "step-000000008"
    resumed = run_python(command(run))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = final_weights(tmp_path / "whole"), final_weights(run)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    trained = load_trained_model(tmp_path / "whole")
    reference = dict(trained.model.state_dict())
    assert reference["final_layer.weight"].shape == (17, 32, 1, 1)  # whole, not a slice
    assert torch.equal(reference["final_layer.weight"], a["final_layer.weight"])
    evaluations = [r for r in read_metrics(tmp_path / "whole") if r["split"] == "val"]
    assert len(evaluations) == 1 and evaluations[0]["step"] == 12 and "AP" in evaluations[0]


def test_a_run_does_not_resume_on_data_of_another_layout_with_as_many_joints(
    shards, tmp_path, tiny_overrides, run_python
):
    """A run folder trained on one 17-joint order (here: its layout.yaml with two joints
    swapped, as a CrowdPose run meeting AIC shards of 14 joints each would be) refuses to
    resume on shards of another order: exit 2 naming the joint, and its layout.yaml kept."""
    import yaml

    run = tmp_path / "run"
    first = run_python([*TRAIN, *tiny_overrides(shards, run, **{"train.max_steps": 2})])
    assert first.returncode == 0, first.stderr[-3000:]
    layout = yaml.safe_load(RunFolder(run).layout.read_text())
    joints = layout["joints"]
    joints[1], joints[2] = joints[2], joints[1]
    recorded = yaml.safe_dump(layout, sort_keys=False)
    RunFolder(run).layout.write_text(recorded)
    again = run_python([*TRAIN, *tiny_overrides(shards, run, **{"train.max_steps": 4})])
    assert again.returncode == 2, again.stderr[-3000:]
    assert "the run being resumed" in again.stderr
    assert "joint 1 is 'left_eye' in one, 'right_eye' in the other" in again.stderr
    assert RunFolder(run).layout.read_text() == recorded and "resuming" not in again.stdout


@pytest.mark.parametrize("what", ["a text file", "another architecture's classifier"])
def test_unusable_pretrained_weights_stop_the_start_in_one_line(
    shards, tmp_path, tiny_overrides, run_python, what
):
    import torchvision

    path = tmp_path / "weights.pth"
    if what == "a text file":
        path.write_text("these are not weights\n")
    else:
        torch.save(torchvision.models.mobilenet_v2().state_dict(), path)
    run = tmp_path / "run"
    extra = {"model.pretrained": path, "train.max_steps": 1}
    done = run_python([*TRAIN, *tiny_overrides(shards, run, **extra)])
    assert done.returncode == 2, done.stderr[-3000:]
    lines = [ln for ln in done.stderr.splitlines() if ln.startswith("train:")]
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert str(path) in lines[0] and not lines[0].rstrip().endswith(": 101")
    assert not RunFolder(run).config.exists() and not RunFolder(run).checkpoints.exists()
