"""The one place that decides distribution, from the environment: torchrun's variables, Slurm's
(`srun`, one task per device), or none (a single process). Nothing else reads RANK or SLURM_*.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

from pose.config import LaunchConfig

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


class DistributedSetupError(RuntimeError):
    """The environment describes a distributed run only in part."""


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str
    source: str  # "torchrun", "slurm" or "single"

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def describe_environment(env: dict[str, str] | None = None) -> dict[str, str]:
    """RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT and the source they came from,
    derived from torchrun's variables, Slurm's, or a single process; fails clearly when the
    environment is half set."""
    env = dict(os.environ if env is None else env)
    present = [v for v in TORCHRUN_VARS if v in env]
    if present:
        missing = [v for v in TORCHRUN_VARS if v not in env]
        if missing:
            raise DistributedSetupError(
                f"distributed environment is half set: {', '.join(present)} given but "
                f"{', '.join(missing)} missing (start with torchrun, srun, or set all of "
                f"{', '.join(TORCHRUN_VARS)})"
            )
        return {v: env[v] for v in TORCHRUN_VARS} | {"SOURCE": "torchrun"}
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        nodes = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
        if not nodes:
            raise DistributedSetupError(
                "Slurm task without SLURM_JOB_NODELIST: cannot find the master"
            )
        job = int(env.get("SLURM_JOB_ID", "0"))
        return {
            "RANK": env["SLURM_PROCID"],
            "WORLD_SIZE": env["SLURM_NTASKS"],
            "LOCAL_RANK": env.get("SLURM_LOCALID", "0"),
            "MASTER_ADDR": first_host(nodes),
            "MASTER_PORT": env.get("MASTER_PORT", str(20000 + job % 20000)),
            "SOURCE": "slurm",
        }
    return {
        "RANK": "0",
        "WORLD_SIZE": "1",
        "LOCAL_RANK": "0",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "SOURCE": "single",
    }


def keep_freed_memory() -> bool:
    """Have glibc's malloc serve allocations up to 32 MB from the heap and keep freed heap
    memory (up to 1 GiB) for reuse, instead of mapping fresh pages for every large tensor and
    returning them when it is freed. Training allocates the same large tensors every step
    (activations, gradients, input batches); fresh pages cost a page fault each and zeroing
    (the measured gain: BENCHMARKS.md, training step). The price is a resident size that stays
    at its peak.
    Forked data workers inherit it. False where the C library is not glibc."""
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's malloc.h
    return bool(mallopt(m_mmap_threshold, 32 << 20)) and bool(mallopt(m_trim_threshold, 1 << 30))


def init_distributed(cfg: LaunchConfig, always_group: bool = False) -> DistEnv:
    """Read the environment, export torchrun-style variables (DeepSpeed reads them too), pick the
    device and backend (nccl on GPUs, gloo on CPU), and start torch.distributed when world > 1
    (or at any world with `always_group`: a check of the backend itself, on one GPU). Tunes the
    allocator (`keep_freed_memory`) when `cfg.keep_freed_memory`."""
    if cfg.keep_freed_memory:
        keep_freed_memory()
    found = describe_environment()
    if found["SOURCE"] == "torchrun":
        die_with_parent()
        if int(found["RANK"]) == 0 and (why := restarts_may_meet_stale_addresses()):
            print(f"posescale: warning: {why}", file=sys.stderr, flush=True)
    for var in TORCHRUN_VARS:
        os.environ[var] = found[var]
    rank, world, local = int(found["RANK"]), int(found["WORLD_SIZE"]), int(found["LOCAL_RANK"])
    if torch.cuda.is_available():
        device = torch.device("cuda", local % torch.cuda.device_count())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
        cpus = os.environ.get("SLURM_CPUS_PER_TASK", "")
        if cpus.isdigit():  # one intra-op thread per CPU Slurm gave this task
            torch.set_num_threads(int(cpus))
    backend = (
        cfg.dist_backend
        if cfg.dist_backend != "auto"
        else ("nccl" if device.type == "cuda" else "gloo")
    )
    if backend == "nccl" and device.type != "cuda":
        raise DistributedSetupError("launch.dist_backend=nccl needs GPUs; use gloo on a CPU")
    if (world > 1 or always_group) and not dist.is_initialized():
        from datetime import timedelta

        dist.init_process_group(
            backend,
            rank=rank,
            world_size=world,
            timeout=timedelta(seconds=cfg.collective_timeout_s),
        )
    return DistEnv(rank, world, local, device, backend, found["SOURCE"])


def restarts_may_meet_stale_addresses(env: dict[str, str] | None = None) -> str | None:
    """Why a torchrun restart may hang or fail to connect, or None.

    torchrun's c10d rendezvous shares its agent's TCPStore with the workers (torch >= 2.5,
    unless TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1). The store outlives a restart and the workers'
    keys are not scoped per round, so a restarted rank can read the previous round's addresses
    and connect to a dead process (pytorch/pytorch#135712, #167288; seen here as "Connection
    refused" to rank 0 after `--max-restarts`). With sharing off, every round gets a new store.
    """
    env = os.environ if env is None else env
    shared = env.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    restarts = env.get("TORCHELASTIC_MAX_RESTARTS", "0")
    if shared and restarts.isdigit() and int(restarts) > 0:
        return (
            f"torchrun may restart the workers (--max-restarts {restarts}) but shares its "
            "rendezvous store with them, so a restarted rank can meet the last round's addresses "
            "(pytorch/pytorch#135712); export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 before "
            "torchrun (slurm/train.sbatch does)"
        )
    return None


def first_host(nodelist: str) -> str:
    """The first host of a Slurm node list ('node[03-05,9],gpu1' -> 'node03'); uses
    `scontrol show hostnames` when available, else parses the common forms."""
    try:
        out = subprocess.run(
            ["scontrol", "show", "hostnames", nodelist],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.split()
        if out:
            return out[0]
    except (OSError, subprocess.SubprocessError):
        pass
    head = re.match(r"([^,\[]+)(\[([^\]]+)\])?", nodelist)
    if not head:
        raise DistributedSetupError(f"cannot read the Slurm node list '{nodelist}'")
    prefix, ranges = head.group(1), head.group(3)
    if not ranges:
        return prefix
    first = ranges.split(",")[0].split("-")[0]
    return f"{prefix}{first}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def die_with_parent() -> None:
    """Have the kernel kill this process when its parent (torchrun's agent) dies: ranks left
    behind by a killed agent would go on writing to the run folder beside a restarted run."""
    import ctypes
    import signal

    pr_set_pdeathsig = 1  # linux/prctl.h
    try:
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    except (OSError, AttributeError):
        return  # not Linux: nothing to arrange
    if os.getppid() == 1:  # the agent died before the request was made
        os._exit(1)


def any_rank(flag: bool, env: DistEnv) -> bool:
    """Whether `flag` holds on any rank (a collective: every rank must call it)."""
    if env.world_size == 1:
        return flag
    value = torch.tensor([int(flag)], device=env.device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def sum_over_ranks(values: list[float], env: DistEnv) -> list[float]:
    """Element-wise sums of `values` over the ranks (a collective)."""
    if env.world_size == 1:
        return list(values)
    total = torch.tensor(values, dtype=torch.float64, device=env.device)
    dist.all_reduce(total)
    return total.tolist()


def rank_hosts(env: DistEnv) -> list[str]:
    """The host name of every rank, in rank order (a collective)."""
    if env.world_size == 1:
        return [socket.gethostname()]
    names: list[str] = [""] * env.world_size
    dist.all_gather_object(names, socket.gethostname())
    return names


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def leave_group(env: DistEnv | None, together: bool) -> None:
    """Leave the process group a program started with several ranks; `together`: after a
    barrier (a rank that exits while a peer's gloo threads still talk to it aborts with
    "terminate called without an active exception"). One process starts none: a group there
    is its caller's (DeepSpeed's, in a test) and is left as it is."""
    if env is not None and env.world_size > 1:
        if together:
            barrier()
        shutdown()


COLLECTIVE_FAILURE_MARKS = ("gloo", "NCCL", "Connection reset", "Connection closed", "Timed out")


def is_collective_failure(error: BaseException) -> bool:
    """Whether `error` is a collective that timed out or lost its peer (gloo raises plain
    RuntimeErrors that name its transport; NCCL raises DistBackendError)."""
    if isinstance(error, dist.DistError):
        return True
    return isinstance(error, RuntimeError) and any(
        m in str(error) for m in COLLECTIVE_FAILURE_MARKS
    )


def use_sync_batchnorm(model: torch.nn.Module, wanted: bool, env: DistEnv) -> torch.nn.Module:
    """`model` with SyncBatchNorm (statistics of the global batch) when `wanted` and several
    ranks train; its state dict keeps BatchNorm's names, so checkpoints stay interchangeable."""
    if not wanted or env.world_size == 1:
        return model
    if env.device.type == "cpu":
        raise DistributedSetupError(
            "model.sync_bn=true needs GPUs: torch's SyncBatchNorm has no CPU kernel; with "
            "model.sync_bn=false each rank normalises its own batch and the running statistics "
            "are averaged over ranks at every evaluation and checkpoint"
        )
    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)


