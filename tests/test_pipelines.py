import math
import sys
from dataclasses import replace

import cv2
import numpy as np
import pytest
import torch

from pose.config import ConfigError, load_config
from pose.data.backends import build_loader, resolve_backend
from pose.data.codec import encode_heatmaps
from pose.data.dali import DaliLoader
from pose.data.geometry import (
    affine_points,
    get_affine_transform,
    half_body_box,
    to_dali_matrix,
)
from pose.data.layout import COCO_17
from pose.data.loader import Augmentation, LoaderSpec, normalise
from pose.data.sharding import ShardRequest, shard_dataset
from pose.data.shards import META, ShardError, ShardSet, decode_npy, iter_samples
from pose.data.torch_loader import TorchLoader, transform_sample

B = 8
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def shard_dir(synthetic_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("pipeline") / "shards"
    ann = synthetic_dataset / "annotations" / "person_keypoints_train.json"
    images = synthetic_dataset / "images" / "train"
    shard_dataset(ShardRequest(ann, images, out, detail=(128, 96), shard_size=12, progress=False))
    return out


@pytest.fixture(scope="module")
def cfg(shard_dir):
    return load_config(
        "configs/demo.yaml", [f"data.train_shards={shard_dir}", f"data.val_shards={shard_dir}"]
    ).data


@pytest.fixture(scope="module")
def by_ann(shard_dir):
    """ann_id -> raw sample parts."""
    samples = {}
    for tar in ShardSet.open(shard_dir).tars:
        for _, parts in iter_samples(tar):
            samples[int(decode_npy(parts["meta.npy"])[META["ann_id"]])] = parts
    return samples


def spec(cfg, training, batch=B, world=1, rank=0, seed=0) -> LoaderSpec:
    return LoaderSpec(cfg, "train" if training else "val", batch, rank, world, CPU, seed)


def loaders(cfg, training, batch=B, world=1, rank=0, seed=0):
    return [cls(spec(cfg, training, batch, world, rank, seed)) for cls in (TorchLoader, DaliLoader)]


def reference_transform(center, scale, rot, output_size):
    """The reference's three-point get_affine_transform, with cv2.getAffineTransform."""
    rad = np.pi * rot / 180
    src_w, (dst_w, dst_h) = scale[0], output_size

    def rotate(point):
        sn, cs = np.sin(rad), np.cos(rad)
        return np.array([point[0] * cs - point[1] * sn, point[0] * sn + point[1] * cs])

    def third(a, b):
        d = a - b
        return b + np.array([-d[1], d[0]], dtype=np.float32)

    src = np.zeros((3, 2), np.float32)
    dst = np.zeros((3, 2), np.float32)
    src[0], src[1] = center, center + rotate([0, src_w * -0.5])
    dst[0], dst[1] = (
        [dst_w * 0.5, dst_h * 0.5],
        np.array([dst_w * 0.5, dst_h * 0.5]) + [0, dst_w * -0.5],
    )
    src[2], dst[2] = third(src[0], src[1]), third(dst[0], dst[1])
    return cv2.getAffineTransform(src, dst)


@pytest.mark.parametrize("rot", [0.0, 30.0, -72.5])
def test_closed_form_transform_equals_the_reference_construction(rot):
    center, scale = np.array([120.5, 88.25]), np.array([150.0, 200.0])
    ours = get_affine_transform(center, scale, rot, (192, 256))
    np.testing.assert_allclose(ours, reference_transform(center, scale, rot, (192, 256)), atol=1e-4)


def test_dali_matrix_shifts_by_half_a_pixel():
    m = get_affine_transform((50, 40), (80, 100), 20, (96, 128))
    dali = to_dali_matrix(m)
    p = np.array([[3.0, 7.0], [60.0, 20.0]])
    np.testing.assert_allclose(affine_points(dali, p + 0.5), affine_points(m, p) + 0.5)


def test_shapes_dtypes_and_ranges(cfg, shard_dir):
    for loader in loaders(cfg, training=True):
        batch = next(iter(loader.epoch(0)))
        assert batch["image"].shape == (B, 3, 128, 96) and batch["image"].dtype == torch.float32
        low = (0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
        high = (1 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
        for c in range(3):
            assert batch["image"][:, c].min() >= low[c] - 1e-4
            assert batch["image"][:, c].max() <= high[c] + 1e-4
        assert batch["keypoints"].shape == (B, 17, 3) and batch["keypoints"].dtype == torch.float32
        assert batch["meta"].shape == (B, 9) and batch["meta"].dtype == torch.float64
        assert batch["to_image"].shape == (B, 2, 3)
        assert set(batch["keypoints"][..., 2].unique().tolist()) <= {0.0, 1.0, 2.0}


def _fixed_augmentation(half_body=False):
    scales = np.linspace(0.7, 1.3, B).astype(np.float32)
    rotations = np.linspace(-80, 80, B).astype(np.float32)
    flips = np.array([0, 1] * (B // 2), np.float32)
    halves = np.full(B, float(half_body), np.float32)
    upper = np.array([1, 1, 0, 0] * (B // 4), np.float32)
    return scales, rotations, flips, halves, upper


@pytest.mark.filterwarnings("ignore:The external source node")
def test_backends_match_the_numpy_reference_and_each_other(cfg, shard_dir, by_ann):
    """Same augmentation parameters: DALI and torch give the reference keypoints within 0.01 px
    and the same images within interpolation tolerance."""
    scales, rotations, flips, _, _ = _fixed_augmentation()
    dali = DaliLoader(spec(cfg, True), augmentation_source=lambda: list(_fixed_augmentation()))
    batch = next(iter(dali.epoch(0)))
    permutation = COCO_17.flip_permutation
    out_h, out_w = cfg.image_size
    for i in range(B):
        parts = by_ann[int(batch["meta"][i, META["ann_id"]])]
        kpts, meta = decode_npy(parts["kpts.npy"]), decode_npy(parts["meta.npy"])
        crop = cv2.imdecode(np.frombuffer(parts["jpg"], np.uint8), cv2.IMREAD_COLOR)
        width = crop.shape[1]
        # The reference: flip the crop (x' = w - 1 - x, joints swapped), then warp.
        center = np.array([meta[META["center_x"]], meta[META["center_y"]]])
        scale = np.array([meta[META["scale_w"]], meta[META["scale_h"]]]) * scales[i]
        joints = kpts[:, :2].astype(np.float64).copy()
        vis = kpts[:, 2].copy()
        if flips[i]:
            crop = crop[:, ::-1]
            joints[:, 0] = width - 1 - joints[:, 0]
            joints, vis = joints[permutation], vis[permutation]
            center[0] = width - 1 - center[0]
        m = reference_transform(center, scale, rotations[i], (out_w, out_h))
        expected = affine_points(m, joints)
        got = batch["keypoints"][i].numpy()
        assert np.abs(got[:, :2] - expected).max() < 0.01
        np.testing.assert_array_equal(got[:, 2], vis)
        ref_img = cv2.warpAffine(
            np.ascontiguousarray(crop), m, (out_w, out_h), flags=cv2.INTER_LINEAR
        )
        params = Augmentation(float(scales[i]), float(rotations[i]), bool(flips[i]), False, False)
        ours = transform_sample(parts, params, cfg, COCO_17)
        np.testing.assert_allclose(ours["keypoints"][:, :2], expected, atol=0.01)
        unnormalise = np.array([0.229, 0.224, 0.225])[:, None, None] * 255
        dali_img = batch["image"][i].numpy() * unnormalise
        torch_img = normalise(torch.from_numpy(ours["image"])[None])[0].numpy() * unnormalise
        ref_rgb = ref_img[:, :, ::-1].transpose(2, 0, 1).astype(np.float64)
        ref_norm = ref_rgb - np.array([0.485, 0.456, 0.406])[:, None, None] * 255
        assert np.abs(torch_img - ref_norm).mean() < 0.5  # grey levels
        assert np.abs(dali_img - torch_img).mean() < 0.5  # DALI's half-pixel shift is right
        assert np.abs(dali_img - torch_img).max() <= 2.0


def test_flip_swaps_left_and_right_joints(cfg, by_ann):
    parts = next(p for p in by_ann.values() if (decode_npy(p["kpts.npy"])[:, 2] > 0).sum() > 10)
    plain = transform_sample(parts, Augmentation(1.0, 0.0, False, False, False), cfg, COCO_17)
    flipped = transform_sample(parts, Augmentation(1.0, 0.0, True, False, False), cfg, COCO_17)
    plain, flipped = plain["keypoints"], flipped["keypoints"]
    names = list(COCO_17.joints)
    left, right = names.index("left_wrist"), names.index("right_wrist")
    out_w = cfg.image_size[1]
    # The mirrored right wrist is now called the left wrist. The reference flips the crop about
    # its pixel centres and centres the box again, so the output mirrors about w / 2: x -> w - x.
    if plain[right, 2] > 0:
        assert flipped[left, 2] == plain[right, 2]
        assert abs(flipped[left, 0] - (out_w - plain[right, 0])) < 0.01
        assert abs(flipped[left, 1] - plain[right, 1]) < 0.01
    assert flipped[0, 2] == plain[0, 2] and abs(flipped[0, 0] - (out_w - plain[0, 0])) < 0.01


def reference_generate_target(joints, vis, image_size, heatmap_size, sigma):
    """Verbatim logic of the reference generate_target (sizes as (w, h))."""
    k = len(joints)
    weight = (vis > 0).astype(np.float32)
    target = np.zeros((k, heatmap_size[1], heatmap_size[0]), np.float32)
    tmp_size = sigma * 3
    for j in range(k):
        stride = np.array(image_size) / np.array(heatmap_size)
        mu_x, mu_y = int(joints[j][0] / stride[0] + 0.5), int(joints[j][1] / stride[1] + 0.5)
        ul = [int(mu_x - tmp_size), int(mu_y - tmp_size)]
        br = [int(mu_x + tmp_size + 1), int(mu_y + tmp_size + 1)]
        if ul[0] >= heatmap_size[0] or ul[1] >= heatmap_size[1] or br[0] < 0 or br[1] < 0:
            weight[j] = 0
            continue
        size = 2 * tmp_size + 1
        x = np.arange(0, size, 1, np.float32)
        y = x[:, np.newaxis]
        x0 = y0 = size // 2
        g = np.exp(-((x - x0) ** 2 + (y - y0) ** 2) / (2 * sigma**2))
        g_x = max(0, -ul[0]), min(br[0], heatmap_size[0]) - ul[0]
        g_y = max(0, -ul[1]), min(br[1], heatmap_size[1]) - ul[1]
        img_x = max(0, ul[0]), min(br[0], heatmap_size[0])
        img_y = max(0, ul[1]), min(br[1], heatmap_size[1])
        if weight[j] > 0.5:
            target[j][img_y[0] : img_y[1], img_x[0] : img_x[1]] = g[
                g_y[0] : g_y[1], g_x[0] : g_x[1]
            ]
    return target, weight


@pytest.mark.parametrize(
    ("size", "sigma"), [((256, 192), 2.0), ((384, 288), 3.0), ((128, 96), 1.5)]
)
def test_heatmap_targets_equal_the_reference(size, sigma):
    rng = np.random.default_rng(0)
    h, w = size
    joints = np.concatenate(
        [
            rng.uniform(-30, [w + 30, h + 30], (40, 2)),
            [
                [0, 0],
                [-7.9, 5],
                [w - 0.6, h - 0.6],
                [w + 4 * 4 * sigma, 10],
                [-4 * 4 * sigma - 3, 10],
            ],
        ]
    )
    vis = rng.integers(0, 3, len(joints)).astype(np.float32)
    vis[-5:] = 2
    ref_t, ref_w = reference_generate_target(joints, vis, (w, h), (w // 4, h // 4), sigma)
    kpts = torch.from_numpy(np.concatenate([joints, vis[:, None]], 1)).float()[None]
    targets, weights = encode_heatmaps(kpts, (h, w), (h // 4, w // 4), sigma)
    np.testing.assert_array_equal(weights[0].numpy(), ref_w)
    np.testing.assert_allclose(targets[0].numpy(), ref_t, atol=1e-6)
    assert 0 < weights.sum() < len(joints)  # the cases include dropped joints


def test_udp_targets_peak_at_the_unrounded_position():
    kpts = torch.tensor([[[100.3, 60.7, 2.0]]])
    targets, weights = encode_heatmaps(kpts, (256, 192), (64, 48), 2.0, kind="udp")
    stride_x, stride_y = 191 / 47, 255 / 63
    ys, xs = torch.meshgrid(torch.arange(64.0), torch.arange(48.0), indexing="ij")
    cx, cy = 100.3 / stride_x, 60.7 / stride_y
    expected = torch.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / 8)
    window = targets[0, 0] > 0
    torch.testing.assert_close(targets[0, 0][window], expected[window])
    assert weights.item() == 1 and window.sum() == 13 * 13


def test_two_ranks_cover_every_sample_exactly_once(cfg, shard_dir):
    shards = ShardSet.open(shard_dir)
    for cls in (TorchLoader, DaliLoader):
        seen = []
        for rank in (0, 1):
            loader = cls(spec(cfg, False, 5, 2, rank))
            seen += [int(a) for b in loader.epoch(0) for a in b["meta"][:, META["ann_id"]]]
        assert len(seen) == shards.num_samples and len(set(seen)) == shards.num_samples, cls
        steps = []
        parts = []
        for rank in (0, 1):
            loader = cls(spec(cfg, True, 4, 2, rank))
            batches = list(loader.epoch(0))
            steps.append(len(batches))
            parts.append({int(a) for b in batches for a in b["meta"][:, META["ann_id"]]})
        assert steps[0] == steps[1] == shards.num_samples // 8
        assert not parts[0] & parts[1]  # the ranks saw disjoint data


def _ids(loader, epoch, start=0):
    return [b["meta"][:, META["ann_id"]].tolist() for b in loader.epoch(epoch, start)]


def test_epoch_reshuffle_is_seeded_and_resumable(cfg, shard_dir):
    for a, b, other in zip(
        loaders(cfg, True),
        loaders(cfg, True),
        loaders(cfg, True, seed=1),
    ):
        first = _ids(a, 0)
        assert first == _ids(b, 0)  # same seed, same order
        assert first != _ids(a, 1)  # a new order each epoch
        assert first != _ids(other, 0)
        assert _ids(a, 0, start=2) == first[2:]  # a resumed epoch neither replays nor skips
        assert len(first) == a.batches_per_epoch == ShardSet.open(shard_dir).num_samples // B


def test_dali_batches_do_not_depend_on_thread_count_or_start(cfg):
    runs = {}
    for threads, start in ((1, 0), (3, 0), (3, 2)):
        loader = DaliLoader(spec(replace(cfg, num_workers=threads), True))
        runs[(threads, start)] = [b["keypoints"] for b in loader.epoch(2, start)]
    whole = runs[(1, 0)]
    for (_, start), batches in runs.items():
        assert len(batches) == len(whole) - start
        for x, y in zip(whole[start:], batches):
            torch.testing.assert_close(x, y)


def test_torch_backend_batches_do_not_depend_on_worker_count_or_start(cfg):
    """Batch b is the same whichever worker builds it, also when an epoch starts at a batch
    that is not a multiple of the worker count (a resumed run)."""
    runs = {}
    for workers, start in ((0, 0), (1, 1), (2, 0), (2, 1), (3, 1), (3, 2)):
        loader = TorchLoader(spec(replace(cfg, num_workers=workers), True))
        runs[(workers, start)] = [b["keypoints"] for b in loader.epoch(3, start)]
    whole = runs[(0, 0)]
    assert len(whole) >= 4
    for (_, start), batches in runs.items():
        assert len(batches) == len(whole) - start
        for x, y in zip(whole[start:], batches):
            torch.testing.assert_close(x, y)


def test_corrupt_sample_follows_the_policy(cfg, shard_dir, tmp_path):
    import shutil

    copy = tmp_path / "shards"
    shutil.copytree(shard_dir, copy)
    shards = ShardSet.open(copy)
    tar = shards.tars[0]
    data = bytearray(tar.read_bytes())
    first_key, _ = next(iter_samples(tar))
    start = data.index(b"\xff\xd8\xff")
    data[start : start + 400] = b"\x00" * 400  # the first JPEG no longer decodes
    tar.write_bytes(bytes(data))
    copy_cfg = replace(cfg, val_shards=str(copy))
    skip = TorchLoader(spec(copy_cfg, False, 4))
    total = sum(b["image"].shape[0] for b in skip.epoch(0))
    assert total == shards.num_samples - 1 and skip.bad_samples == 1
    assert skip.bad_sample_names == [f"{tar.name} {first_key}"]
    assert skip.samples_read == shards.num_samples
    stop_cfg = replace(copy_cfg, bad_sample_policy="stop", num_workers=2)
    stop = TorchLoader(spec(stop_cfg, False, 4))
    with pytest.raises(ShardError, match=rf"{tar.name}.*{first_key}") as err:
        list(stop.epoch(0))
    assert "Traceback" not in str(err.value)  # the message, not a worker's traceback
    with pytest.raises(ShardError, match=rf"{tar.name} {first_key}: jpg does not decode"):
        list(DaliLoader(spec(copy_cfg, False, 4)).epoch(0))


def test_build_loader_picks_a_backend(cfg, shard_dir):
    assert resolve_backend(cfg, CPU) == "torch"
    assert resolve_backend(cfg, torch.device("cuda")) == "dali"
    loader = build_loader(spec(replace(cfg, backend="dali"), False, 16))
    assert isinstance(loader, DaliLoader)
    assert loader.batches_per_epoch == math.ceil(ShardSet.open(shard_dir).num_samples / 16)
    with pytest.raises(ShardError, match="manifest"):
        build_loader(spec(replace(cfg, val_shards=str(shard_dir / "nope")), False, 4))


def test_without_dali_auto_uses_torch_and_dali_names_the_extra_to_install(cfg, monkeypatch):
    monkeypatch.setitem(sys.modules, "nvidia.dali", None)  # as if not installed
    assert resolve_backend(cfg, torch.device("cuda")) == "torch"
    with pytest.raises(ConfigError, match=r"data\.backend.*posescale\[dali-cuda13\]"):
        resolve_backend(replace(cfg, backend="dali"), CPU)


def test_half_body_crops_the_chosen_half_in_both_backends(cfg, shard_dir, by_ann):
    half_cfg = replace(cfg, half_body_prob=1.0)
    source = lambda: list(_fixed_augmentation(half_body=True))  # noqa: E731
    dali = DaliLoader(spec(half_cfg, True), augmentation_source=source)
    batch = next(iter(dali.epoch(0)))
    scales, rotations, flips, _, upper = _fixed_augmentation(half_body=True)
    applied = 0
    for i in range(B):
        parts = by_ann[int(batch["meta"][i, META["ann_id"]])]
        params = Augmentation(
            float(scales[i]), float(rotations[i]), bool(flips[i]), True, bool(upper[i])
        )
        ours = transform_sample(parts, params, half_cfg, COCO_17)
        np.testing.assert_allclose(batch["keypoints"][i].numpy(), ours["keypoints"], atol=0.01)
        whole = transform_sample(parts, params._replace(half_body=False), half_cfg, COCO_17)
        kpts = decode_npy(parts["kpts.npy"])
        box = half_body_box(kpts, 96 / 128, bool(upper[i]), COCO_17.upper_body_mask)
        if box is None:
            np.testing.assert_allclose(ours["keypoints"], whole["keypoints"], atol=1e-4)
            continue
        applied += 1
        assert not np.allclose(ours["keypoints"], whole["keypoints"])
    assert applied > 0


UPPER = COCO_17.upper_body_mask


def test_half_body_box_follows_hrnet():
    kpts = np.zeros((17, 3))
    kpts[:, 2] = 2
    kpts[:, 0] = np.arange(17) * 2.0
    kpts[:, 1] = np.arange(17) * 10.0
    center, scale = half_body_box(kpts, 0.75, True, UPPER)
    np.testing.assert_allclose(center, [10.0, 50.0])  # mean of joints 0..10
    np.testing.assert_allclose(scale, [0.75 * 100 * 1.5, 100 * 1.5])
    center, _ = half_body_box(kpts, 0.75, False, UPPER)
    np.testing.assert_allclose(center, [27.0, 135.0])  # mean of joints 11..16
    kpts[9:, 2] = 0  # only 9 labelled joints (> 8), lower body has none: upper is used
    center, _ = half_body_box(kpts, 0.75, False, UPPER)
    np.testing.assert_allclose(center, [8.0, 40.0])
    kpts[8:, 2] = 0  # 8 labelled joints: half-body does not apply
    assert half_body_box(kpts, 0.75, True, UPPER) is None


def test_preview_writes_a_picture_and_reports_throughput(cfg, shard_dir, tmp_path, capsys):
    from data_prep.preview import main as preview

    out = tmp_path / "preview.png"
    assert (
        preview(
            [
                "--config",
                "configs/demo.yaml",
                "--out",
                str(out),
                "--batches",
                "2",
                "--batch-size",
                "4",
                f"data.train_shards={shard_dir}",
            ]
        )
        == 0
    )
    image = cv2.imread(str(out))
    assert image.shape == (2 * 128, 8 * 96 * 2, 3) and image.std() > 10
    assert "samples/s" in capsys.readouterr().out
    assert preview(["--config", "configs/demo.yaml", "data.train_shards=/nonexistent"]) == 2
    assert "manifest" in capsys.readouterr().err
