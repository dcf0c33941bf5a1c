import contextlib
import io
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from pose.config import DataConfig, load_config
from pose.data.backends import build_loader
from pose.data.coco import box_to_center_scale, load_coco, training_instances
from pose.data.codec import HeatmapCodec, decode_heatmaps, flip_back, input_to_image
from pose.data.geometry import affine_points, get_affine_transform
from pose.data.layout import COCO_17
from pose.data.loader import LoaderSpec
from pose.data.sharding import ShardRequest, shard_dataset
from pose.eval.coco_eval import (
    Prediction,
    coco_results,
    oks_iou,
    oks_nms,
    score_results,
    soft_oks_nms,
)
from pose.eval.evaluate import (
    EvaluationError,
    check_predictions,
    evaluate,
    ground_truth_predictor,
    predict_heatmaps,
)


def test_ground_truth_scores_ap_1_exactly(coco_fixtures):
    coco = load_coco(coco_fixtures / "test_coco.json")
    results = [
        {"image_id": a["image_id"], "category_id": 1, "keypoints": a["keypoints"], "score": 1.0}
        for a in coco.anns.values()
        if a["num_keypoints"] > 0
    ]
    assert score_results(coco_fixtures / "test_coco.json", results, COCO_17.sigmas)["AP"] == 1.0


def test_gt_through_encode_decode_from_gt_boxes(coco_fixtures):
    """Keypoints -> 256x192 crop of the GT box -> targets -> decode -> image: AP >= 0.95."""
    coco = load_coco(coco_fixtures / "test_coco.json")
    instances, _ = training_instances(coco)
    results = []
    for inst in instances:
        center, scale = box_to_center_scale(inst.bbox, 0.75)
        m = get_affine_transform(center, scale, 0, (192, 256))
        kpts = inst.keypoints.copy()
        kpts[:, :2] = affine_points(m, kpts[:, :2])
        codec = HeatmapCodec((256, 192), (64, 48), 2.0)
        targets, _ = codec.encode(torch.from_numpy(kpts)[None])
        coords, scores = codec.decode(targets)
        inverse = torch.from_numpy(get_affine_transform(center, scale, 0, (192, 256), inverse=True))
        xy = input_to_image(coords, inverse[None])[0].numpy()
        preds = np.concatenate([xy, scores[0, :, None].numpy()], 1)
        results.append(
            {
                "image_id": inst.image_id,
                "category_id": 1,
                "keypoints": preds.reshape(-1).tolist(),
                "score": 1.0,
            }
        )
    ap = score_results(coco_fixtures / "test_coco.json", results, COCO_17.sigmas)["AP"]
    print(f"GT boxes, encode/decode at 256x192: AP {ap:.4f}")
    assert ap >= 0.95


def test_gt_through_the_sharded_crops_and_the_loader(coco_fixtures, tmp_path):
    out = tmp_path / "val"
    ann = coco_fixtures / "test_coco.json"
    shard_dataset(ShardRequest(ann, coco_fixtures, out, split="val", progress=False))
    cfg = load_config(None, [f"data.val_shards={out}", f"data.val_ann={ann}"])
    loader = build_loader(LoaderSpec(cfg.data, "val", 5))
    predict = ground_truth_predictor(HeatmapCodec.of(cfg.data, (64, 48)))
    metrics = evaluate(predict, loader, cfg.eval, cfg.data, progress=False)
    print(f"GT through shards, encode/decode at 256x192: AP {metrics['AP']:.4f}")
    assert metrics["AP"] >= 0.95 and metrics["instances"] == 12


def _gaussian(cx, cy, h=64, w=48, sigma=2.0):
    ys, xs = np.mgrid[0:h, 0:w]
    return np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * sigma**2)).astype(np.float32)


def test_decoding_recovers_a_subpixel_peak():
    rng = np.random.default_rng(0)
    centres = rng.uniform([6, 6], [42, 58], (50, 2))
    maps = torch.from_numpy(np.stack([_gaussian(x, y) for x, y in centres]))[None]
    for kind, tolerance in (("argmax", 0.25), ("dark", 0.05)):
        coords, _ = decode_heatmaps(maps, kind)
        error = np.abs(coords[0].numpy() - centres).max()
        assert error <= tolerance, (kind, error)
    plain, _ = decode_heatmaps(maps, "argmax")
    assert np.abs(plain[0].numpy() - centres).mean() > 0.05  # DARK's bound is not trivial


