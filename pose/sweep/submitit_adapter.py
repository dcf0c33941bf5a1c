"""submitit behind names of ours: the one module that uses its internals (the sbatch script it
would write, the place and format of a job's result file). Its public API (executors, job
arrays, `DelayedSubmission`) is used where it is needed."""

from __future__ import annotations

import io
import pickle
import sys
from pathlib import Path
from typing import Any

# AutoExecutor's parameter names -> the sbatch script builder's
_SCRIPT_NAMES = {
    "name": "job_name",
    "timeout_min": "time",
    "tasks_per_node": "ntasks_per_node",
    "mem_gb": "mem",
}


def sbatch_script(parameters: dict[str, Any], folder: Path, array_size: int) -> str:
    """The sbatch script (its `#SBATCH` lines and command) that submitit writes for a job array
    of `array_size` tasks with AutoExecutor `parameters`; needs no Slurm."""
    from submitit.slurm import slurm

    script_params = {}
    for key, value in parameters.items():
        key = _SCRIPT_NAMES.get(key, key.removeprefix("slurm_"))
        script_params[key] = slurm._convert_mem(value) if key == "mem" else value
    return slurm._make_sbatch_string(
        command=f"{sys.executable} -u -m submitit.core._submit {folder}",
        folder=folder,
        map_count=array_size,
        **script_params,
    )


def submission_errors() -> tuple[type[BaseException], ...]:
    """What submitting through sbatch raises when Slurm refuses or cannot be reached."""
    import subprocess

    from submitit.core.utils import FailedJobError

    return (FailedJobError, OSError, subprocess.SubprocessError)


class _PlainValues(pickle.Unpickler):
    """Unpickles builtin values only (dict, list, str, numbers): any class is refused, so
    reading a result file never runs code."""

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a result file")


def read_result(folder: Path, job_id: str) -> tuple[str, Any] | None:
    """(kind, value) from a finished job's result file in the submitit `folder` ('%j' in it
    stands for the job id): ('success', the returned value) or ('error', the traceback text);
    None when the job has not finished. Raises ValueError for a file it will not read."""
    from submitit.core.utils import JobPaths

    path = JobPaths(folder, job_id=job_id, task_id=0).result_pickle
    if not path.is_file():
        return None
    try:
        kind, value = _PlainValues(io.BytesIO(path.read_bytes())).load()
    except Exception as e:  # pickle raises many kinds of errors
        raise ValueError(f"unreadable result file {path}: {e}") from None
    return kind, value
