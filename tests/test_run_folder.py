import os
import signal
import subprocess
import sys

import pytest

from pose.folders import RunFolder, RunFolderBusy

# Takes the lock, forks a child that outlives it (as loader workers outlive a SIGKILLed
# training for a few seconds), says so, and waits to be killed.
HOLDER = """
import os, sys, time
from pose.folders import RunFolder
lock = RunFolder(sys.argv[1]).lock()
child = os.fork()
if child == 0:
    time.sleep(60)
    os._exit(0)
print(child, flush=True)
time.sleep(60)
"""


def start_holder(folder):
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(folder)], stdout=subprocess.PIPE, text=True
    )
    child = int(proc.stdout.readline())
    return proc, child


def test_a_held_folder_is_refused_naming_the_holder(tmp_path):
    proc, child = start_holder(tmp_path)
    try:
        with pytest.raises(RunFolderBusy, match=f"in use by pid {proc.pid} on host"):
            RunFolder(tmp_path).lock()
    finally:
        for pid in (proc.pid, child):
            os.kill(pid, signal.SIGKILL)
        proc.wait()


def test_a_killed_holder_frees_the_folder_while_its_forked_children_live(tmp_path):
    proc, child = start_holder(tmp_path)
    try:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        os.kill(child, 0)  # the forked child is still there
        lock = RunFolder(tmp_path).lock()
        lock.release()
    finally:
        os.kill(child, signal.SIGKILL)


def test_one_process_cannot_lock_a_folder_twice_and_can_after_release(tmp_path):
    lock = RunFolder(tmp_path).lock()
    with pytest.raises(RunFolderBusy, match="in use by this process"):
        RunFolder(tmp_path / ".").lock()
    lock.release()
    RunFolder(tmp_path).lock().release()
