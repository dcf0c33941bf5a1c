"""Any COCO-format keypoint dataset, end to end on real images: a 13-joint layout derived from
the COCO fixtures (eyes and ears dropped, joints renamed l_*/r_*) is sharded, trained, scored
with its own sigmas, predicted and drawn, and every mismatch is an error naming both sides."""

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml

from pose.data.layout import COCO_17
from pose.data.sharding import ShardRequest, shard_dataset
from pose.data.shards import ShardError, ShardSet, decode_npy, iter_samples, read_manifest

KEEP = [0, *range(5, 17)]  # nose and the 12 body joints
TRAIN = ["launch/train.py", "--config", "configs/demo.yaml"]


def renamed(name: str) -> str:
    return name.replace("left_", "l_").replace("right_", "r_")


@pytest.fixture(scope="module")
def body13(coco_fixtures, tmp_path_factory) -> Path:
    """The fixtures' annotations cut to 13 joints, with a layout file giving COCO's sigmas."""
    root = tmp_path_factory.mktemp("body13")
    data = json.loads((coco_fixtures / "test_coco.json").read_text())
    names = [renamed(COCO_17.joints[j]) for j in KEEP]
    position = {old: new for new, old in enumerate(KEEP)}
    skeleton = [
        [position[a] + 1, position[b] + 1]
        for a, b in COCO_17.skeleton
        if a in position and b in position
    ]
    data["categories"] = [{"id": 1, "name": "person", "keypoints": names, "skeleton": skeleton}]
    for ann in data["annotations"]:
        kpts = np.asarray(ann["keypoints"]).reshape(17, 3)[KEEP]
        ann["keypoints"] = kpts.reshape(-1).tolist()
        ann["num_keypoints"] = int((kpts[:, 2] > 0).sum())
    (root / "ann.json").write_text(json.dumps(data))
    layout = {
        "name": "body13",
        "joints": names,
        "sigmas": [COCO_17.sigmas[j] for j in KEEP],
        "skeleton": [[names[a - 1], names[b - 1]] for a, b in skeleton],
    }
    (root / "body13.yaml").write_text(yaml.safe_dump(layout))
    for split in ("train", "val"):
        request = ShardRequest(
            root / "ann.json",
            coco_fixtures,
            root / split,
            split=split,
            layout=str(root / "body13.yaml"),
            progress=False,
        )
        shard_dataset(request)
    return root


def overrides(root: Path, run: Path, **extra) -> list[str]:
    values = {
        "data.train_shards": root / "train",
        "data.val_shards": root / "val",
        "data.val_ann": root / "ann.json",
        "data.image_size": "[256,192]",
        "data.num_workers": 0,
        "data.flip_prob": 1.0,
        "model.backbone": "resnet18",
        "model.deconv_filters": 32,
        "train.batch_size": 4,
        "train.budget_images": 0,
        "log.every_steps": 1,
        "eval.every_epochs": 1,
        "engine.precision": "fp32",
        "eval.batch_size": 4,
        "log.wandb": "off",
        "run.dir": run,
        **extra,
    }
    return [f"{k}={v}" for k, v in values.items()]


def test_the_manifest_records_the_layout_from_the_data(body13, coco_fixtures, tmp_path):
    manifest = read_manifest(body13 / "train")
    assert manifest.layout["name"] == "body13" and len(manifest.layout["joints"]) == 13
    assert ["l_shoulder", "r_shoulder"] in manifest.layout["flip_pairs"]
    assert ShardSet.open(body13 / "train").layout.sigmas[0] == COCO_17.sigmas[0]
    auto = shard_dataset(ShardRequest(body13 / "ann.json", coco_fixtures, tmp_path / "auto"))
    assert any("no OKS sigmas of its own" in note for note in auto.notes)  # auto: the category's
    assert auto.manifest.layout["name"] == "custom13"
    assert not auto.manifest.layout["sigmas_known"]
    dets = coco_fixtures / "test_coco_det_AP_H_56.json"
    layout = str(body13 / "body13.yaml")
    request = ShardRequest(body13 / "ann.json", coco_fixtures, tmp_path / "dets", split="val")
    shard_dataset(replace(request, detections=dets, layout=layout, progress=False))
    tar = ShardSet.open(tmp_path / "dets").tars[0]
    assert decode_npy(next(iter_samples(tar))[1]["kpts.npy"]).shape == (13, 3)  # not 17


def test_ground_truth_scores_ap_1_with_the_layouts_own_sigmas(body13, run_python, tmp_path):
    args = ["launch/eval.py", *TRAIN[1:], "--gt-as-predictions", "--out", tmp_path / "m.json"]
    done = run_python([*args, *overrides(body13, tmp_path / "unused")])
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["instances"] == 12 and metrics["AP"] == pytest.approx(1.0)


@pytest.mark.slow
def test_train_evaluate_predict_and_draw_a_13_joint_model(
    body13, coco_fixtures, run_python, tmp_path
):
    run = tmp_path / "run"
    done = run_python([*TRAIN, *overrides(body13, run, **{"train.max_steps": 3})])
    assert done.returncode == 0, done.stderr[-3000:]
    assert yaml.safe_load((run / "layout.yaml").read_text())["name"] == "body13"
    assert "AP" in json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert "eval after step 3 (epoch" in done.stdout and "|     AP |" in done.stdout
    out = tmp_path / "pred"
    args = ["launch/predict.py", "--checkpoint", run, "--image", coco_fixtures, "--out", out]
    args += ["--boxes", coco_fixtures / "test_coco_det_AP_H_56.json", "--box-thr", "0.9"]
    args += ["--ann", body13 / "ann.json"]
    done = run_python(args)
    assert done.returncode == 0, done.stderr[-3000:]
    people = json.loads((out / "keypoints.json").read_text())
    assert people and all(len(p["keypoints"]) == 13 * 3 for p in people)
    assert {p["image_id"] for p in people} <= {785, 40083, 196141, 197388}
    assert len(list(out.glob("*_pose.png"))) == 4


