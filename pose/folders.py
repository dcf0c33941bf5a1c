"""The folders the project writes, each with one owner that names its files: a run folder
(`RunFolder`), an export folder (`ExportFolder`) and a sweep folder (`SweepFolder`). Everything
that reads or writes one asks its object where things are, and `resolve_trained` is the one
place that works out what a `--checkpoint` argument names (its weights, config and layout). A
run folder:

    config.yaml         the resolved config (pose.config)
    layout.yaml         the keypoint layout the model was trained for (pose.data.layout)
    union.yaml          with several datasets: each one's layout and its joints' channels in
                        the union layout.yaml is (pose.data.union)
    metrics.jsonl       one JSON record per line (pose.tracking)
    wandb_id.txt        the wandb run id, so that a resumed run continues the same wandb run
    budget.json         the step count a wall-clock budget was measured to (pose.engine.budget)
    deepspeed_config.json  the DeepSpeed config generated for the run (for reading; not read back)
    checkpoints/        one folder per checkpoint tag (pose.engine.checkpoint), each with the
                        model's weights in MODEL_STATES_FILE, and
      latest, best      the tag of the newest complete checkpoint and of the best by AP
    pictures/           PNGs written during training (predictions_epochNNN.png)
    eval/               results.json of the last evaluation (COCO results)
    wandb/              wandb's own files
    lock                held (an advisory lock) by the training that uses the folder
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import secrets
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from pose.files import atomic_write

# The model's weights in a checkpoint folder: DeepSpeed's model states file (under ZeRO-3, whose
# own files hold each rank's slices, the gathered weights written under the same name)
MODEL_STATES_FILE = "mp_rank_00_model_states.pt"


class _Folder:
    """A folder with its path; `__repr__` names its kind."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"{type(self).__name__}('{self.path}')"


class _ModelFolder(_Folder):
    """A folder that describes a model: the config it was trained with and its keypoint
    layout, under the same names in a run folder and an export folder."""

    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def layout(self) -> Path:
        return self.path / "layout.yaml"

    @property
    def union(self) -> Path:
        return self.path / "union.yaml"


class ExportFolder(_ModelFolder):
    """The layout of an export folder (launch/export.py), in one place:

    model_state_dict.pth  the model's weights, a plain state dict
    config.yaml           the config the model was trained with (pretrained weights left out)
    layout.yaml           what each heatmap channel is
    union.yaml            a model of several datasets: each one's joints among them
    model.onnx, model.pt2 the ONNX model and the torch.export program
    export_check.json     how far each export's heatmaps lie from the model's
    """

    @property
    def weights(self) -> Path:
        return self.path / "model_state_dict.pth"

    @property
    def onnx(self) -> Path:
        return self.path / "model.onnx"

    @property
    def program(self) -> Path:
        return self.path / "model.pt2"

    @property
    def check(self) -> Path:
        return self.path / "export_check.json"

    def is_export(self) -> bool:
        return self.weights.is_file()


class PredictFolder(_Folder):
    """The layout of what prediction writes (pose/inference/run.py), in one place:

    keypoints.json                  every person found, in COCO results format
    <image>_pose.png                each image with its people drawn
    <video>_pose.mp4                each video with its people drawn
    <image>_person<N>_attention.png the attention maps of person N (the attention variants)
    animation.gif                   with --gif: the drawn images (or attention maps) in turn
    """

    @property
    def results(self) -> Path:
        return self.path / "keypoints.json"

    @property
    def animation(self) -> Path:
        return self.path / "animation.gif"

    def drawn_image(self, stem: str) -> Path:
        return self.path / f"{stem}_pose.png"

    def drawn_video(self, name: str) -> Path:
        return self.path / f"{name}_pose.mp4"

    def attention_picture(self, stem: str, person: int) -> Path:
        return self.path / f"{stem}_person{person}_attention.png"


class RunFolderBusy(RuntimeError):
    """Another process holds the run folder's lock; the message names its host and pid."""


