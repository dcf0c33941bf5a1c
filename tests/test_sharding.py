import json
import shutil

import numpy as np
import pytest
from conftest import import_extra

from data_prep import shard_coco
from data_prep.verify import main as verify_main
from data_prep.verify import verify
from pose.data import sharding
from pose.data.coco import load_coco, training_instances
from pose.data.geometry import affine_points
from pose.data.sharding import ShardRequest, ShardResult, shard_dataset
from pose.data.shards import decode_npy, iter_samples, read_manifest


def shard_cli(ann, images, out, *extra) -> int:
    argv = ["--ann", str(ann), "--images", str(images), "--out", str(out), *map(str, extra)]
    return shard_coco.main(argv)


def shard(ann, images, out, **options) -> ShardResult:
    return shard_dataset(ShardRequest(ann, images, out, progress=False, **options))


def samples_of(out):
    manifest = read_manifest(out)
    for entry in manifest.shards:
        yield from iter_samples(out / entry.name)


@pytest.fixture(scope="module")
def synthetic_train(synthetic_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards") / "train"
    ann = synthetic_dataset / "annotations" / "person_keypoints_train.json"
    shard(ann, synthetic_dataset / "images" / "train", out, shard_size=16, detail=(128, 96))
    return out


def test_real_fixtures_keypoints_map_back_within_half_a_pixel(coco_fixtures, tmp_path):
    out = tmp_path / "fixtures"
    assert (
        shard(coco_fixtures / "test_coco.json", coco_fixtures, out, shard_size=5).num_samples == 12
    )
    manifest = read_manifest(out)
    assert manifest.num_samples == 12
    assert [s.num_samples for s in manifest.shards] == [5, 5, 2]
    assert manifest.skipped == {"no_keypoints": 2}
    coco = load_coco(coco_fixtures / "test_coco.json")
    seen, labelled = set(), 0
    for key, parts in samples_of(out):
        record = json.loads(parts["json"])
        original = np.asarray(coco.anns[record["ann_id"]]["keypoints"], float).reshape(17, 3)
        kpts, affine = decode_npy(parts["kpts.npy"]), decode_npy(parts["affine.npy"])
        assert kpts.dtype == np.float32 and affine.dtype == np.float32 and "." not in key
        mask = original[:, 2] > 0
        back = affine_points(affine, kpts[mask, :2])
        assert np.abs(back - original[mask, :2]).max() < 0.5
        np.testing.assert_array_equal(kpts[:, 2], original[:, 2])
        assert np.all(kpts[~mask] == 0)
        assert affine[0, 0] >= 1 - 1e-6  # crops are never upsampled beyond the source
        meta = decode_npy(parts["meta.npy"])  # the padded box in crop pixels, and the ids
        np.testing.assert_allclose(affine_points(affine, meta[5:7]), record["center"], atol=1e-3)
        np.testing.assert_allclose(meta[7:9] * affine.diagonal(), record["scale"], rtol=1e-5)
        assert (meta[0], meta[1], meta[2], meta[3]) == (record["image_id"], record["ann_id"], -1, 1)
        labelled += int(mask.sum())
        seen.add(record["ann_id"])
        assert record["image_wh"] == [
            coco.imgs[record["image_id"]]["width"],
            coco.imgs[record["image_id"]]["height"],
        ]
    assert len(seen) == 12 and labelled == 181
    assert verify(out) == []


def test_real_fixtures_detection_boxes(coco_fixtures, tmp_path):
    dets_path = coco_fixtures / "test_coco_det_AP_H_56.json"
    dets = json.loads(dets_path.read_text())
    out = tmp_path / "dets"
    ann = coco_fixtures / "test_coco.json"
    shard(ann, coco_fixtures, out, split="val", detections=dets_path, det_thr=0.3)
    manifest = read_manifest(out)
    expected = sum(d["score"] >= 0.3 for d in dets)
    assert manifest.num_samples == expected
    assert manifest.skipped == {"below_score_threshold": len(dets) - expected}
    det_ids = set()
    for _, parts in samples_of(out):
        record = json.loads(parts["json"])
        det = dets[record["det_id"]]
        assert (
            record["score"] == pytest.approx(det["score"]) and record["image_id"] == det["image_id"]
        )
        assert np.all(decode_npy(parts["kpts.npy"]) == 0)
        det_ids.add(record["det_id"])
    assert len(det_ids) == expected


def test_synthetic_end_to_end(synthetic_dataset, synthetic_train):
    coco = load_coco(synthetic_dataset / "annotations" / "person_keypoints_train.json")
    instances, skipped = training_instances(coco)
    manifest = read_manifest(synthetic_train)
    assert manifest.num_samples == len(instances)
    assert manifest.skipped == dict(skipped)
    assert manifest.params["detail"] == [128, 96]
    assert manifest.params["annotations_sha256"]
    for entry in manifest.shards:
        assert entry.bytes == (synthetic_train / entry.name).stat().st_size
    images = [json.loads(p["json"])["image_id"] for _, p in samples_of(synthetic_train)]
    assert images != sorted(images)  # shuffled across shards, not runs of one image
    assert verify(synthetic_train) == []
    assert (
        not list(synthetic_train.glob(".*.tmp"))
        and not (synthetic_train / ".progress.json").exists()
    )


def test_each_shard_index_is_the_one_dalis_wds2idx_writes(synthetic_train, tmp_path):
    index_creator = import_extra("wds2idx", "dali-cuda13").IndexCreator
    for entry in read_manifest(synthetic_train).shards:
        reference_index = tmp_path / "reference.idx"
        with index_creator(str(synthetic_train / entry.name), str(reference_index), False) as ic:
            ic.create_index()
        assert reference_index.read_text() == (synthetic_train / entry.index).read_text()


def test_same_input_same_shards_any_worker_count(synthetic_dataset, synthetic_train, tmp_path):
    ann = synthetic_dataset / "annotations" / "person_keypoints_train.json"
    images = synthetic_dataset / "images" / "train"
    shard(ann, images, tmp_path / "again", shard_size=16, detail=(128, 96), workers=2)
    first, again = read_manifest(synthetic_train), read_manifest(tmp_path / "again")
    assert [s.sha256 for s in first.shards] == [s.sha256 for s in again.shards]
    shard(ann, images, tmp_path / "seed1", shard_size=16, detail=(128, 96), seed=1)
    other = read_manifest(tmp_path / "seed1")
    assert [s.sha256 for s in other.shards] != [s.sha256 for s in first.shards]


def test_interrupted_run_resumes_to_the_same_result(
    synthetic_dataset, synthetic_train, tmp_path, monkeypatch
):
    ann = synthetic_dataset / "annotations" / "person_keypoints_train.json"
    images = synthetic_dataset / "images" / "train"
    options = {"shard_size": 16, "detail": (128, 96)}
    real_crop = sharding.crop_shard
    calls = []

    def dies_on_third_shard(job):
        calls.append(job.index)
        if len(calls) == 3:
            (tmp_path / "out" / f".{job.name}.tar.tmp").write_bytes(b"half a shard")
            raise KeyboardInterrupt  # what a kill mid-run looks like to the process
        return real_crop(job)

    monkeypatch.setattr(sharding, "crop_shard", dies_on_third_shard)
    with pytest.raises(KeyboardInterrupt):
        shard(ann, images, tmp_path / "out", **options)
    assert not (tmp_path / "out" / "manifest.json").exists()
    assert len(list((tmp_path / "out").glob("*.tar"))) == 2
    monkeypatch.setattr(sharding, "crop_shard", real_crop)
    result = shard(ann, images, tmp_path / "out", **options)
    assert result.resumed_shards == 2 and result.cropped < result.num_samples
    resumed, clean = read_manifest(tmp_path / "out"), read_manifest(synthetic_train)
    assert resumed.shards == clean.shards and resumed.num_samples == clean.num_samples
    assert verify(tmp_path / "out") == []
    again = shard(ann, images, tmp_path / "out", **options)  # finished: nothing to do
    assert (again.cropped, again.resumed_shards, again.num_samples) == (0, 0, clean.num_samples)


def test_cli_reports_what_it_did(synthetic_dataset, synthetic_train, tmp_path, capsys):
    ann = synthetic_dataset / "annotations" / "person_keypoints_train.json"
    images = synthetic_dataset / "images" / "train"
    shutil.copytree(synthetic_train, tmp_path / "done")
    assert shard_cli(ann, images, tmp_path / "done", "--shard-size", 16, "--detail", "128x96") == 0
    assert "already holds this result; nothing to do" in capsys.readouterr().out


def _corrupted_copy(synthetic_dataset, tmp_path):
    """A copy of the synthetic train split with one of each kind of bad input."""
    root = tmp_path / "bad"
    shutil.copytree(synthetic_dataset / "images" / "train", root / "images")
    data = json.loads(
        (synthetic_dataset / "annotations" / "person_keypoints_train.json").read_text()
    )
    people = {}
    for ann in data["annotations"]:
        if ann["num_keypoints"] > 0:
            people.setdefault(ann["image_id"], []).append(ann)
    image_ids = sorted(people)
    files = {img["id"]: img["file_name"] for img in data["images"]}
    expected = {}
    (root / "images" / files[image_ids[0]]).unlink()
    expected["missing_image"] = len(people[image_ids[0]])
    jpeg = root / "images" / files[image_ids[1]]
    jpeg.write_bytes(jpeg.read_bytes()[: jpeg.stat().st_size // 2])
    expected["truncated_image"] = len(people[image_ids[1]])
    (root / "images" / files[image_ids[2]]).write_bytes(b"\xff\xd8 not a jpeg at all \xff\xd9")
    expected["corrupt_image"] = len(people[image_ids[2]])
    victims = [a for i in image_ids[3:] for a in people[i]]
    victims[0]["bbox"][2] = 0
    victims[1]["bbox"][0] = 10_000
    victims[2]["keypoints"][0:3] = [float("nan"), 5.0, 2]
    victims[3]["keypoints"][3:6] = [50_000.0, 10.0, 2]
    del victims[4]["keypoints"]
    expected |= {
        "invalid_box": 2,
        "bad_keypoints": 1,
        "keypoints_outside_image": 1,
        "missing_fields (keypoints)": 1,
    }
    ann = root / "ann.json"
    ann.write_text(json.dumps(data))
    return ann, root / "images", expected, victims


def test_bad_input_is_skipped_and_counted(synthetic_dataset, tmp_path, capsys):
    ann, images, expected, _ = _corrupted_copy(synthetic_dataset, tmp_path)
    assert shard_cli(ann, images, tmp_path / "out", "--detail", "128x96") == 0
    skipped = read_manifest(tmp_path / "out").skipped
    assert {k: skipped.get(k) for k in expected} == expected
    out = capsys.readouterr().out
    assert "skipped" in out
    missing = [ln for ln in out.splitlines() if ln.startswith("shard_coco: missing_image")]
    assert len(missing) == 1 and str(images) in missing[0]  # the image named, with its path
    assert verify(tmp_path / "out") == []


def test_strict_turns_bad_input_into_errors_naming_it(synthetic_dataset, tmp_path, capsys):
    ann, images, _, victims = _corrupted_copy(synthetic_dataset, tmp_path)
    assert shard_cli(ann, images, tmp_path / "out", "--strict") == 2
    err = capsys.readouterr().err
    assert f"annotation {victims[0]['id']}" in err and "invalid_box" in err
    data = json.loads(ann.read_text())  # repair the annotations: now the images fail
    for victim in victims:
        data["annotations"] = [a for a in data["annotations"] if a["id"] != victim["id"]]
    ann.write_text(json.dumps(data))
    assert shard_cli(ann, images, tmp_path / "out2", "--strict", "--workers", 2) == 2
    err = capsys.readouterr().err
    assert "image '" in err and ("missing_image" in err or "_image" in err)


def test_clear_errors_before_any_work(synthetic_dataset, synthetic_train, tmp_path, capsys):
    ann = synthetic_dataset / "annotations" / "person_keypoints_train.json"
    images = synthetic_dataset / "images" / "train"
    assert shard_cli(tmp_path / "none.json", images, tmp_path / "o1") == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "broken.json").write_text("{")
    assert shard_cli(tmp_path / "broken.json", images, tmp_path / "o2") == 2
    assert "not valid JSON" in capsys.readouterr().err
    empty = json.loads(ann.read_text()) | {"annotations": []}
    (tmp_path / "empty.json").write_text(json.dumps(empty))
    assert shard_cli(tmp_path / "empty.json", images, tmp_path / "o3") == 2
    assert "no instances" in capsys.readouterr().err
    copy = tmp_path / "copy"
    shutil.copytree(synthetic_train, copy)
    before = sorted(p.name for p in copy.iterdir())
    assert shard_cli(ann, images, copy, "--shard-size", 8, "--detail", "128x96") == 2
    err = capsys.readouterr().err
    assert "other parameters" in err and "shard_size: 16 -> 8" in err
    assert sorted(p.name for p in copy.iterdir()) == before  # nothing overwritten
    assert shard_cli(ann, images, tmp_path / "o4", "--dets", ann) == 2
    assert "evaluation splits" in capsys.readouterr().err


def test_verify_reports_damage_with_shard_and_key(synthetic_train, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(synthetic_train, copy)
    manifest = read_manifest(copy)
    victim = copy / manifest.shards[1].name
    data = bytearray(victim.read_bytes())
    first_key, _ = next(iter_samples(victim))
    start = data.index(b"\xff\xd8\xff")  # the first JPEG's data
    data[start : start + 64] = b"\x00" * 64
    victim.write_bytes(bytes(data))
    (copy / manifest.shards[2].name).unlink()
    assert verify_main([str(copy)]) == 1
    out = capsys.readouterr().out
    assert f"{victim.name}: size or sha256 differs" in out
    assert f"{victim.name} {first_key}: jpg does not decode" in out
    assert f"{manifest.shards[2].name}: missing" in out


def test_a_wrong_image_folder_leaves_nothing_to_resume(synthetic_dataset, tmp_path, capsys):
    """The first run skips every image (wrong folder) and fails; it leaves no state, and the
    image folder is among the parameters, so a run with the right folder starts afresh."""
    ann = synthetic_dataset / "annotations" / "person_keypoints_train.json"
    out = tmp_path / "out"
    (tmp_path / "empty").mkdir()
    assert shard_cli(ann, tmp_path / "empty", out, "--detail", "128x96") == 2
    assert "every instance was skipped" in capsys.readouterr().err
    assert not list(out.iterdir())  # no state left to "resume"
    images = synthetic_dataset / "images" / "train"
    assert shard_cli(ann, images, out, "--detail", "128x96") == 0
    manifest = read_manifest(out)
    assert manifest.num_samples > 0 and manifest.params["images"] == str(images.resolve())
    copy = tmp_path / "copy"
    shutil.copytree(images, copy)
    assert shard_cli(ann, copy, out, "--detail", "128x96") == 2
    assert "images:" in capsys.readouterr().err  # another folder is another input
    assert shard_cli(ann, copy, out, "--detail", "128x96", "--overwrite") == 0


def test_overwrite_clears_an_unfinished_run(synthetic_dataset, tmp_path, monkeypatch):
    ann = synthetic_dataset / "annotations" / "person_keypoints_train.json"
    images = synthetic_dataset / "images" / "train"
    options = {"shard_size": 16, "detail": (128, 96)}
    real_crop = sharding.crop_shard

    def dies_on_second_shard(job):
        if job.index == 1:
            raise KeyboardInterrupt
        return real_crop(job)

    monkeypatch.setattr(sharding, "crop_shard", dies_on_second_shard)
    with pytest.raises(KeyboardInterrupt):
        shard(ann, images, tmp_path / "out", **options)
    monkeypatch.setattr(sharding, "crop_shard", real_crop)
    result = shard(ann, images, tmp_path / "out", overwrite=True, **options)
    assert result.resumed_shards == 0 and result.cropped == result.num_samples


def test_verify_checks_keypoint_shapes_against_the_manifest(synthetic_train, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(synthetic_train, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    assert manifest["layout"]["name"] == "coco17" and len(manifest["layout"]["joints"]) == 17
    layout = manifest["layout"]
    fewer = {**layout, "joints": layout["joints"][:16], "sigmas": layout["sigmas"][:16]}
    fewer |= {"flip_pairs": layout["flip_pairs"][:-1], "skeleton": [], "upper_body": []}
    fewer.pop("joint_weights")
    (copy / "manifest.json").write_text(json.dumps(manifest | {"layout": fewer}))
    problems = verify(copy, decode_images=False)
    assert len(problems) == manifest["num_samples"]
    assert "keypoints (17, 3)" in problems[0] and "16 joints" in problems[0]


def test_damaged_index_or_counts_are_named_when_a_loader_opens_the_shards(
    synthetic_train, tmp_path
):
    from pose.data.shards import ShardError, ShardIndex, ShardSet

    copy = tmp_path / "copy"
    shutil.copytree(synthetic_train, copy)
    manifest = read_manifest(copy)
    index = copy / manifest.shards[0].index
    lines = index.read_text().splitlines()
    index.write_text("\n".join([lines[0], "jpg 1536 x"] + lines[2:]) + "\n")
    with pytest.raises(ShardError, match=rf"index '.*{index.name}' is damaged"):
        ShardIndex(index)
    index.write_text("garbage\n")
    with pytest.raises(ShardError, match=rf"index '.*{index.name}' starts with 'garbage'"):
        ShardSet.open(copy)
    shutil.copy(synthetic_train / index.name, index)
    data = json.loads((copy / "manifest.json").read_text())
    data["shards"][1]["bytes"] += 512
    (copy / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ShardError, match=r"has \d+ bytes, .*manifest.json says"):
        ShardSet.open(copy)