def test_flip_test_of_a_symmetric_input_equals_no_flip():
    """Joints mirrored about the centre (x -> W - x, the augmentation's flip) on a mirror-
    symmetric input: the flipped-back heatmaps (pairs swapped, shifted one pixel) coincide."""
    perm = COCO_17.flip_permutation
    kpts = np.zeros((17, 3), np.float32)
    kpts[:, 2] = 2
    kpts[0, :2] = (96.0, 12.0)
    for left in range(1, 17, 2):
        right = perm[left]
        kpts[[left, right], 1] = 20 + 12.3 * left
        kpts[left, 0], kpts[right, 0] = 96 + 5.3 * left, 96 - 5.3 * left
    targets, _ = HeatmapCodec((256, 192), (64, 48), 2.0).encode(torch.from_numpy(kpts)[None])
    image = torch.rand(1, 3, 256, 192)
    symmetric = (image + image.flip(-1)) / 2

    def model(x):  # an ideal model: these heatmaps for this (symmetric) input, flipped or not
        assert torch.equal(x, symmetric) or torch.equal(x, symmetric.flip(-1))
        return targets

    gaussian, udp = DataConfig(), DataConfig(target="udp")  # 256x192
    plain = predict_heatmaps(model, symmetric, None, gaussian)
    flipped = predict_heatmaps(model, symmetric, perm, gaussian)
    torch.testing.assert_close(decode_heatmaps(flipped)[0], decode_heatmaps(plain)[0])
    unshifted = predict_heatmaps(model, symmetric, perm, udp)  # UDP's flip-back has no shift
    assert not torch.allclose(decode_heatmaps(unshifted)[0], decode_heatmaps(plain)[0])
    back = flip_back(targets, torch.as_tensor(perm))
    torch.testing.assert_close(back[..., 1:-1], targets[..., 1:-1])


def _pycocotools_oks(g, d, area):
    """OKS by pycocotools' own computeOks."""
    gt, dt = COCO(), COCO()
    gt.dataset = {
        "images": [{"id": 1}],
        "categories": [{"id": 1}],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 1,
                "area": area,
                "bbox": [0, 0, 100, 100],
                "keypoints": g.reshape(-1).tolist(),
                "num_keypoints": 17,
                "iscrowd": 0,
            }
        ],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        dt = gt.loadRes(
            [
                {"image_id": 1, "category_id": 1, "keypoints": x.reshape(-1).tolist(), "score": 1.0}
                for x in d
            ]
        )
        ev = COCOeval(gt, dt, "keypoints")
        ev.evaluate()
    return np.array(ev.ious[(1, 1)]).reshape(-1)


def test_oks_nms_keeps_and_drops_the_right_instances():
    rng = np.random.default_rng(1)
    a = np.concatenate([rng.uniform(0, 100, (17, 2)), np.full((17, 1), 2.0)], 1)
    near = a.copy()
    near[:, :2] += 0.5  # a duplicate: OKS ~ 0.99
    middle = a.copy()
    middle[:, :2] += 6.0  # OKS well below 0.9
    far = a.copy()
    far[:, 0] += 300
    dets = np.stack([a, near, middle, far])
    areas = np.full(4, 5000.0)
    ours = oks_iou(a, dets, 5000.0, areas, COCO_17.sigmas)
    theirs = _pycocotools_oks(a, dets, 5000.0)
    # pycocotools orders detections by score, all 1.0 here: compare as sets of values
    np.testing.assert_allclose(np.sort(ours), np.sort(theirs), rtol=1e-6)
    assert ours[1] > 0.9 and ours[2] < 0.9 and ours[3] < 1e-6
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    assert oks_nms(dets, scores, areas, 0.9, COCO_17.sigmas) == [0, 2, 3]
    assert oks_nms(dets, scores[[1, 0, 2, 3]], areas, 0.9, COCO_17.sigmas) == [
        1,
        2,
        3,
    ]  # the better one stays
    keep, decayed = soft_oks_nms(dets, scores, areas, 0.3, sigmas=COCO_17.sigmas)
    assert sorted(keep) == [0, 1, 2, 3] and decayed[1] < 0.8 * np.exp(-(0.9**2) / 0.3) + 1e-9
    assert decayed[3] == pytest.approx(0.6)