def test_mismatched_layouts_are_errors_before_any_work(body13, coco_fixtures, run_python, tmp_path):
    done = run_python([*TRAIN, *overrides(body13, tmp_path / "a", **{"data.layout": "coco17"})])
    assert done.returncode == 2
    assert "data.layout': 'coco17' (17 joints) is not the layout of" in done.stderr
    coco_val = tmp_path / "coco_val"  # the same images with COCO's 17 joints
    ann = coco_fixtures / "test_coco.json"
    shard_dataset(ShardRequest(ann, coco_fixtures, coco_val, split="val", progress=False))
    done = run_python([*TRAIN, *overrides(body13, tmp_path / "b", **{"data.val_shards": coco_val})])
    assert done.returncode == 2
    assert "layout 'body13' (13 joints)" in done.stderr and "'coco17' (17)" in done.stderr
    mixed = tmp_path / "mixed"  # a manifest that lies about its shards
    shutil.copytree(body13 / "train", mixed)
    data = read_manifest(mixed)
    (mixed / "manifest.json").write_text(json.dumps(data.to_json() | {"layout": COCO_17.to_json()}))
    with pytest.raises(ShardError, match="holds samples of 13 joints, its manifest's layout"):
        ShardSet.open(mixed)


# COCO's joints 5..16 in CrowdPose's and AIC's orders, with their head and neck from the nose.
CROWDPOSE_FROM_COCO = [5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 0, 0]
AIC_FROM_COCO = [6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 0, 0]


def reshaped(coco_fixtures: Path, path: Path, joints: list[str], source: list[int], **category):
    """The fixtures' annotations as another dataset writes them: its joints (from COCO's by
    `source`), its category fields, and neither 'area' nor 'iscrowd' in any annotation."""
    data = json.loads((coco_fixtures / "test_coco.json").read_text())
    data["categories"] = [{"id": 1, "name": "person", "keypoints": joints, **category}]
    for ann in data["annotations"]:
        kpts = np.asarray(ann["keypoints"]).reshape(17, 3)[source]
        ann["keypoints"] = kpts.reshape(-1).tolist()
        ann["num_keypoints"] = int((kpts[:, 2] > 0).sum())
        del ann["area"], ann["iscrowd"]
    path.write_text(json.dumps(data))
    return path


def test_crowdpose_and_aic_shaped_files_get_their_layout_and_say_how(
    coco_fixtures, tmp_path, capsys
):
    from data_prep import shard_coco
    from pose.data.layout import preset

    def shard(ann, out, *extra):
        argv = ["--ann", ann, "--images", coco_fixtures, "--out", tmp_path / out, *extra]
        assert shard_coco.main([str(a) for a in argv]) == 0
        return capsys.readouterr().out

    crowd_joints = list(preset("crowdpose14").joints)
    crowd_joints[12] = "head"  # CrowdPose's own name for the preset's top_head
    coco_skeleton = [[a + 1, b + 1] for a, b in COCO_17.skeleton]  # what its file carries
    crowd = reshaped(
        coco_fixtures,
        tmp_path / "crowd.json",
        crowd_joints,
        CROWDPOSE_FROM_COCO,
        skeleton=coco_skeleton,
    )
    out = shard(crowd, "crowd")
    assert "keypoint layout 'custom14' (14 joints, 6 flip pairs, 0 skeleton links" in out
    assert "nearly match preset 'crowdpose14'" in out and "does not fit its 14 joints" in out
    out = shard(crowd, "crowd_preset", "--layout", "crowdpose14")
    assert "keypoint layout 'crowdpose14' (14 joints, 6 flip pairs, 15 skeleton links" in out
    assert "'head' in the data, 'top_head' in the layout" in out

    aic_joints = [j.replace("_", " ").title() for j in preset("aic14").joints]
    aic = reshaped(coco_fixtures, tmp_path / "aic.json", aic_joints, AIC_FROM_COCO)
    out = shard(aic, "aic")
    assert "keypoint layout 'aic14' (14 joints, 6 flip pairs" in out
    assert "12 samples in 1 shards" in out and "missing_fields" not in out  # no iscrowd: 0


def test_val_annotations_without_area_are_scored_and_another_datasets_are_refused_first(
    coco_fixtures, synthetic_dataset, run_python, tmp_path
):
    """CrowdPose's and AIC's val files have no 'area', which pycocotools needs: filled as
    sharding does, and said. A val file of another dataset fails before any inference."""
    val = tmp_path / "val"
    shard_dataset(
        ShardRequest(
            coco_fixtures / "test_coco.json", coco_fixtures, val, split="val", progress=False
        )
    )
    no_area = reshaped(coco_fixtures, tmp_path / "no_area.json", list(COCO_17.joints), range(17))
    args = ["launch/eval.py", *TRAIN[1:], "--gt-as-predictions", "--out", tmp_path / "m.json"]
    args += [f"data.val_shards={val}"]
    done = run_python([*args, f"data.val_ann={no_area}"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert "14 of 14 annotations in" in done.stdout and "have no 'area'" in done.stdout
    assert json.loads((tmp_path / "m.json").read_text())["AP"] == pytest.approx(1.0)
    other = synthetic_dataset / "annotations" / "person_keypoints_val.json"
    done = run_python([*args, f"data.val_ann={other}"])
    assert done.returncode == 2
    assert "config key 'data.val_ann'" in done.stderr and "lacks 4 of the 4 images" in done.stderr
    assert "Traceback" not in done.stderr and "eval:" not in done.stdout