class RunFolder(_ModelFolder):
    METRICS = "metrics.jsonl"

    def __init__(self, path: str | os.PathLike):
        if not str(path):
            raise ValueError("a run folder needs a path (run.dir is empty)")
        super().__init__(path)

    @classmethod
    def default_for(cls, config_path: str | os.PathLike) -> RunFolder:
        """Where a config's run goes when `run.dir` is empty: runs/<config name>."""
        return cls(Path("runs") / Path(config_path).stem)

    @classmethod
    def all_under(cls, root: str | os.PathLike) -> list[RunFolder]:
        """Every run folder below `root` that has started (written metrics), in path order."""
        return [cls(p.parent) for p in sorted(Path(root).rglob(cls.METRICS))]

    def has_started(self) -> bool:
        return self.metrics.is_file()

    @property
    def metrics(self) -> Path:
        return self.path / self.METRICS

    @property
    def deepspeed_config(self) -> Path:
        return self.path / "deepspeed_config.json"

    @property
    def budget(self) -> Path:
        return self.path / "budget.json"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def pictures(self) -> Path:
        return self.path / "pictures"

    @property
    def eval_results(self) -> Path:
        """The COCO results (one detection per person) of the last evaluation."""
        return self.path / "eval" / "results.json"

    def prediction_picture(self, epoch: int) -> Path:
        return self.pictures / f"predictions_epoch{epoch:03d}.png"

    def checkpoint(self, tag: str) -> Path:
        return self.checkpoints / tag

    def checkpoint_weights(self, tag: str) -> Path:
        return self.checkpoint(tag) / MODEL_STATES_FILE

    def checkpoint_tags(self) -> list[str]:
        """The checkpoint folders present, oldest first."""
        if not self.checkpoints.is_dir():
            return []
        return sorted(p.name for p in self.checkpoints.iterdir() if p.is_dir())

    def latest_tag(self) -> str | None:
        return _read_pointer(self.checkpoints / "latest")

    def best_tag(self) -> str | None:
        return _read_pointer(self.checkpoints / "best")

    def set_latest(self, tag: str) -> None:
        """Point `latest` at a checkpoint that is complete (durably: a crash after this must
        not leave it pointing at nothing)."""
        atomic_write(self.checkpoints / "latest", tag, durable=True)

    def set_best(self, tag: str) -> None:
        atomic_write(self.checkpoints / "best", tag, durable=True)

    def lock(self) -> RunLock:
        """Take the folder's lock for this process (released when it ends, whatever the
        reason), or raise RunFolderBusy naming the holder.

        A POSIX record lock (`lockf`), not `flock`: forked children (loader workers) do not
        inherit it, so a SIGKILLed training frees its folder at once, not when its orphaned
        workers notice and exit seconds later. Record locks belong to the process, so this
        process must not open the lock file elsewhere (closing any descriptor of it would drop
        the lock); `_held` refuses a second lock on the same folder from one process."""
        self.path.mkdir(parents=True, exist_ok=True)
        path = (self.path / "lock").resolve()
        if path in _held:
            raise RunFolderBusy(f"run folder '{self.path}' is in use by this process already")
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EACCES, errno.EAGAIN):
                os.close(fd)
                raise
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip()
            os.close(fd)
            raise RunFolderBusy(
                f"run folder '{self.path}' is in use by {holder or 'an unknown process'} "
                "(another training, or ranks left behind by a killed launcher); stop it or "
                "choose another run.dir"
            ) from None
        os.ftruncate(fd, 0)
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        os.write(fd, f"pid {os.getpid()} on host {socket.gethostname()} since {started}\n".encode())
        _held.add(path)
        return RunLock(fd, path)

    def wandb_id(self) -> str:
        """A stable wandb run id for this folder, made on first use."""
        path = self.path / "wandb_id.txt"
        if not path.is_file():
            atomic_write(path, secrets.token_hex(4))
        return path.read_text().strip()