def test_rescoring_and_results_format():
    kpts = np.zeros((17, 3))
    kpts[:, 2] = np.linspace(0, 1, 17)
    pred = Prediction(5, kpts, box_score=0.5, area=1000.0, instance="d3")
    (result,) = coco_results([pred], keypoint_thr=0.2, nms_thr=0.9, sigmas=COCO_17.sigmas)
    expected = kpts[:, 2][kpts[:, 2] > 0.2].mean() * 0.5
    assert result["score"] == pytest.approx(expected)
    assert result["image_id"] == 5 and len(result["keypoints"]) == 51


def test_gathered_predictions_must_match_the_manifest():
    p = Prediction(1, np.zeros((17, 3)), 1.0, 1.0, "a1")
    with pytest.raises(EvaluationError, match="2 predictions \\(1 distinct\\) for 2"):
        check_predictions([p, p], 2, "x")
    with pytest.raises(EvaluationError, match="1 predictions"):
        check_predictions([p], 2, "x")
    check_predictions([p], 1, "x")


def test_eval_cli_gt_as_predictions_and_a_state_dict(coco_fixtures, tmp_path, capsys):
    from launch.eval import main as eval_main
    from pose.models import build_model

    out = tmp_path / "val"
    ann = coco_fixtures / "test_coco.json"
    request = ShardRequest(ann, coco_fixtures, out, split="val", detail=(128, 96), progress=False)
    shard_dataset(request)
    common = ["--config", "configs/demo.yaml", f"data.val_shards={out}", f"data.val_ann={ann}"]
    assert eval_main([*common, "--gt-as-predictions", "--out", str(tmp_path / "gt.json")]) == 0
    metrics = json.loads((tmp_path / "gt.json").read_text())
    assert {"AP", "AP50", "AP75", "APm", "APl", "AR", "instances"} <= set(metrics)
    assert metrics["instances"] == 12 and metrics["AP"] > 0.8
    assert not (tmp_path / "results.json").exists()  # nothing beside --out that was not asked
    results = tmp_path / "coco" / "gt_results.json"
    assert eval_main([*common, "--gt-as-predictions", "--results", str(results)]) == 0
    assert len(json.loads(results.read_text())) == 12
    cfg = load_config("configs/demo.yaml")
    torch.save(build_model(cfg.model, 17).state_dict(), tmp_path / "weights.pth")
    assert (
        eval_main(
            [
                *common,
                "--checkpoint",
                str(tmp_path / "weights.pth"),
                "--out",
                str(tmp_path / "m.json"),
            ]
        )
        == 0
    )
    model_metrics = json.loads((tmp_path / "m.json").read_text())
    assert model_metrics["instances"] == 12
    # the codec's ceiling, from the same batches: the ground truth's AP through the codec
    assert model_metrics["AP_ceiling"] == pytest.approx(metrics["AP"])
    said = capsys.readouterr().out
    assert ("no model can score above that" in said) == (metrics["AP"] < 0.9)
    small = [*common, "data.image_size=[64,32]", "--checkpoint", str(tmp_path / "weights.pth")]
    assert eval_main([*small, "--out", str(tmp_path / "small.json")]) == 0
    ceiling = json.loads((tmp_path / "small.json").read_text())["AP_ceiling"]
    said = capsys.readouterr().out
    assert ceiling < 0.9 and f"scores AP {ceiling:.3f} here" in said and "16x8 heatmaps" in said
    assert eval_main([*common, "--checkpoint", str(tmp_path)]) == 2
    assert "neither a state-dict file" in capsys.readouterr().err


def test_predict_writes_pictures_and_coco_json(coco_fixtures, tmp_path):
    from launch.predict import main as predict_main
    from pose.models import build_model

    cfg = load_config("configs/demo.yaml", ["model.attention=partwise"])
    torch.save(build_model(cfg.model, 17).state_dict(), tmp_path / "w.pth")
    image = coco_fixtures / "000000000785.jpg"
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps([[280.79, 44.73, 218.7, 346.68, 0.9]]))
    out = tmp_path / "out"
    assert (
        predict_main(
            [
                "--checkpoint",
                str(tmp_path / "w.pth"),
                "--image",
                str(image),
                "--out",
                str(out),
                "--boxes",
                str(boxes),
                "--config",
                "configs/demo.yaml",
                "--layout",
                "coco17",
                "model.attention=partwise",
            ]
        )
        == 0
    )
    import cv2

    drawn = cv2.imread(str(out / "000000000785_pose.png"))
    assert drawn.shape == cv2.imread(str(image)).shape
    results = json.loads((out / "keypoints.json").read_text())
    assert len(results) == 1 and results[0]["image_id"] == 785
    gt = load_coco(coco_fixtures / "test_coco.json")
    with contextlib.redirect_stdout(io.StringIO()):
        gt.loadRes(results)  # pycocotools accepts it
    panel = cv2.imread(str(out / "000000000785_person0_attention.png"))
    assert panel is not None and panel.shape[0] == 3 * 128  # 3 stages + sum + 17 joints, 7 a row
    assert (
        predict_main(
            [
                "--checkpoint",
                str(tmp_path / "w.pth"),
                "--image",
                str(tmp_path / "no"),
                "--out",
                str(out),
            ]
        )
        == 2
    )


