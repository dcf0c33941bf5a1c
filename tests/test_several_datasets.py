"""Training on several datasets at once (pose/data/union.py, pose/data/mixing.py,
pose/models/dataset_heads.py, pose/eval/datasets.py): the union of their layouts, the mixed
batches and their exact resume, one head per dataset, and each val set scored in its own layout;
end to end on the synthetic people in COCO's 17 joints and in AI Challenger's 14, and on the
COCO fixtures with a 14-joint copy of them."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import final_weights, kill_at_checkpoint

from pose.config import ConfigError, load_config
from pose.data.layout import LayoutError, preset
from pose.data.loader import LoaderSpec
from pose.data.mixing import MixedLoader, batch_counts
from pose.data.union import union_of

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ["launch/train.py", "--config", "configs/demo.yaml"]
COCO, AIC = preset("coco17"), preset("aic14")


# ------------------------------------------------------------------------------------------
# The union layout
# ------------------------------------------------------------------------------------------


def test_coco_and_aic_make_19_joints_sharing_the_12_of_the_body():
    union = union_of({"coco": COCO, "aic": AIC})
    assert union.layout.num_joints == 19
    assert union.layout.joints[:17] == COCO.joints
    assert union.layout.joints[17:] == ("head_top", "neck")
    aic = union.part("aic")
    # AIC's right shoulder (its joint 0) is COCO's right shoulder (6); its neck the last joint
    assert aic.to_union[0] == COCO.joints.index("right_shoulder")
    assert aic.to_union[12:] == (17, 18)
    assert union.known(1).sum() == 14 and not union.known(1)[0]  # AIC has no nose
    # each union joint's OKS sigma is the first dataset's that has it
    assert union.layout.sigmas[:17] == COCO.sigmas
    assert union.layout.sigmas[17:] == AIC.sigmas[12:]
    # flip pairs stay pairs once mapped: the union flip of AIC's left wrist is its right one
    flip = union.layout.flip_permutation
    left, right = AIC.joints.index("left_wrist"), AIC.joints.index("right_wrist")
    assert flip[aic.to_union[left]] == aic.to_union[right]
    # the skeleton links the new joints: head top to neck
    assert (17, 18) in union.layout.skeleton or (18, 17) in union.layout.skeleton
    table = union.table()
    assert "head_top" in table and "12 annotated by every dataset" in table


def test_a_matching_file_names_joints_the_names_do_not_match():
    crowd = preset("crowdpose14")
    renamed = yaml.safe_load(yaml.safe_dump(crowd.to_json()))
    renamed["joints"][12] = "head"  # CrowdPose's own word for the head top
    renamed["skeleton"] = [
        [a if a != "top_head" else "head" for a in link] for link in renamed["skeleton"]
    ]
    renamed["upper_body"] = [j if j != "top_head" else "head" for j in renamed["upper_body"]]
    from pose.data.layout import KeypointLayout

    crowd_head = KeypointLayout.from_json(renamed, "crowd")
    by_names = union_of({"aic": AIC, "crowd": crowd_head})
    assert by_names.layout.num_joints == 15  # 'head' taken for a joint of its own
    matched = union_of({"aic": AIC, "crowd": crowd_head}, {"crowd": {"head": "head_top"}})
    assert matched.layout.num_joints == 14
    assert matched.part("crowd").to_union[12] == AIC.joints.index("head_top")
    # the preset's 'top_head' is matched by the table of names, without a file
    assert union_of({"aic": AIC, "crowd": crowd}).layout.num_joints == 14
    # null: a joint of its own even where the names match (a differently defined neck, say)
    apart = union_of({"aic": AIC, "crowd": crowd}, {"crowd": {"neck": None}})
    assert apart.layout.num_joints == 15 and apart.layout.joints[-1] == "crowd_neck"
    with pytest.raises(ConfigError, match="names datasets \\['mpii'\\]"):
        union_of({"aic": AIC}, {"mpii": {}}, "m.yaml")
    with pytest.raises(ConfigError, match="has no joints \\['elbow'\\]"):
        union_of({"aic": AIC}, {"aic": {"elbow": None}}, "m.yaml")
    with pytest.raises(LayoutError, match="two joints matched to union joint 'neck'"):
        union_of({"aic": AIC, "crowd": crowd}, {"crowd": {"top_head": "neck"}}, "m.yaml")


def test_the_config_of_several_datasets_is_checked_before_any_work(tmp_path):
    two = "data.datasets=[{name: a, train_shards: x, val_shards: y, val_ann: z}, "
    two += "{name: b, train_shards: w}]"
    cfg = load_config("configs/demo.yaml", [two, "model.heads=per_dataset", "eval.best_by=a"])
    assert [d.name for d in cfg.data.datasets] == ["a", "b"]
    assert cfg.data.single(cfg.data.datasets[1]).train_shards == "w"
    cases = {
        "data.datasets=[{name: a, train_shards: x, weight: 0}]": "data.datasets[0].weight",
        "data.datasets=[{train_shards: x}]": "data.datasets[0].name",
        "data.datasets=[{name: a, train_shards: x, val_shards: y}]": "data.datasets[0].val_ann",
        "data.datasets=[{name: a, train_shards: x, color: red}]": "data.datasets[0].color",
        "data.datasets=[{name: a, train_shards: x}, {name: a, train_shards: y}]": "must differ",
    }
    for override, key in cases.items():
        with pytest.raises(ConfigError, match=re.escape(key)):
            load_config("configs/demo.yaml", [override, "eval.every_epochs=0"])
    with pytest.raises(ConfigError, match=re.escape("'data.train_shards': with data.datasets")):
        load_config("configs/demo.yaml", [two, "data.train_shards=elsewhere"])
    with pytest.raises(ConfigError, match=re.escape("'eval.best_by': 'c' is not a dataset's name")):
        load_config("configs/demo.yaml", [two, "eval.best_by=c"])
    with pytest.raises(ConfigError, match=re.escape("'data.mix': applies to data.datasets")):
        load_config("configs/demo.yaml", ["data.mix=weights"])
    with pytest.raises(ConfigError, match=re.escape("'model.heads': per_dataset needs several")):
        load_config("configs/demo.yaml", ["model.heads=per_dataset"])
    with pytest.raises(
        ConfigError, match=re.escape("'model.heads': per_dataset heads do not combine")
    ):
        load_config(
            "configs/demo.yaml", [two, "model.heads=per_dataset", "model.attention=partwise"]
        )
    with pytest.raises(ConfigError, match=re.escape("'eval.every_epochs': no dataset")):
        load_config("configs/demo.yaml", ["data.datasets=[{name: a, train_shards: x}]"])


# ------------------------------------------------------------------------------------------
# Mixed batches
# ------------------------------------------------------------------------------------------


def test_batch_counts_by_size_and_by_weight():
    assert batch_counts([30, 10], [1, 1], "by_size").tolist() == [30, 10]
    assert batch_counts([30, 10], [1, 1], "weights").tolist() == [20, 20]
    assert batch_counts([30, 10], [1, 3], "weights").tolist() == [10, 30]
    assert batch_counts([5, 2], [1, 1, 1][:2], "weights").sum() == 7  # remainders shared out


@pytest.fixture(scope="module")
def aic_dataset(tmp_path_factory) -> Path:
    """The synthetic people annotated in AI Challenger's 14 joints, sharded like `shards`."""
    from data_prep.synthetic import generate
    from pose.data.sharding import ShardRequest, shard_dataset

    out = tmp_path_factory.mktemp("aic")
    generate(out, seed=8, train_images=24, val_images=12, progress=False, layout="aic14")
    for split in ("train", "val"):
        request = ShardRequest(
            annotations=out / "annotations" / f"person_keypoints_{split}.json",
            images=out / "images" / split,
            out=out / "shards" / split,
            split=split,
            detail=(96, 64),
            progress=False,
        )
        shard_dataset(request)
    return out