class Heartbeat:
    """Each rank beats in the rendezvous store (a counter, its host and its step) from a thread,
    every `every_s` seconds, so that when a collective fails the ranks that stopped beating (a
    frozen or hung process, a host gone) can be named: `silent()` reads every rank's beat, waits
    two periods, reads again, and names those whose counter did not move. Counters, not clocks:
    the hosts' clocks need not agree. The store is torchrun's agent's (or rank 0's), reached
    over TCP apart from the process group, so it answers when a collective does not."""

    PREFIX = "posescale/heartbeat"

    def __init__(self, env: DistEnv, every_s: float = 2.0, store=None):
        self.env, self.every_s, self.step = env, every_s, 0
        self.store = store if store is not None else _default_store()
        self._stopped = threading.Event()
        self._thread = None
        if self.store is not None and env.world_size > 1:
            self._thread = threading.Thread(target=self._beat, name="heartbeat", daemon=True)
            self._thread.start()

    def _beat(self) -> None:
        count, host = 0, socket.gethostname()
        while not self._stopped.is_set():
            count += 1
            beat = f"{count} {host} {self.step}"
            with contextlib.suppress(Exception):  # a store gone: nothing left to tell
                self.store.set(f"{self.PREFIX}/{self.env.rank}", beat)
            self._stopped.wait(self.every_s)

    def _read(self) -> dict[int, tuple[int, str, str]]:
        beats = {}
        for rank in range(self.env.world_size):
            try:
                count, host, step = self.store.get(f"{self.PREFIX}/{rank}").decode().split()
                beats[rank] = (int(count), host, step)
            except Exception:  # never beat, or the store does not answer
                beats[rank] = (-1, "an unknown host", "?")
        return beats

    def silent(self) -> list[str]:
        """'rank R on HOST (last heard at step S)' for each rank that stopped beating."""
        if self.store is None:
            return []
        before = self._read()
        time.sleep(2 * self.every_s + 0.5)
        after = self._read()
        return [
            f"rank {r} on {after[r][1]} (its last step {after[r][2]})"
            for r in sorted(after)
            if after[r][0] <= before[r][0] and r != self.env.rank
        ]

    @property
    def beating(self) -> bool:
        return not self._stopped.is_set()

    def stop(self) -> None:
        """Stop this rank's beat. The others' beats stay readable: a collective that failed
        inside the training loop is explained after the loop has stopped its heartbeat."""
        self._stopped.set()