def test_predicting_in_batches_gives_the_same_people_as_one_pass(coco_fixtures):
    """Six boxes of a real image through the model 4 at a time (and 1 at a time) against one
    pass: the same keypoints, scores and attention maps, people in box order."""
    import cv2

    from pose.inference.predictor import PosePredictor, pick_device
    from pose.models import build_model
    from pose.models.trained import TrainedModel

    cfg = load_config("configs/demo.yaml", ["model.attention=holistic"])
    torch.manual_seed(0)
    model = build_model(cfg.model, 17).eval()
    for name, p in model.named_parameters():
        if not name.startswith("backbone") and p.dim() > 1:
            torch.nn.init.normal_(p, std=0.05)
    image = cv2.imread(str(coco_fixtures / "000000000785.jpg"))
    boxes = [(280.8 + 9 * i, 44.7 - 4 * i, 218.7 - 6 * i, 346.7, 0.9) for i in range(6)]
    device = pick_device("auto")
    trained = TrainedModel(cfg, COCO_17, model, None)

    def people(batch_size: int):
        predictor = PosePredictor(trained, None, device, batch_size, keep_crops=True)
        return predictor([image], [boxes])[0]

    one = people(64)
    for batch_size in (4, 1):
        chunked = people(batch_size)
        for a, b in zip(one, chunked, strict=True):
            assert np.array_equal(a.box, b.box)
            # float sums differ with the batch; DARK's refinement carries that to ~0.1 px
            np.testing.assert_allclose(a.keypoints[:, :2], b.keypoints[:, :2], atol=0.5)
            np.testing.assert_allclose(a.keypoints[:, 2], b.keypoints[:, 2], atol=1e-4)
            np.testing.assert_allclose(a.attention["holistic"], b.attention["holistic"], atol=1e-5)
    assert len({tuple(p.keypoints[:, 0].round(1)) for p in one}) == 6  # six different people
    with (
        pytest.raises(ValueError, match="sees no CUDA GPU")
        if not torch.cuda.is_available()
        else (contextlib.nullcontext())
    ):
        pick_device("cuda")


