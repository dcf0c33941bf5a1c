"""The training loop in-process (pose/engine/trainer.py): a `Trainer` built from a tiny config,
and its components (checkpointer, evaluator, progress) deciding when they act. The loop tests
that need processes (ranks, signals, kills) are in test_trainer.py."""

import shutil
from pathlib import Path

import pytest
import torch

from pose.config import CheckpointConfig, load_config
from pose.distributed import BatchNormAverage, DistEnv, init_distributed
from pose.engine.checkpoint import Checkpointer, RunState
from pose.engine.errors import TrainingError
from pose.engine.schedule import StepPlan
from pose.engine.step_metrics import StepMetrics
from pose.engine.trainer import Trainer
from pose.folders import RunFolder
from pose.tracking import read_metrics

ONE_PROCESS = DistEnv(0, 1, 0, torch.device("cpu"), "gloo", "single")


@pytest.fixture()
def trainer(shards, tmp_path, tiny_overrides):
    """A function: a Trainer over the tiny shards in `run` (tmp_path/run unless given)."""

    def build(run: Path | None = None, shard_folder: Path | None = None, **extra) -> Trainer:
        run = run or tmp_path / "run"
        overrides = tiny_overrides(shard_folder or shards, run, **extra)
        cfg = load_config("configs/demo.yaml", overrides)
        return Trainer(cfg, RunFolder(run), init_distributed(cfg.launch))

    return build


def steps_of(run: Path, split: str) -> list[int]:
    return [r["step"] for r in read_metrics(run) if r["split"] == split]


def test_one_checkpoint_per_step_and_epochs_from_the_step_counter(trainer, tmp_path):
    """An epoch of the tiny shards is a few steps; checkpoints every 4 steps, at each epoch end
    and at the last step, each written once (no second tag for an epoch end that falls on a
    checkpoint step); every record's epoch is the epochs completed after its step."""
    built = trainer(**{"train.epochs": 3, "checkpoint.keep_last": 100})
    per_epoch = built.plan.steps_per_epoch
    result = built.train()
    total = 3 * per_epoch
    assert (result.step, result.epochs, result.stop_signal) == (total, 3, None)
    expected = {s for s in range(1, total + 1) if s % 4 == 0 or s % per_epoch == 0 or s == total}
    run = RunFolder(tmp_path / "run")
    assert run.checkpoint_tags() == [f"step-{s:09d}" for s in sorted(expected)]
    assert run.latest_tag() == f"step-{total:09d}" and run.best_tag() is None  # never evaluated
    for record in read_metrics(run.path):  # one meaning in every row: epochs completed
        assert record["epoch"] == record["step"] // per_epoch
    start = next(r for r in read_metrics(run.path) if r["split"] == "run")
    assert start["steps_per_epoch"] == per_epoch and start["resumed"] is False
    assert steps_of(run.path, "train") == [s for s in range(2, total + 1, 2)] + (
        [total] if total % 2 else []
    )


def test_evaluations_follow_their_epochs_and_best_names_a_scored_checkpoint(
    trainer, synthetic_dataset, tmp_path
):
    """eval.every_epochs=2 over 3 epochs: evaluations after epoch 2 and the last step, each
    followed by a checkpoint; `best` names one of those steps, with the best AP."""
    val_ann = synthetic_dataset / "annotations" / "person_keypoints_val.json"
    extra = {"train.epochs": 3, "eval.every_epochs": 2, "data.val_ann": val_ann}
    extra |= {"checkpoint.every_steps": 1000, "checkpoint.keep_last": 100, "eval.panel_people": 0}
    built = trainer(**extra)
    per_epoch = built.plan.steps_per_epoch
    result = built.train()
    run = RunFolder(tmp_path / "run")
    evaluated = steps_of(run.path, "val")
    assert evaluated == [2 * per_epoch, 3 * per_epoch]
    aps = [r["AP"] for r in read_metrics(run.path) if r["split"] == "val"]
    best_step = evaluated[max(range(len(aps)), key=lambda i: (aps[i], i))]
    assert run.best_tag() == f"step-{best_step:09d}"
    assert result.best_ap == max(aps) and result.metrics["AP"] == aps[-1]
    assert run.eval_results.is_file()
    assert {f"step-{s:09d}" for s in evaluated} <= set(run.checkpoint_tags())


class SavingEngine:
    """Stands in for the engine: a save writes the tag's folder."""

    def __init__(self):
        self.model = torch.nn.Linear(2, 2)

    def save(self, folder: Path, tag: str, client_state: dict) -> None:
        (folder / tag).mkdir(parents=True)

    def local_weights(self) -> list[torch.Tensor]:
        return [p.detach() for p in self.model.parameters()]


def test_the_checkpointer_saves_after_every_evaluation_and_marks_only_an_improvement(tmp_path):
    run = RunFolder(tmp_path / "run")
    engine = SavingEngine()
    plan = StepPlan(steps_per_epoch=100, total_steps=1000)
    batchnorm = BatchNormAverage(engine.model, ONE_PROCESS)
    saver = Checkpointer(run, engine, CheckpointConfig(10, 100), plan, ONE_PROCESS, batchnorm, 1)
    state, metrics = RunState(), StepMetrics(ONE_PROCESS)
    saved = []
    for step, evaluation in [(3, None), (7, {"AP": 0.4}), (9, {"AP": 0.3}), (10, None)]:
        state.step = step
        saved.append(saver.after_step(state, False, evaluation, metrics))
    assert saved == [None, "step-000000007", "step-000000009", "step-000000010"]
    assert run.best_tag() == "step-000000007" and state.best_ap == 0.4
    state.step = 12
    assert saver.after_step(state, True, None, metrics) == "step-000000012"  # a stop saves
    assert run.latest_tag() == "step-000000012" and run.best_tag() == "step-000000007"


