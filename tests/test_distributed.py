"""Distribution decided from the environment (pose/distributed.py), and the allocator
setting training processes use."""

import subprocess
import sys
import time

import pytest

from pose.distributed import (
    DistributedSetupError,
    describe_environment,
    first_host,
    restarts_may_meet_stale_addresses,
)


def test_distributed_environment_from_torchrun_slurm_or_nothing():
    torchrun = {
        "RANK": "1",
        "WORLD_SIZE": "4",
        "LOCAL_RANK": "1",
        "MASTER_ADDR": "h",
        "MASTER_PORT": "29500",
    }
    assert describe_environment(torchrun)["SOURCE"] == "torchrun"
    slurm = {
        "SLURM_PROCID": "5",
        "SLURM_NTASKS": "8",
        "SLURM_LOCALID": "1",
        "SLURM_JOB_NODELIST": "gpu[03-04,7]",
        "SLURM_JOB_ID": "1234",
    }
    found = describe_environment(slurm)
    assert (found["RANK"], found["WORLD_SIZE"], found["LOCAL_RANK"]) == ("5", "8", "1")
    assert found["MASTER_ADDR"] == "gpu03" and found["MASTER_PORT"] == str(20000 + 1234)
    assert first_host("node7") == "node7"
    single = describe_environment({})
    assert (single["RANK"], single["WORLD_SIZE"], single["SOURCE"]) == ("0", "1", "single")
    with pytest.raises(DistributedSetupError, match=r"half set.*MASTER_ADDR, MASTER_PORT missing"):
        describe_environment({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"})


ALLOCATOR_PROBE = """
import ctypes, sys, torch
from pose.config import LaunchConfig
from pose.distributed import init_distributed
init_distributed(LaunchConfig(keep_freed_memory=sys.argv[1] == "true"))
class Info(ctypes.Structure):  # glibc's struct mallinfo2
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
mallinfo2 = ctypes.CDLL(None).mallinfo2
mallinfo2.restype = Info
before = mallinfo2()
step = torch.ones(5 << 20)  # a 20 MB tensor of one training step
live = mallinfo2()
del step
after = mallinfo2()
print((live.hblkhd - before.hblkhd) >> 20, (after.fordblks - before.fordblks) >> 20)
"""


@pytest.mark.parametrize("keep", ["true", "false"])
def test_freed_memory_is_kept_for_the_next_step(keep, clean_env):
    out = subprocess.run(
        [sys.executable, "-c", ALLOCATOR_PROBE, keep],
        capture_output=True,
        text=True,
        env=clean_env(),
        check=True,
    ).stdout
    mapped_mb, kept_mb = (int(v) for v in out.split()[-2:])
    if keep == "true":  # from the heap, and still there for the next step once freed
        assert mapped_mb == 0 and kept_mb >= 19
    else:  # glibc's default: fresh pages mapped for it, returned when freed
        assert mapped_mb >= 19 and kept_mb < 5


def _batchnorm_ranks(rank: int, port: int, queue) -> None:
    """One of two gloo ranks: BatchNorm statistics from different data, then averaged."""
    import os

    import torch
    import torch.distributed as dist

    from pose.distributed import DistEnv, average_batchnorm_statistics

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.manual_seed(rank)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU())
    model.append(torch.nn.BatchNorm2d(4))
    for _ in range(3):
        model(torch.randn(8, 3, 9, 9) * (1 + rank) + 5 * rank)
    before = [b.tolist() for n, b in model.named_buffers() if "running" in n]
    env = DistEnv(rank, 2, rank, torch.device("cpu"), "gloo", "single")
    layers = average_batchnorm_statistics(model, env)
    after = [b.tolist() for n, b in model.named_buffers() if "running" in n]
    # plain lists: a tensor would travel as a shared-memory fd, which the receiver can only
    # fetch while this process lives
    queue.put((rank, layers, before, after))
    dist.destroy_process_group()


def test_batchnorm_statistics_are_the_mean_over_ranks():
    import torch
    import torch.multiprocessing as mp

    from pose.distributed import free_port

    context = mp.get_context("spawn")
    queue = context.Queue()
    port = free_port()
    procs = [context.Process(target=_batchnorm_ranks, args=(r, port, queue)) for r in (0, 1)]
    for p in procs:
        p.start()
    results = dict(
        (r, (layers, before, after))
        for r, layers, before, after in (queue.get(timeout=120) for _ in procs)
    )
    for p in procs:
        p.join(timeout=60)
    (layers0, before0, after0), (layers1, before1, after1) = (
        (layers, [torch.tensor(b) for b in before], [torch.tensor(a) for a in after])
        for layers, before, after in (results[0], results[1])
    )
    assert layers0 == layers1 == 2
    assert not torch.allclose(before0[0], before1[0])  # the ranks saw different data
    for b0, b1, a0, a1 in zip(before0, before1, after0, after1, strict=True):
        torch.testing.assert_close(a0, (b0 + b1) / 2)
        torch.testing.assert_close(a1, a0, rtol=0, atol=0)


def test_sync_bn_converts_for_gpus_and_is_refused_on_cpus():
    import torch

    from pose.config import ModelConfig
    from pose.distributed import DistEnv, use_sync_batchnorm
    from pose.models import build_model

    model = build_model(ModelConfig(backbone="resnet18", deconv_filters=32), 17)
    keys = list(model.state_dict())
    one = DistEnv(0, 1, 0, torch.device("cpu"), "gloo", "single")
    assert use_sync_batchnorm(model, True, one) is model
    cpus = DistEnv(0, 2, 0, torch.device("cpu"), "gloo", "torchrun")
    with pytest.raises(DistributedSetupError, match=r"model\.sync_bn=true needs GPUs"):
        use_sync_batchnorm(model, True, cpus)
    assert use_sync_batchnorm(model, False, cpus) is model
    gpus = DistEnv(0, 2, 0, torch.device("cuda", 0), "nccl", "torchrun")
    synced = use_sync_batchnorm(model, True, gpus)
    kinds = {type(m).__name__ for m in synced.modules() if "BatchNorm" in type(m).__name__}
    assert kinds == {"SyncBatchNorm"}
    assert list(synced.state_dict()) == keys  # checkpoints stay interchangeable


def test_torchrun_restarts_over_a_shared_store_are_warned_about():
    """Restarts over torchrun's shared rendezvous store failed 2 of 3 times in
    tests/test_multihost.py's elastic test (a restarted rank read the last round's address of
    rank 0); the warning names the fix. No restarts, or a store per round: no warning."""
    shared = {"TORCHELASTIC_USE_AGENT_STORE": "True", "TORCHELASTIC_MAX_RESTARTS": "3"}
    why = restarts_may_meet_stale_addresses(shared)
    assert "--max-restarts 3" in why and "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1" in why
    assert restarts_may_meet_stale_addresses({**shared, "TORCHELASTIC_MAX_RESTARTS": "0"}) is None
    assert (
        restarts_may_meet_stale_addresses({**shared, "TORCHELASTIC_USE_AGENT_STORE": "False"})
        is None
    )
    assert restarts_may_meet_stale_addresses({}) is None


def test_heartbeat_names_the_rank_that_stopped_even_after_the_loop_stopped_its_own():
    """Two ranks beat in one store; rank 1 falls silent. Rank 0 names it (host and last step),
    and still does after its own beat stopped: the training loop stops its heartbeat on the way
    out, before the failed collective is explained."""
    import socket

    import torch
    import torch.distributed as dist

    from pose import distributed
    from pose.distributed import DistEnv, Heartbeat, free_port

    store = dist.TCPStore("127.0.0.1", free_port(), 2, True, wait_for_workers=False)
    cpu = torch.device("cpu")
    envs = [DistEnv(r, 2, r, cpu, "gloo", "torchrun") for r in (0, 1)]
    rank0, rank1 = (Heartbeat(env, every_s=0.1, store=store) for env in envs)
    try:
        rank0.step, rank1.step = 12, 7
        time.sleep(0.3)
        assert rank0.silent() == []
        rank1.stop()
        assert rank0.silent() == [f"rank 1 on {socket.gethostname()} (its last step 7)"]
        distributed._heartbeat = rank0
        rank0.stop()
        assert distributed.silent_ranks() == [f"rank 1 on {socket.gethostname()} (its last step 7)"]
        assert distributed.start_heartbeat(envs[0]) is not rank0  # a stopped one is not reused
    finally:
        for beat in (rank0, rank1, distributed._heartbeat):
            if beat is not None:
                beat.stop()
        distributed._heartbeat = None