def two_datasets(shards: Path, val_ann: Path, aic: Path) -> str:
    datasets = [
        {
            "name": "coco",
            "train_shards": str(shards / "train"),
            "val_shards": str(shards / "val"),
            "val_ann": str(val_ann),
        },
        {
            "name": "aic",
            "train_shards": str(aic / "shards" / "train"),
            "val_shards": str(aic / "shards" / "val"),
            "val_ann": str(aic / "annotations" / "person_keypoints_val.json"),
        },
    ]
    return "data.datasets=" + json.dumps(datasets)


def mixed_loader(cfg, backend: str, seed: int = 0) -> MixedLoader:
    from pose.data.backends import build_loader

    data = cfg.data
    loaders = []
    for dataset in data.datasets:
        one = data.single(dataset)
        one.backend = backend
        loaders.append(build_loader(LoaderSpec(one, "train", 8, seed=seed)))
    union = union_of({d.name: loader.layout for d, loader in zip(data.datasets, loaders)})
    return MixedLoader(loaders, union, data.mix, [d.weight for d in data.datasets], seed)


@pytest.mark.parametrize("backend", ["torch", "dali"])
def test_mixed_batches_carry_union_keypoints_and_start_anywhere(
    shards, val_ann, aic_dataset, backend
):
    overrides = [two_datasets(shards, val_ann, aic_dataset), "data.image_size=[96,64]"]
    cfg = load_config("configs/demo.yaml", [*overrides, "data.mix=weights"])
    loader = mixed_loader(cfg, backend)
    assert loader.layout.num_joints == 19
    epochs = [list(loader.epoch(e)) for e in (0, 1)]
    for epoch, batches in enumerate(epochs):
        assert len(batches) == loader.batches_per_epoch
        order = loader.order(epoch)
        assert [int(b["dataset"][0]) for b in batches] == order.tolist()
        assert np.bincount(order, minlength=2).tolist() == loader.counts.tolist()
        for batch in batches:
            d = int(batch["dataset"][0])
            assert batch["keypoints"].shape[1:] == (19, 3)
            assert torch.equal(batch["known"][0], torch.as_tensor(loader.union.known(d)))
            unknown = ~batch["known"]
            assert (batch["keypoints"][unknown] == 0).all()  # nothing where a dataset has none
            assert (batch["keypoints"][..., 2][batch["known"]] > 0).any()
    # started mid-epoch (a resume), the same batches as the whole epoch's tail
    for start in (1, loader.batches_per_epoch - 2):
        tail = list(loader.epoch(1, start))
        assert len(tail) == loader.batches_per_epoch - start
        for a, b in zip(tail, epochs[1][start:]):
            assert torch.equal(a["keypoints"], b["keypoints"])
            assert torch.equal(a["image"], b["image"])
    # the order is a function of the seed and the epoch
    assert not np.array_equal(loader.order(0), loader.order(1))
    assert np.array_equal(loader.order(1), mixed_loader(cfg, backend).order(1))


