"""Several hosts for real: slurm/local-cluster.sh's namespace hosts (each its own network and
host name, joined by a bridge on 198.18.0.0/24), one run trained across two of them through
Slurm and through two torchrun agents started by hand, against the same run on one host."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import final_weights, local_slurm

from pose.distributed import free_port
from pose.sweep.submit import read_manifest
from pose.tracking import read_metrics

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ["launch/train.py", "--config", "configs/demo.yaml"]
STEPS = 6


@pytest.fixture(scope="module")
def two_hosts(tmp_path_factory, clean_env):
    with local_slurm(tmp_path_factory.mktemp("slurm"), clean_env, hosts=2) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def one_host_run(shards, module_tmp, tiny_overrides, run_python):
    """The reference: the same two ranks under torchrun on this machine alone."""
    run = module_tmp / "one-host"
    torchrun = ["-m", "torch.distributed.run", "--nproc_per_node", "2"]
    torchrun += ["--master_port", str(free_port())]
    overrides = tiny_overrides(shards, run, **{"train.max_steps": STEPS})
    done = run_python([*torchrun, *TRAIN, *overrides], timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return run


FAULT_STEPS = 24
FAULT_OVERRIDES = {"train.max_steps": FAULT_STEPS, "launch.collective_timeout_s": 30}


@pytest.fixture(scope="module")
def uninterrupted_run(shards, module_tmp, tiny_overrides, run_python):
    """The fault tests' reference: their run on two ranks of this machine, never stopped."""
    run = module_tmp / "uninterrupted"
    torchrun = ["-m", "torch.distributed.run", "--nproc_per_node", "2"]
    torchrun += ["--master_port", str(free_port())]
    done = run_python([*torchrun, *TRAIN, *tiny_overrides(shards, run, **FAULT_OVERRIDES)])
    assert done.returncode == 0, done.stderr[-3000:]
    return run


def trained_steps(run: Path) -> list[int]:
    try:
        return [r["step"] for r in read_metrics(run) if r["split"] == "train"]
    except (OSError, ValueError):
        return []


def assert_resumed_to_the_uninterrupted_run(run: Path, reference: Path) -> None:
    """One restart from a checkpoint of step 8 or later, on both hosts; every log step once
    (none lost, none replayed) and the final weights of the run that never stopped."""
    starts = [r for r in read_metrics(run) if r["split"] == "run"]
    assert [s["resumed"] for s in starts] == [False, True]
    assert starts[1]["step"] >= 8 and starts[1]["hosts"] == ["h1", "h2"]
    assert trained_steps(run) == list(range(2, FAULT_STEPS + 1, 2))
    mine, theirs = final_weights(run), final_weights(reference)
    for key in mine:
        torch.testing.assert_close(mine[key], theirs[key], rtol=0, atol=1e-6, msg=key)


def assert_same_run(run: Path, reference: Path) -> None:
    """Same steps, losses and final weights as the one-host run: the ranks read the same
    disjoint parts of the data and the all-reduce sums the same gradients, only over TCP between
    namespaces instead of within one. Tolerance 1e-6 (float sums in another order would show
    ~1e-7; a rank reading the other's data or a missing all-reduce, ~1e-3)."""
    losses = [
        [(r["step"], r["loss"]) for r in read_metrics(folder) if r["split"] == "train"]
        for folder in (run, reference)
    ]
    assert [s for s, _ in losses[0]] == [s for s, _ in losses[1]] == [2, 4, 6]
    assert [loss for _, loss in losses[0]] == pytest.approx([loss for _, loss in losses[1]])
    mine, theirs = final_weights(run), final_weights(reference)
    assert mine.keys() == theirs.keys()
    for key in mine:
        torch.testing.assert_close(mine[key], theirs[key], rtol=0, atol=1e-6, msg=key)