class SweepFolder(_Folder):
    """The layout of a sweep folder (pose.sweep.submit), in one place:

    sweep.yaml          a copy of the sweep file it was submitted from
    sweep.json          the manifest: each run's name, overrides, run folder and job id
    runs/<name>/        each run's folder (a RunFolder)
    submitit/<job id>/  submitit's pickled job, its result and the job's stdout and stderr
    compare/            what launch/compare.py writes by default
    """

    @property
    def spec(self) -> Path:
        return self.path / "sweep.yaml"

    @property
    def manifest(self) -> Path:
        return self.path / "sweep.json"

    @property
    def submitit(self) -> Path:
        return self.path / "submitit"

    @property
    def job_pattern(self) -> Path:
        """submitit's folder pattern: one folder per job id."""
        return self.submitit / "%j"

    @property
    def compare(self) -> Path:
        return self.path / "compare"

    def run(self, name: str) -> RunFolder:
        return RunFolder(self.path / "runs" / name)

    def is_sweep(self) -> bool:
        return self.manifest.is_file()

    def read_manifest(self) -> SweepManifest:
        """The manifest; FileNotFoundError without one, ValueError (naming the file and what
        is wrong) when it is not one."""
        try:
            data = json.loads(self.manifest.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{self.manifest} is not valid JSON: {e}") from None
        try:
            runs = [SweepRun(**run) for run in data["runs"]]
            return SweepManifest(**{**data, "runs": runs})
        except (TypeError, KeyError) as e:
            raise ValueError(f"{self.manifest} is not a sweep manifest ({e})") from None

    def write_manifest(self, manifest: SweepManifest) -> None:
        atomic_write(self.manifest, json.dumps(asdict(manifest), indent=1) + "\n")

    def run_folders(self) -> list[RunFolder]:
        """The manifest's run folders, in its order."""
        return [RunFolder(r.run_dir) for r in self.read_manifest().runs]


@dataclass
class SweepRun:
    """One run of a submitted sweep, as sweep.json records it."""

    name: str
    overrides: list[str]  # all of them, the sweep's and the run's
    varying: dict  # the keys this run varies (its grid point), for reading
    run_dir: str
    job_id: str


@dataclass
class SweepManifest:
    """What sweep.json holds: the sweep, where it was submitted, and its runs."""

    name: str
    sweep_file: str
    base: str  # the config every run starts from
    executor: str  # "slurm" or "local"
    submitit_folder: str
    submitted: float  # time.time() of the submission
    runs: list[SweepRun]


class TrainedModelError(ValueError):
    """A `--checkpoint` names no trained model, or lacks what its use needs; the message says
    what was looked for and how to give it."""


@dataclass(frozen=True)
class TrainedFiles:
    """What a `--checkpoint` names, worked out once: its weights file, and the config and
    keypoint layout recorded by the run or export folder it belongs to (None: a plain state dict
    has neither)."""

    given: Path
    weights: Path
    config: Path | None
    layout: Path | None
    union: Path | None = None  # a model trained on several datasets: pose.data.union


def resolve_trained(checkpoint: str | os.PathLike) -> TrainedFiles:
    """A run folder (its best checkpoint, else its latest), a checkpoint folder inside one, an
    export folder, or a state-dict file, with the folders that describe it: its own (a run or
    export folder, or a weights file's folder) and, for a checkpoint of a run, the run's."""
    path = Path(checkpoint)
    owners = [path if path.is_dir() else path.parent]
    if path.is_file():
        weights = path
    elif (path / MODEL_STATES_FILE).is_file():
        weights = path / MODEL_STATES_FILE
    elif ExportFolder(path).is_export():
        weights = ExportFolder(path).weights
    else:
        run = RunFolder(path)
        tags = [t for t in (run.best_tag(), run.latest_tag()) if t]
        found = [run.checkpoint_weights(t) for t in tags if run.checkpoint_weights(t).is_file()]
        if not found:
            what = "exists" if path.exists() else "does not exist"
            raise TrainedModelError(
                f"'{path}' ({what}) is neither a state-dict file, a checkpoint folder (with "
                f"{MODEL_STATES_FILE}), an export folder, nor a run folder with checkpoints/best "
                "or checkpoints/latest"
            )
        weights = found[0]
    folder = owners[0]
    if folder.parent.name == RunFolder(folder.parent.parent).checkpoints.name:
        owners.append(folder.parent.parent)  # a checkpoint of a run: the run describes it
    described = [_ModelFolder(f) for f in owners]
    config = next((m.config for m in described if m.config.is_file()), None)
    layout = next((m.layout for m in described if m.layout.is_file()), None)
    union = next((m.union for m in described if m.union.is_file()), None)
    return TrainedFiles(path, weights, config, layout, union)


_held: set[Path] = set()  # lock files this process holds (see RunFolder.lock)


class RunLock:
    def __init__(self, fd: int, path: Path):
        self.fd = fd
        self.path = path

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing the descriptor drops the lock
            self.fd = -1
            _held.discard(self.path)


def _read_pointer(path: Path) -> str | None:
    return path.read_text().strip() or None if path.is_file() else None


def main(argv: list[str] | None = None) -> int:
    """`python -m pose.folders --is-export DIR`: exit 0 when DIR holds an export's weights
    (for the Makefile, which would otherwise spell the export's file names)."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__.split("\n")[0])
    parser.add_argument("--is-export", metavar="DIR", required=True)
    args = parser.parse_args(argv)
    return 0 if ExportFolder(args.is_export).is_export() else 1


if __name__ == "__main__":
    raise SystemExit(main())