def test_per_dataset_heads_take_each_samples_own_and_every_head_learns():
    from pose.config import ModelConfig
    from pose.models import build_model
    from pose.models.dataset_heads import DatasetView

    union = union_of({"coco": COCO, "aic": AIC})
    channels = tuple(part.to_union for part in union.parts)
    model = build_model(ModelConfig(backbone="resnet18", heads="per_dataset"), 19, channels)
    images = torch.randn(2, 3, 64, 48)
    heatmaps = model(images, dataset=torch.tensor([0, 1]))
    assert heatmaps.shape[1] == 19
    assert heatmaps[0, 17:].abs().sum() == 0  # COCO's sample: nothing at AIC's own joints
    assert heatmaps[1, 0].abs().sum() == 0  # AIC's: no nose
    heatmaps.square().sum().backward()
    for name, parameter in model.final_layer.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    # each dataset's view is its head's maps at its own joints; without a dataset, the mean
    with torch.no_grad():
        model.eval()
        view = DatasetView(model, 1, channels[1])(images)
        assert torch.equal(view, model(images, dataset=torch.tensor([1, 1]))[:, list(channels[1])])
        both = model(images)
        shoulder = COCO.joints.index("right_shoulder")
        heads = [model(images, dataset=torch.full((2,), d))[:, shoulder] for d in (0, 1)]
        torch.testing.assert_close(both[:, shoulder], (heads[0] + heads[1]) / 2)


# ------------------------------------------------------------------------------------------
# End to end
# ------------------------------------------------------------------------------------------


@pytest.fixture
def run_overrides(tiny_overrides, shards, val_ann, aic_dataset):
    """A function: the tiny training run's overrides into `run`, over the two datasets."""

    def overrides(run: Path, **extra) -> list[str]:
        return [two_datasets(shards, val_ann, aic_dataset), *tiny_overrides(None, run, **extra)]

    return overrides


