"""Loading a trained model for inference (pose/models/trained.py, through pose.folders'
resolve_trained): one way for eval, predict, export and the sweep's pictures, from a run folder,
a checkpoint, a state dict or an export."""

import pytest
import torch

from pose.config import ConfigError, load_config, save_config
from pose.data.layout import COCO_17, save_layout
from pose.folders import ExportFolder, RunFolder, TrainedModelError, resolve_trained
from pose.models import build_model
from pose.models.trained import load_trained_model


@pytest.fixture
def demo_weights(tmp_path):
    """A bare state dict of the demo model (ResNet-18, 128 filters), no config beside it."""
    torch.manual_seed(0)
    path = tmp_path / "bare" / "weights.pth"
    path.parent.mkdir()
    model = build_model(load_config("demo").model, 17)
    torch.save(model.state_dict(), path)
    return path, model


def test_a_shipped_config_name_builds_the_model_it_names(demo_weights):
    path, model = demo_weights
    trained = load_trained_model(path, "demo", layout="coco17")
    assert trained.layout.num_joints == 17
    assert trained.cfg.model.backbone == "resnet18"
    assert tuple(trained.cfg.data.image_size) == (128, 96)
    for name, value in model.state_dict().items():
        assert torch.equal(trained.model.state_dict()[name], value), name
    assert not trained.model.training


def test_a_bare_state_dict_without_a_config_is_an_error_not_the_defaults(demo_weights):
    path, _ = demo_weights
    with pytest.raises(TrainedModelError, match=r"no config in its run or export.*--config"):
        load_trained_model(path)


def test_a_bare_state_dict_without_a_layout_is_an_error_not_coco(demo_weights):
    """Which joint each heatmap is cannot be read off a state dict: it is named, never
    assumed to be COCO's 17."""
    path, _ = demo_weights
    with pytest.raises(TrainedModelError, match=r"no keypoint layout.*--layout coco17"):
        load_trained_model(path, "demo")


def test_predict_and_export_take_a_shipped_config_name(demo_weights, synthetic_dataset, capsys):
    from launch.export import main as export_main
    from launch.predict import main as predict_main

    path, _ = demo_weights
    image = sorted((synthetic_dataset / "images" / "val").iterdir())[0]
    out = path.parent / "predict"
    argv = [
        "--checkpoint",
        str(path),
        "--image",
        str(image),
        "--out",
        str(out),
        "--layout",
        "coco17",
        "--whole-image",
    ]
    assert predict_main([*argv, "--config", "demo"]) == 0
    assert (out / "keypoints.json").is_file()
    assert predict_main(argv) == 2  # before: silently the defaults (ResNet-50, 256x192)
    assert "--config" in capsys.readouterr().err
    export = ExportFolder(path.parent / "export")
    argv = ["--checkpoint", str(path), "--config", "demo", "--out", str(export.path)]
    argv += ["--layout", "coco17"]
    assert export_main([*argv, "--no-check"]) == 0
    assert load_config(export.config).model.backbone == "resnet18"


def test_a_finished_run_loads_when_the_backbone_it_started_from_is_gone(tmp_path):
    """A fine-tuned run names its starting weights in model.pretrained; once that file is
    deleted the run still loads: the checkpoint holds every weight."""
    start = tmp_path / "backbone.pth"
    torch.save(build_model(load_config("demo").model, 17).state_dict(), start)
    cfg = load_config("demo", [f"model.pretrained={start}"])
    torch.manual_seed(1)
    model = build_model(cfg.model, 17)
    run = RunFolder(tmp_path / "run")
    checkpoint = run.checkpoint("step-000000002")
    checkpoint.mkdir(parents=True)
    torch.save({"module": model.state_dict()}, checkpoint / "mp_rank_00_model_states.pt")
    run.set_latest("step-000000002")
    save_config(cfg, run.config)
    save_layout(COCO_17, run.layout)
    start.unlink()
    for checkpoint_arg in (run.path, checkpoint, run.checkpoint_weights("step-000000002")):
        files = resolve_trained(checkpoint_arg)
        assert (files.config, files.layout) == (run.config, run.layout)
        assert files.weights == run.checkpoint_weights("step-000000002")
        trained = load_trained_model(checkpoint_arg)
        assert trained.cfg.model.pretrained == ""
        weight = trained.model.state_dict()["final_layer.weight"]
        assert torch.equal(weight, model.state_dict()["final_layer.weight"])


def test_a_run_config_with_keys_since_renamed_loads_with_a_note_a_users_fails(tmp_path, capsys):
    """A run folder's config.yaml is the record of a finished run: a key that moved to another
    section since (train.lr is optimizer.lr) is read at its new place, saying so. The same key
    in a config a user gives fails, naming the new key."""
    run = RunFolder(tmp_path / "run")
    checkpoint = run.checkpoint("step-000000001")
    checkpoint.mkdir(parents=True)
    torch.save(
        {"module": build_model(load_config("demo").model, 17).state_dict()},
        run.checkpoint_weights("step-000000001"),
    )
    run.set_latest("step-000000001")
    save_layout(COCO_17, run.layout)
    recorded = run.config
    recorded.write_text(
        "model:\n  backbone: resnet18\n  deconv_filters: 128\ndata:\n  image_size: [128, 96]\n"
        "train:\n  lr: 0.002\n  precision: fp32\n"
    )
    trained = load_trained_model(run.path)
    assert trained.cfg.optimizer.lr == 0.002 and trained.cfg.engine.precision == "fp32"
    err = capsys.readouterr().err
    assert "'train.lr' read as 'optimizer.lr'" in err and "'train.precision' read as" in err
    with pytest.raises(ConfigError, match=r"'train\.lr' \(.*\) is now 'optimizer\.lr'"):
        load_config(recorded)