@pytest.mark.slow
def test_sbatch_trains_one_run_across_two_hosts(
    two_hosts, shards, tmp_path, tiny_overrides, one_host_run
):
    run = tmp_path / "run"
    log = tmp_path / "job.out"
    overrides = tiny_overrides(shards, run, **{"train.max_steps": STEPS})
    env = {**two_hosts.env, "CONFIG": "configs/demo.yaml", "RUN_DIR": str(run)}
    submitted = subprocess.run(
        ["sbatch", "--parsable", "--wait", "--nodes=2", "--gpus-per-node=0"]
        + ["--cpus-per-task=1", "--mem=2G", f"--output={log}", "slurm/train.sbatch", *overrides],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = log.read_text(errors="replace") if log.is_file() else ""
    assert submitted.returncode == 0, submitted.stderr + output[-3000:]
    assert "on h[1-2]: 2 node(s) x 1 process(es)" in output
    start = next(r for r in read_metrics(run) if r["split"] == "run")
    assert start["hosts"] == ["h1", "h2"] and start["launcher"] == "torchrun"
    assert_same_run(run, one_host_run)


@pytest.mark.slow
def test_torchrun_by_hand_on_two_hosts_with_c10d_rendezvous(
    two_hosts, shards, tmp_path, tiny_overrides, one_host_run
):
    """One agent per host; the rendezvous store is served by h1's agent, found by matching its
    host name (h1 resolves to its bridge address on every host)."""
    run = tmp_path / "run"
    overrides = tiny_overrides(shards, run, **{"train.max_steps": STEPS})
    rendezvous = ["--rdzv_backend", "c10d", "--rdzv_endpoint", f"h1:{free_port()}"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2"]
    torchrun += ["--nproc_per_node", "1", *rendezvous, "--rdzv_id", "by-hand"]
    agents = {
        host: two_hosts.on_host(
            host,
            [*torchrun, *TRAIN, *overrides],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for host in ("h1", "h2")
    }
    try:
        outputs = {host: agent.communicate(timeout=600)[0] for host, agent in agents.items()}
    finally:
        for agent in agents.values():
            if agent.poll() is None:
                agent.kill()
    for host, agent in agents.items():
        assert agent.returncode == 0, f"{host}:\n{outputs[host][-3000:]}"
    start = next(r for r in read_metrics(run) if r["split"] == "run")
    assert start["hosts"] == ["h1", "h2"]
    assert_same_run(run, one_host_run)


@pytest.mark.slow
def test_a_sweep_whose_runs_ask_for_two_nodes_trains_across_both_hosts(
    two_hosts, shards, val_ann, tmp_path, write_sweep, sweep_cli, one_host_run
):
    """submitit's job on 2 nodes x 1 task: each task finds its rank and the master (h1) in
    Slurm's variables, and the run equals the one-host run."""
    path = write_sweep(
        tmp_path / "two-nodes.yaml",
        shards,
        val_ann,
        {"seed": [0]},
        slurm={"nodes": 2, "tasks_per_node": 1},
        **{"train.max_steps": STEPS},
    )
    out = tmp_path / "sweep"
    done = sweep_cli(path, "--out", out, "--wait", env=two_hosts.conf)
    logs = "\n".join(p.read_text(errors="replace")[-2000:] for p in out.rglob("*_log.*"))
    assert done.returncode == 0, done.stdout + done.stderr + logs
    run = Path(read_manifest(out).runs[0].run_dir)
    start = next(r for r in read_metrics(run) if r["split"] == "run")
    assert (start["launcher"], start["world_size"], start["hosts"]) == ("slurm", 2, ["h1", "h2"])
    assert_same_run(run, one_host_run)


def test_the_hosts_see_each_other_and_nothing_else(two_hosts):
    """Each host has its own name and address, reaches the other through the bridge, and has
    no default route."""
    port = next(
        line.split("=")[1]
        for line in Path(two_hosts.conf["SLURM_CONF"]).read_text().splitlines()
        if line.startswith("SlurmdPort=")
    )
    # h2's slurmd answers a TCP connection from h1
    script = f"hostname; getent hosts h2 | cut -d' ' -f1; ip route; echo >/dev/tcp/h2/{port}"
    probe = two_hosts.on_host("h1", ["bash", "-c", script], stdout=subprocess.PIPE, text=True)
    out, _ = probe.communicate(timeout=60)
    assert probe.returncode == 0, out
    lines = out.splitlines()
    net = cluster_net(two_hosts)
    assert lines[0] == "h1" and lines[1] == f"{net}.12"
    assert not any(line.startswith("default") for line in lines[2:])
    assert all(f"{net}.0/24" in line for line in lines[2:])


def cluster_net(cluster) -> str:
    """The /24 the cluster's start chose in 198.18.0.0/15 ('198.18.X')."""
    net = (Path(cluster.script_env["POSESCALE_SLURM_DIR"]) / "etc" / "net").read_text().strip()
    assert net.startswith(("198.18.", "198.19."))
    return net


def test_the_daemons_listen_on_their_own_addresses_without_ipv6_and_clusters_take_other_nets(
    two_hosts, tmp_path, clean_env
):
    """Nothing listens on all of the machine's addresses; no IPv6 on the bridge, the veths or
    in the hosts; a second cluster takes the next free /24, not the first one's."""
    import psutil

    net = cluster_net(two_hosts)
    state = Path(two_hosts.script_env["POSESCALE_SLURM_DIR"])
    daemons = {p.stem: int(p.read_text()) for p in (state / "run").glob("*.pid")}
    listening = {
        c.pid: c.laddr.ip
        for c in psutil.net_connections("inet")
        if c.status == psutil.CONN_LISTEN and c.pid in daemons.values()
    }
    where = {name: listening.get(pid) for name, pid in daemons.items()}
    assert where["slurmctld"] == f"{net}.1"
    assert where["slurmdbd"] == where["mariadbd"] == "127.0.0.1"
    assert "0.0.0.0" not in listening.values()
    tag = next(line.split()[1] for line in (state / "etc" / "made").read_text().splitlines())
    for iface in Path("/proc/sys/net/ipv6/conf").glob(f"*{tag.removeprefix('psbr')}*"):
        assert (iface / "disable_ipv6").read_text().strip() == "1", iface.name
    probe = two_hosts.on_host("h1", ["ip", "-6", "addr"], stdout=subprocess.PIPE, text=True)
    assert probe.communicate(timeout=60)[0].strip() == ""
    with local_slurm(tmp_path / "second", clean_env, hosts=1) as second:
        assert cluster_net(second) != net


def wait_until(predicate, timeout: float, what):
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what()}")


def cluster_script(cluster, *args) -> None:
    script = ["bash", str(ROOT / "slurm" / "local-cluster.sh"), *args]
    done = subprocess.run(script, env=cluster.script_env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.slow
def test_a_killed_host_fails_the_job_which_is_requeued_and_resumes_without_a_lost_step(
    two_hosts, shards, tmp_path, tiny_overrides, uninterrupted_run
):
    """Every process of h2 killed mid-run (its slurmd too: the host is gone): rank 0 on h1
    fails at its next all-reduce, the batch script requeues the job (this attempt wrote a
    checkpoint), Slurm starts it again once h2 is back, and the run resumes from its last
    checkpoint to the same steps and weights as an uninterrupted one."""
    run, log = tmp_path / "run", tmp_path / "job.out"
    env = {**two_hosts.env, "CONFIG": "configs/demo.yaml", "RUN_DIR": str(run)}
    submitted = subprocess.run(
        ["sbatch", "--parsable", "--nodes=2", "--gpus-per-node=0", "--cpus-per-task=1"]
        + ["--mem=2G", f"--output={log}", "slurm/train.sbatch"]
        + tiny_overrides(shards, run, **FAULT_OVERRIDES),
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert submitted.returncode == 0, submitted.stderr
    job = submitted.stdout.strip()

    def output() -> str:
        return log.read_text(errors="replace")[-4000:] if log.is_file() else ""

    wait_until(lambda: trained_steps(run)[-1:] >= [10], 300, lambda: f"steps\n{output()}")
    cluster_script(two_hosts, "kill-host", "h2")
    killed = time.time()
    # Either the batch script requeues (the step ended) or, when srun is still waiting for the
    # dead host, Slurm does once it declares h2 down (SlurmdTimeout, 30 s): the job leaves
    # RUNNING with a restart counted.
    wait_until(
        lambda: two_hosts.job_fields(job).get("Restarts", "0") != "0",
        180,
        lambda: f"the requeue\n{two_hosts.job_fields(job)}\n{output()}",
    )
    failed_after = time.time() - killed
    cluster_script(two_hosts, "start-host", "h2")
    wait_until(
        lambda: two_hosts.start_requeued_now(job),
        240,
        lambda: f"a restart\n{two_hosts.job_fields(job)}\n{output()}",
    )
    wait_until(
        lambda: two_hosts.job_fields(job).get("JobState") == "COMPLETED",
        300,
        lambda: f"the job to end\n{two_hosts.job_fields(job)}\n{output()}",
    )
    assert failed_after < 75, "requeued within SlurmdTimeout (30 s) plus a ping interval"
    assert_resumed_to_the_uninterrupted_run(run, uninterrupted_run)


def worker_pid(run: Path, rank: int) -> int | None:
    """The training process of `rank` in `run` under torchrun: launch/train.py with the run's
    folder on its command line and the rank torchrun gave it in its environment (the agent
    has the same command line but no RANK)."""
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:  # not a process, or one that has ended
            continue
        if (
            b"launch/train.py" in cmdline
            and f"run.dir={run}".encode() in cmdline
            and f"RANK={rank}".encode() in environ
            and any(var.startswith(b"TORCHELASTIC_RUN_ID=") for var in environ)
        ):
            return int(proc.name)
    return None


@pytest.mark.slow
def test_an_elastic_job_restarts_both_hosts_after_a_worker_dies_and_resumes(
    two_hosts, shards, tmp_path, tiny_overrides, uninterrupted_run
):
    """`torchrun --nnodes 2:2 --max-restarts 1`, one agent per host, rank 1's training process
    killed mid-run: h2's agent sees its worker fail and rejoins the rendezvous; h1's agent sees
    the waiting node (or its own worker failing at the next all-reduce) and stops its worker
    too; both start new workers, which resume from the last checkpoint. Each round gets its own
    store (TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1, as slurm/train.sbatch sets): with torch's
    shared store a restarted rank can read the last round's addresses."""
    run = tmp_path / "run"
    logs = {host: tmp_path / f"agent-{host}.log" for host in ("h1", "h2")}
    overrides = tiny_overrides(shards, run, **FAULT_OVERRIDES)
    torchrun = ["env", "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1", "LOGLEVEL=INFO", sys.executable]
    torchrun += ["-m", "torch.distributed.run", "--nnodes", "2:2", "--nproc_per_node", "1"]
    torchrun += ["--max-restarts", "1", "--monitor-interval", "1", "--rdzv_backend", "c10d"]
    torchrun += ["--rdzv_endpoint", f"h1:{free_port()}", "--rdzv_id", "elastic"]

    def output() -> str:
        return "\n".join(
            f"== {host}\n{log.read_text(errors='replace')[-3000:]}" for host, log in logs.items()
        )

    agents = {}
    try:
        for host, log in logs.items():
            with log.open("w") as out:
                agents[host] = two_hosts.on_host(
                    host, [*torchrun, *TRAIN, *overrides], cwd=ROOT, stdout=out, stderr=out
                )
        wait_until(lambda: trained_steps(run)[-1:] >= [10], 300, lambda: f"steps\n{output()}")
        killed = worker_pid(run, rank=1)
        assert killed, f"no rank 1 worker of {run}\n{output()}"
        os.kill(killed, signal.SIGKILL)
        for agent in agents.values():
            agent.wait(timeout=600)
    finally:
        for agent in agents.values():
            if agent.poll() is None:
                agent.kill()
    assert [agent.returncode for agent in agents.values()] == [0, 0], output()
    assert worker_pid(run, rank=1) is None
    assert "will restart worker group" in logs["h2"].read_text(), output()
    assert_resumed_to_the_uninterrupted_run(run, uninterrupted_run)


@pytest.mark.slow
def test_a_host_that_never_joins_the_rendezvous_is_an_error_within_the_join_timeout(
    two_hosts, shards, tmp_path, tiny_overrides
):
    """h1's agent waits for a second host that never comes: torchrun gives up after
    join_timeout (here 15 s; slurm/train.sbatch sets RDZV_JOIN_TIMEOUT, default 600 s) and says
    why, instead of hanging."""
    overrides = tiny_overrides(shards, tmp_path / "run", **{"train.max_steps": STEPS})
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2"]
    torchrun += ["--nproc_per_node", "1", "--rdzv_backend", "c10d"]
    torchrun += ["--rdzv_endpoint", f"h1:{free_port()}", "--rdzv_id", "alone"]
    torchrun += ["--rdzv_conf", "join_timeout=15"]
    started = time.time()
    agent = two_hosts.on_host(
        "h1",
        [*torchrun, *TRAIN, *overrides],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        output = agent.communicate(timeout=180)[0]
    finally:
        if agent.poll() is None:
            agent.kill()
    waited = time.time() - started
    assert agent.returncode != 0
    assert "RendezvousTimeoutError" in output, output[-3000:]
    assert 15 <= waited < 90