@pytest.mark.parametrize("attention, cells", [("none", 3), ("holistic", 4), ("partwise", 5)])
def test_debug_panel_lays_out_every_attention_variant(attention, cells, tmp_path):
    """The picture each eval writes: per person, 2x enlarged, ground truth, prediction, summed
    heatmaps and each attention map side by side; with joints, every joint's heatmap under."""
    import cv2

    from pose.config import ModelConfig
    from pose.models import build_model
    from pose.viz.panels import prediction_panel

    torch.manual_seed(0)
    model = build_model(
        ModelConfig(backbone="resnet18", attention=attention, deconv_filters=32), 17
    )
    keypoints = torch.zeros(3, 17, 3)
    keypoints[:, 0] = torch.tensor([48.0, 30.0, 2.0])  # only the nose, visible
    batch = {"image": torch.randn(3, 3, 128, 96), "keypoints": keypoints}
    data = DataConfig(image_size=[128, 96])
    path = prediction_panel(model, batch, tmp_path / "panel.png", COCO_17, data, count=2)
    panel = cv2.imread(str(path))
    assert panel.shape == (2 * (256 + 4), cells * 192, 3)
    # the ground truth's nose is drawn at twice its crop position in the first cell
    nose = panel[60, 96].astype(int)
    assert np.abs(nose - np.array(COCO_17.colour(0))).max() <= 40
    with_joints = prediction_panel(model, batch, tmp_path / "j.png", COCO_17, data, 1, joints=True)
    columns = cells * 2  # as many 96-px joint pictures as fit under the row
    rows = -(-17 // columns)
    assert cv2.imread(str(with_joints)).shape == (256 + 4 + rows * 128 + 4, cells * 192, 3)


def test_throughput_bars_draw_one_bar_per_variant(tmp_path):
    import matplotlib.image as mpimg

    from pose.viz.curves import throughput_bars

    rates = {"dali": [240.0, 250.0], "torch": [1500.0, 1560.0], "reference": [400.0, 410.0]}
    fewer = {k: v for k, v in rates.items() if k != "dali"}
    two = throughput_bars(fewer, tmp_path / "two.png", "t", "x", "reference")
    three = throughput_bars(rates, tmp_path / "three.png", "t", "x", "reference")
    h2, h3 = mpimg.imread(two).shape[0], mpimg.imread(three).shape[0]
    assert h3 == h2 + 60  # 0.5 inch more per bar at 120 dpi


@pytest.mark.slow
def test_two_rank_evaluation_counts_a_bad_sample_outside_rank_0(
    synthetic_dataset, tmp_path, run_python
):
    """A sample that does not decode in the second rank's part: every rank's skip count is
    gathered, so the prediction count still checks out and the skip is reported."""
    from pose.data.shards import iter_samples
    from pose.distributed import free_port

    ann = synthetic_dataset / "annotations" / "person_keypoints_val.json"
    out = tmp_path / "val"
    request = ShardRequest(ann, synthetic_dataset / "images" / "val", out, split="val")
    total = shard_dataset(replace(request, detail=(128, 96), progress=False)).num_samples
    tar = sorted(out.glob("*.tar"))[-1]
    data = bytearray(tar.read_bytes())
    last = list(iter_samples(tar))[-1][1]["jpg"]
    start = data.index(last[:64])
    data[start : start + 200] = b"\x00" * 200  # the last sample, in rank 1's part
    tar.write_bytes(bytes(data))
    torchrun = ["-m", "torch.distributed.run", "--nproc_per_node", "2"]
    torchrun += ["--master_port", str(free_port())]
    args = ["launch/eval.py", "--config", "configs/demo.yaml", "--gt-as-predictions"]
    args += [f"data.val_shards={out}", f"data.val_ann={ann}", "data.num_workers=0"]
    done = run_python([*torchrun, *args, "--out", tmp_path / "m.json"], timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["instances"] == total - 1 and metrics["skipped"] == 1
    assert "1 skipped: their crops do not decode" in done.stdout


@pytest.mark.parametrize("which", ["fixtures", "synthetic"])
def test_faster_coco_eval_gives_pycocotools_metrics_to_1e_6(
    which, coco_fixtures, synthetic_dataset
):
    """eval.scorer=faster_coco_eval against the reference on real and held-out sets: noisy
    copies of the annotated people (some twice, some left out), scored with the layout's
    sigmas; every one of the ten metrics the same to 1e-6."""
    from conftest import import_extra

    from pose.eval.coco_eval import METRIC_NAMES, score_results

    import_extra("faster_coco_eval", "fast-eval")
    ann = (
        coco_fixtures / "test_coco.json"
        if which == "fixtures"
        else synthetic_dataset / "annotations" / "person_keypoints_val.json"
    )
    rng = np.random.default_rng(3)
    results = []
    for a in json.loads(ann.read_text())["annotations"]:
        if not a.get("num_keypoints") or rng.random() < 0.1:
            continue
        for copy in range(1 + (rng.random() < 0.3)):
            kpts = np.asarray(a["keypoints"], float).reshape(-1, 3)
            kpts[:, :2] += rng.normal(0, 3 + 10 * copy, (len(kpts), 2))
            kpts[:, 2] = rng.uniform(0.1, 1.0, len(kpts))
            results.append(
                {
                    "image_id": a["image_id"],
                    "category_id": 1,
                    "keypoints": kpts.ravel().round(2).tolist(),
                    "score": float(rng.random()),
                }
            )
    sigmas = np.asarray(COCO_17.sigmas)
    reference = score_results(ann, results, sigmas, "pycocotools")
    faster = score_results(ann, results, sigmas, "faster_coco_eval")
    assert 0.2 < reference["AP"] < 0.99
    for name in METRIC_NAMES:
        assert faster[name] == pytest.approx(reference[name], abs=1e-6), name