@pytest.mark.slow
def test_two_layouts_train_with_a_head_each_resume_bitwise_and_score_each(
    shards, aic_dataset, tmp_path, run_python, run_overrides, clean_env
):
    extra = {"train.max_steps": 12, "model.heads": "per_dataset", "data.mix": "weights"}
    whole_dir = tmp_path / "whole"
    whole = run_python([*TRAIN, *run_overrides(whole_dir, **extra)])
    assert whole.returncode == 0, whole.stderr[-3000:]
    assert "the union of 2 datasets' joints" in whole.stdout and "head_top" in whole.stdout
    run = tmp_path / "killed"
    kill_at_checkpoint([*TRAIN, *run_overrides(run, **extra)], run, "step-000000008", clean_env())
    resumed = run_python([*TRAIN, *run_overrides(run, **extra)])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = final_weights(whole_dir), final_weights(run)
    assert a.keys() == b.keys() and "final_layer.heads.1.weight" in a
    for key in a:
        assert torch.equal(a[key], b[key]), key  # bitwise on CPU
    # other datasets refuse to resume it
    other = run_python(
        [
            *TRAIN,
            *run_overrides(
                run,
                **{**extra, "train.max_steps": 14, "data.joint_matching": write_apart(tmp_path)},
            ),
        ]
    )
    assert other.returncode == 2 and "resume with the same data.datasets" in other.stderr
    # each val set in its own layout, from its own head; the table and the flat metrics
    out = tmp_path / "metrics.json"
    done = run_python(["launch/eval.py", "--checkpoint", str(run), "--out", str(out)])
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads(out.read_text())
    assert metrics["coco/instances"] == samples(shards / "val")
    assert metrics["aic/instances"] == samples(aic_dataset / "shards" / "val")
    assert metrics["AP"] == metrics["coco/AP"]
    assert "| dataset | AP |" in done.stdout and "| aic |" in done.stdout
    # prediction draws the union's 19 joints, or one dataset's with --dataset
    images = aic_dataset / "images" / "val"
    for dataset, joints in (("", 19), ("aic", 14)):
        pred = tmp_path / f"pred{dataset}"
        args = [
            "launch/predict.py",
            "--checkpoint",
            str(run),
            "--input",
            str(images),
            "--whole-image",
            "--out",
            str(pred),
            "--limit",
            "1",
        ]
        done = run_python([*args, "--dataset", dataset] if dataset else args)
        assert done.returncode == 0, done.stderr[-3000:]
        people = json.loads((pred / "keypoints.json").read_text())
        assert len(people[0]["keypoints"]) == 3 * joints


def write_apart(tmp_path: Path) -> str:
    path = tmp_path / "apart.yaml"
    # AIC's shoulders as joints of their own: 21 in the union
    path.write_text("aic: {left_shoulder: null, right_shoulder: null}\n")
    return str(path)


def samples(folder: Path) -> int:
    return json.loads((folder / "manifest.json").read_text())["num_samples"]


@pytest.mark.slow
def test_ground_truth_of_each_dataset_through_the_union_scores_ap_1(
    aic_dataset, tmp_path, run_python, run_overrides
):
    """Each val set's keypoints placed in the union's joints, encoded there and taken back out
    score AP 1.0 in their own layout (at 512x384 with UDP and DARK: AIC's OKS sigmas are about a
    third of COCO's, and coarser heatmaps cap it below 1)."""
    out = tmp_path / "gt.json"
    overrides = run_overrides(tmp_path / "unused")
    overrides = [o for o in overrides if not o.startswith("data.image_size")]
    args = ["launch/eval.py", *TRAIN[1:], "--gt-as-predictions", "--out", str(out), *overrides]
    args += ["data.image_size=[512,384]", "data.target=udp", "eval.decode=dark"]
    done = run_python(args)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads(out.read_text())
    assert metrics["coco/AP"] == pytest.approx(1.0) and metrics["aic/AP"] == pytest.approx(1.0)
    assert metrics["aic/instances"] == samples(aic_dataset / "shards" / "val")