def test_a_nan_loss_stops_naming_the_step_and_keeps_no_checkpoint_of_it(trainer, tmp_path):
    built = trainer(**{"optimizer.lr": 1e30, "train.max_steps": 6})
    with pytest.raises(TrainingError, match="loss is not finite at step"):
        built.train()
    assert RunFolder(tmp_path / "run").checkpoint_tags() == []


def test_samples_that_do_not_decode_are_named_counted_and_bounded(
    trainer, shards, tmp_path, capsys
):
    from pose.data.shards import ShardSet, iter_samples

    copy = tmp_path / "shards"
    shutil.copytree(shards, copy)
    tar = ShardSet.open(copy / "train").tars[0]
    data = bytearray(tar.read_bytes())
    key, _ = next(iter_samples(tar))
    start = data.index(b"\xff\xd8\xff")
    data[start : start + 400] = b"\x00" * 400  # the first JPEG no longer decodes
    tar.write_bytes(bytes(data))
    extra = {"train.max_steps": 8, "log.every_steps": 1, "data.max_bad_fraction": 0.2}
    trainer(tmp_path / "run", copy, **extra).train()
    assert f"skipped a sample that does not decode: {tar.name} {key}" in capsys.readouterr().out
    last = [r for r in read_metrics(tmp_path / "run") if r["split"] == "train"][-1]
    assert last["bad_samples"] == 2  # read in each of 2 epochs
    strict = trainer(tmp_path / "strict", copy, **{**extra, "data.max_bad_fraction": 0.0})
    with pytest.raises(TrainingError, match=r"1 of \d+ samples read did not decode, more than"):
        strict.train()


def test_a_resumed_trainer_continues_from_its_checkpoint_in_process(trainer, tmp_path):
    first = trainer(**{"train.max_steps": 4})
    assert first.train().step == 4
    again = trainer(**{"train.max_steps": 6})
    assert again.resumed is not None and again.state.step == 4
    assert again.train().step == 6
    starts = [r for r in read_metrics(tmp_path / "run") if r["split"] == "run"]
    assert [r["resumed"] for r in starts] == [False, True] and starts[1]["step"] == 4


@pytest.mark.slow
@pytest.mark.parametrize(
    ("backbone", "attention"),
    [
        ("vitpose_s", "none"),
        ("vitpose_s", "holistic"),
        ("vitpose_s", "partwise"),
        ("hrnet_w32", "none"),
        ("hrnet_w32", "partwise"),
        ("vitpose_s-simple", "holistic"),  # ViTPose's simple decoder
    ],
)
def test_timm_backbones_train_resume_exactly_evaluate_export_and_predict(
    backbone, attention, trainer, synthetic_dataset, tmp_path
):
    """ViTPose-S (timm's ViT, the classic decoder, drop path on) and HRNet-W32 (its 1x1 head)
    on the tiny shards: 4 steps, and the same run resumed from its step-2 checkpoint, end at the
    same weights bit for bit;
    it is evaluated after its last step, exports to ONNX and torch.export programs that
    onnxruntime and torch run as the model (launch/export.py checks), and predicts."""
    from launch.export import main as export_main
    from launch.predict import main as predict_main
    from pose.folders import MODEL_STATES_FILE

    val_ann = synthetic_dataset / "annotations" / "person_keypoints_val.json"
    backbone, _, head = backbone.partition("-")
    layers = 0 if head else {"vitpose_s": 2, "hrnet_w32": 0}[backbone]
    extra = {"model.backbone": backbone, "model.deconv_layers": layers, "model.drop_path": 0.1}
    extra |= {"model.head": head or "deconv"}
    extra |= {"model.attention": attention, "data.val_ann": val_ann, "eval.flip_test": False}
    extra |= {"eval.panel_people": 0}
    extra |= {"eval.every_epochs": 1000, "train.max_steps": 4}  # evaluated after step 4 only
    extra |= {"checkpoint.every_steps": 2, "checkpoint.keep_last": 10}
    whole = trainer(tmp_path / "whole", **extra).train()
    assert whole.step == 4 and "AP" in whole.metrics
    shutil.copytree(tmp_path / "whole", tmp_path / "parts")
    parts = RunFolder(tmp_path / "parts")  # as if killed after writing step 2's checkpoint
    shutil.rmtree(parts.checkpoint("step-000000004"))
    (parts.checkpoints / "best").unlink()
    parts.set_latest("step-000000002")
    assert trainer(parts.path, **extra).train().step == 4

    def weights(run: Path) -> dict:
        folder = RunFolder(run)
        path = folder.checkpoint(folder.latest_tag()) / MODEL_STATES_FILE
        return torch.load(path, map_location="cpu", weights_only=True)["module"]

    one, two = weights(tmp_path / "whole"), weights(tmp_path / "parts")
    assert one.keys() == two.keys() and all(torch.equal(one[k], two[k]) for k in one)
    image = sorted((synthetic_dataset / "images" / "val").iterdir())[0]
    out = tmp_path / "export"
    assert export_main(["--checkpoint", str(tmp_path / "whole"), "--out", str(out)]) == 0
    predicted = tmp_path / "predict"
    argv = ["--checkpoint", str(out), "--image", str(image), "--out", str(predicted)]
    argv.append("--whole-image")
    assert predict_main(argv) == 0 and (predicted / "keypoints.json").is_file()
