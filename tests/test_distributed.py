"""Distribution decided from the environment (pose/engine/distributed.py), and the allocator
setting training processes use."""

import subprocess
import sys

import pytest

from pose.engine.distributed import DistributedSetupError, describe_environment, first_host


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
from pose.engine.distributed import init_distributed
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