def fixtures_as_aic(coco_fixtures: Path, path: Path) -> Path:
    """The COCO fixtures' people in AI Challenger's 14 joints, as its files write them: the 12
    body joints, the neck between the shoulders (labelled where both are), the head top from
    the nose away from the neck."""
    data = json.loads((coco_fixtures / "test_coco.json").read_text())
    data["categories"] = [{"id": 1, "name": "person", "keypoints": list(AIC.joints)}]
    body = [COCO.joints.index(name) for name in AIC.joints[:12]]
    shoulders = [COCO.joints.index("left_shoulder"), COCO.joints.index("right_shoulder")]
    for ann in data["annotations"]:
        kpts = np.asarray(ann["keypoints"], dtype=float).reshape(17, 3)
        neck = np.zeros(3)
        if (kpts[shoulders, 2] > 0).all():
            neck = [*kpts[shoulders, :2].mean(0), kpts[shoulders, 2].min()]
        top = np.zeros(3)
        nose = kpts[COCO.joints.index("nose")]
        if nose[2] > 0 and neck[2] > 0:
            top = [*(nose[:2] + 0.5 * (nose[:2] - np.asarray(neck[:2]))), nose[2]]
        aic = np.vstack([kpts[body], [top], [neck]]).round(2)
        ann["keypoints"] = aic.reshape(-1).tolist()
        ann["num_keypoints"] = int((aic[:, 2] > 0).sum())
    path.write_text(json.dumps(data))
    return path


@pytest.mark.slow
def test_the_fixtures_and_a_14_joint_set_train_together_as_docs_data_md_says(
    coco_fixtures, tmp_path, run_python
):
    """docs/data.md's commands: shard each dataset, name both in data.datasets, train; each
    val set is scored in its own layout at each evaluation, and the run's AP is best_by's."""
    aic_ann = fixtures_as_aic(coco_fixtures, tmp_path / "aic.json")
    sources = {"coco": coco_fixtures / "test_coco.json", "aic": aic_ann}
    for name, ann in sources.items():
        for split in ("train", "val"):
            args = [
                "-m",
                "data_prep.shard_coco",
                "--ann",
                ann,
                "--images",
                coco_fixtures,
                "--out",
                tmp_path / name / split,
                "--split",
                split,
                "--detail",
                "128x96",
            ]
            done = run_python([str(a) for a in args])
            assert done.returncode == 0, done.stderr[-3000:]
    assert "keypoint layout 'aic14'" in done.stdout
    datasets = [
        {
            "name": name,
            "train_shards": str(tmp_path / name / "train"),
            "val_shards": str(tmp_path / name / "val"),
            "val_ann": str(ann),
        }
        for name, ann in sources.items()
    ]
    config = tmp_path / "two.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "data": {"datasets": datasets, "image_size": [128, 96], "num_workers": 0},
                "model": {"backbone": "resnet18", "deconv_filters": 32},
                "train": {"batch_size": 4, "epochs": 2, "budget_images": 0},
                "schedule": {"warmup_steps": 2},
                "eval": {"every_epochs": 1, "best_by": "aic", "panel_people": 2},
                "engine": {"precision": "fp32"},
                "log": {"wandb": "off", "every_steps": 2},
                "run": {"dir": str(tmp_path / "run")},
            }
        )
    )
    done = run_python(["launch/train.py", "--config", str(config)])
    assert done.returncode == 0, done.stderr[-3000:]
    assert "dataset coco:" in done.stdout and "dataset aic:" in done.stdout
    assert "(the run's AP: aic's)" in done.stdout
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    evals = [r for r in records if r["split"] == "val"]
    assert len(evals) == 2
    for record in evals:
        assert record["AP"] == record["aic/AP"]
        assert record["coco/instances"] == samples(tmp_path / "coco" / "val")
        assert record["aic/instances"] == samples(tmp_path / "aic" / "val")
    run = tmp_path / "run"
    assert (run / "eval" / "results_coco.json").is_file()
    assert (run / "eval" / "results_aic.json").is_file()
    scored = json.loads((run / "eval" / "results_aic.json").read_text())
    assert len(scored[0]["keypoints"]) == 3 * 14  # scored in AIC's own joints
    union = yaml.safe_load((run / "union.yaml").read_text())
    assert [d["name"] for d in union["datasets"]] == ["coco", "aic"]
    assert len(union["union"]["joints"]) == 19