_heartbeat: Heartbeat | None = None


def start_heartbeat(env: DistEnv) -> Heartbeat | None:
    """The process's heartbeat (with several ranks): the one beating, or a new one."""
    global _heartbeat
    if env.world_size > 1 and (_heartbeat is None or not _heartbeat.beating):
        _heartbeat = Heartbeat(env)
    return _heartbeat if env.world_size > 1 else None


def silent_ranks() -> list[str]:
    """The ranks that stopped beating, as the last heartbeat started in this process names
    them, beating or stopped ([] without one)."""
    return _heartbeat.silent() if _heartbeat is not None else []


def _default_store():
    """The default process group's store (torch keeps it privately), or None."""
    try:
        return dist.distributed_c10d._get_default_store()
    except Exception:  # no group, or a torch without it
        return None


def where_am_i() -> str:
    """'rank R of W on HOST' for error messages (host: this process's name and address)."""
    rank = dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", "0"))
    world = (
        dist.get_world_size() if dist.is_initialized() else int(os.environ.get("WORLD_SIZE", "1"))
    )
    return f"rank {rank} of {world} on {socket.gethostname()}"


def average_batchnorm_statistics(model: torch.nn.Module, env: DistEnv) -> int:
    """Make every rank's BatchNorm running mean and variance the mean over ranks; returns how
    many layers. Each rank's running statistics are an exponential average of the batches it
    saw; the average over ranks is the same exponential average of the ranks' mean batch
    statistics (the update is linear), so averaging whenever they are used (evaluation, a
    checkpoint) gives the same values as averaging every step, and a resumed run the same as
    an uninterrupted one. Rank 0's alone (what a DeepSpeed checkpoint would keep) would rest on
    1/W of the data. The variance is the mean of the ranks' variances: the spread between the
    ranks' means is left out, as in timm's distribute_bn."""
    if env.world_size == 1:
        return 0
    layers = [
        m
        for m in model.modules()
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.running_mean is not None
    ]
    if not layers:
        return 0
    stats = [t for m in layers for t in (m.running_mean, m.running_var)]
    flat = torch.cat([t.detach().reshape(-1).float() for t in stats])
    dist.all_reduce(flat)
    flat /= env.world_size
    offset = 0
    with torch.no_grad():
        for t in stats:
            t.copy_(flat[offset : offset + t.numel()].view_as(t))
            offset += t.numel()
    return len(layers)


class BatchNormAverage:
    """`average_batchnorm_statistics` at most once per step, for the components that need one
    set of statistics at a step (the evaluator and the checkpointer): statistics already equal
    on every rank could still move by rounding if averaged again."""

    def __init__(self, model: torch.nn.Module, env: DistEnv):
        self.model, self.env, self.step = model, env, -1

    def at(self, step: int) -> None:
        if step != self.step:
            average_batchnorm_statistics(self.model, self.env)
            self.step = step
