"""From photos and videos to skeletons (pose/inference): the whole path's numbers through a
stand-in detector of known boxes and a stand-in model of known heatmaps, a torchvision detector
from a locally saved file, box thresholds and NMS, the offline refusal, the three ways to find
people, and a video in and out."""

import contextlib
import io
import json
import urllib.error

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from launch.predict import main as predict_main
from pose.config import load_config
from pose.data.coco import box_to_center_scale, load_coco
from pose.data.codec import HeatmapCodec, heatmap_size
from pose.data.geometry import get_affine_transform
from pose.data.layout import COCO_17
from pose.inference import PersonDetector, PosePredictor
from pose.inference.boxes import filter_boxes, read_boxes, unboxed_people
from pose.inference.detector import DetectorError
from pose.inference.media import VideoOut
from pose.models import build_model
from pose.models.trained import TrainedModel

CROWD = "000000197388.jpg"  # five people with keypoints
SMALL_DETECTOR = "ssdlite320_mobilenet_v3_large"  # 3.4 M parameters: quick on a CPU


class KnownHeatmaps(nn.Module):
    """A stand-in pose model: returns, crop after crop, the heatmaps it was given."""

    def __init__(self, heatmaps: torch.Tensor):
        super().__init__()
        self.heatmaps, self.served = heatmaps, 0
        self.anchor = nn.Parameter(torch.zeros(()))  # a device to move to

    def forward(self, images, return_attention=False):
        n = images.shape[0]
        out = self.heatmaps[self.served : self.served + n].to(images.device)
        self.served += n
        return (out, {}) if return_attention else out


def crowd_truth(coco_fixtures):
    """The crowd image, its people's boxes (x, y, w, h) and keypoints (M, 17, 3)."""
    coco = load_coco(coco_fixtures / "test_coco.json")
    image_id = int(CROWD.split(".")[0])
    anns = [a for a in coco.imgToAnns[image_id] if a["num_keypoints"] > 0]
    boxes = np.array([a["bbox"] for a in anns], dtype=np.float64)
    keypoints = np.array([a["keypoints"] for a in anns], dtype=np.float64).reshape(-1, 17, 3)
    return cv2.imread(str(coco_fixtures / CROWD)), boxes, keypoints


def test_known_boxes_and_heatmaps_come_out_as_the_truth_in_image_pixels(coco_fixtures):
    """Boxes -> crops -> heatmaps -> keypoints in image pixels, the whole path: a stand-in
    detector gives each annotated person's box (with a box that is not a person's mixed in,
    scored low), a stand-in model the heatmaps of that person's annotated joints in its crop
    (UDP targets, decoded by DARK): every visible joint comes back within a tenth of a pixel
    of its annotation, each person in its box's place, over two images in one call."""
    image, boxes, truth = crowd_truth(coco_fixtures)
    overrides = ["data.image_size=[256,192]", "data.target=udp", "eval.flip_test=false"]
    cfg = load_config("configs/demo.yaml", [*overrides, "eval.decode=dark"])
    size = heatmap_size(cfg.data.image_size, cfg.model.output_stride)
    codec = HeatmapCodec.of(cfg.data, size)
    in_h, in_w = cfg.data.image_size
    targets = []
    for box, joints in zip([*boxes, *boxes[:2]], [*truth, *truth[:2]]):
        center, scale = box_to_center_scale(tuple(box), in_w / in_h)
        to_crop = get_affine_transform(center, scale, 0.0, (in_w, in_h))
        xy = joints[:, :2] @ to_crop[:, :2].T + to_crop[:, 2]
        points = torch.tensor(np.concatenate([xy, joints[:, 2:] > 0], 1)[None], dtype=torch.float32)
        targets.append(codec.encode(points)[0][0])
    model = KnownHeatmaps(torch.stack(targets))
    trained = TrainedModel(cfg, COCO_17, model, None)

    def finder(images):
        return [np.column_stack([boxes, np.ones(len(boxes))]), boxes[:2]]

    people = PosePredictor(trained, finder, "cpu", batch_size=3)([image, image[:, ::-1]])
    assert [len(p) for p in people] == [len(boxes), 2]
    for found, expected, expected_box in zip(
        people[0] + people[1], [*truth, *truth[:2]], [*boxes, *boxes[:2]]
    ):
        np.testing.assert_allclose(found.box, expected_box)
        visible = expected[:, 2] > 0
        error = np.abs(found.keypoints[visible, :2] - expected[visible, :2]).max()
        assert error < 0.1, error
        assert found.keypoints[visible, 2].min() > 0.9 and found.score > 0.9


def test_boxes_below_the_threshold_and_overlapping_a_better_one_are_dropped():
    boxes = np.array(
        [
            [10, 10, 100, 200, 0.9],
            [12, 12, 100, 200, 0.8],  # IoU ~0.94 with the first: merged into it
            [300, 10, 100, 200, 0.5],
            [305, 15, 40, 80, 0.6],  # inside the third, IoU 0.16: kept
            [600, 10, 100, 200, 0.2],  # below 0.3
        ]
    )
    kept = filter_boxes(boxes, 0.3, 0.3)
    np.testing.assert_array_equal(kept[:, 4], [0.9, 0.6, 0.5])
    assert len(filter_boxes(boxes, 0.3, 1.0)) == 4  # no NMS
    assert len(filter_boxes(boxes, 0.0, 0.3)) == 4
    assert filter_boxes(np.zeros((0, 5)), 0.3, 0.3).shape == (0, 5)


def test_a_coco_detections_file_is_filtered_and_missed_people_are_named(coco_fixtures, tmp_path):
    """The published detections of the crowd image: 37 boxes; at score 0.3 and NMS 0.3 about one
    a person, as mmpose's demo filters them. A person whose boxes are removed is named."""
    images = [coco_fixtures / CROWD]
    dets = coco_fixtures / "test_coco_det_AP_H_56.json"
    everything = read_boxes(dets, images, 0.0, 1.0).of(images[0])
    filtered = read_boxes(dets, images, 0.3, 0.3, coco_fixtures / "test_coco.json")
    assert len(everything) == 37 and 5 <= len(filtered.of(images[0])) <= 7
    truth = filtered.truth_of(images[0])
    assert len(truth) == 5
    assert len(unboxed_people(truth, filtered.of(images[0]))) == 0
    missing = unboxed_people(truth, filtered.of(images[0])[1:])
    assert len(missing) <= 1 and len(unboxed_people(truth, np.zeros((0, 5)))) == 5


@pytest.fixture(scope="module")
def detector_file(tmp_path_factory):
    """A torchvision detector's weights, saved here (random: no download)."""
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.get_model(SMALL_DETECTOR, weights=None, weights_backbone=None)
    path = tmp_path_factory.mktemp("detector") / "ssdlite.pth"
    torch.save(model.state_dict(), path)
    return path


def test_a_detector_from_a_local_file_keeps_one_box_per_person(coco_fixtures, detector_file):
    """The detector loads its weights from the file and runs on real images in one batch; with
    its model made to answer known boxes (people twice, a dog, a faint person), only each
    person's best box is left, in image pixels as x, y, w, h."""
    image, boxes, _ = crowd_truth(coco_fixtures)
    detector = PersonDetector(SMALL_DETECTOR, detector_file, "cpu", score_thr=0.3, nms_thr=0.3)
    found = detector([image, image[:100]])
    assert len(found) == 2 and all(f.shape[1] == 5 for f in found)
    corners = torch.tensor(np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], 1))
    answer = {
        "boxes": torch.cat([corners, corners + 2, torch.tensor([[0, 0, 50, 50], [5, 5, 90, 90]])]),
        "labels": torch.tensor([1] * 2 * len(boxes) + [18, 1]),  # 18: a dog in COCO's labels
        "scores": torch.tensor([0.9] * len(boxes) + [0.8] * len(boxes) + [0.99, 0.1]),
    }
    detector.model = lambda images: [answer for _ in images]
    (people,) = detector([image])
    np.testing.assert_allclose(people[:, :4], boxes, atol=1e-5)
    assert (people[:, 4] == pytest.approx(0.9)) and len(people) == len(boxes)


def test_offline_without_the_weights_is_one_line_naming_the_file(
    monkeypatch, tmp_path, demo_weights, coco_fixtures, capsys
):
    """torchvision's download (never reached here: replaced by one that fails as offline)."""
    import torchvision.models._api

    def offline(*args, **kwargs):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    with pytest.raises(DetectorError) as err:
        PersonDetector(SMALL_DETECTOR)
    message = str(err.value)
    assert "ssdlite320_mobilenet_v3_large_coco-a79551df.pth" in message
    assert str(tmp_path / "torch" / "hub" / "checkpoints") in message
    assert "--detector-weights" in message and "name resolution" in message
    with pytest.raises(DetectorError, match="no torchvision detector 'yolo'"):
        PersonDetector("yolo")
    common = ["--checkpoint", demo_weights, "--input", coco_fixtures / CROWD]
    assert predict(*common, "--out", tmp_path / "o", "--detector", SMALL_DETECTOR) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and "a79551df.pth" in err


@pytest.fixture(scope="module")
def demo_weights(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "demo.pth"
    torch.save(build_model(load_config("demo").model, 17).state_dict(), path)
    return path


def predict(*args) -> int:
    return predict_main([*map(str, args), "--config", "demo", "--layout", "coco17"])


def test_predict_needs_a_way_to_find_people_and_takes_one(demo_weights, coco_fixtures, capsys):
    common = ["--checkpoint", demo_weights, "--input", coco_fixtures / CROWD, "--out", "x"]
    assert predict(*common) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--detector" in err and "--boxes" in err
    assert "--whole-image" in err
    assert predict(*common, "--whole-image", "--boxes", "b.json") == 2
    assert "give one of" in capsys.readouterr().err


def test_predict_with_a_detector_file_writes_pictures_and_coco_results(
    demo_weights, detector_file, coco_fixtures, tmp_path, capsys
):
    out = tmp_path / "out"
    images = coco_fixtures / "*.jpg"
    code = predict(
        "--checkpoint",
        demo_weights,
        "--input",
        images,
        "--out",
        out,
        "--detector",
        SMALL_DETECTOR,
        "--detector-weights",
        detector_file,
        "--box-thr",
        "0.0",
        "--ann",
        coco_fixtures / "test_coco.json",
    )
    assert code == 0, capsys.readouterr().err
    assert len(list(out.glob("*_pose.png"))) == 4
    results = json.loads((out / "keypoints.json").read_text())
    assert {r["image_id"] for r in results} <= {785, 40083, 196141, 197388}
    assert all(len(r["keypoints"]) == 51 and len(r["bbox"]) == 4 for r in results)
    gt = load_coco(coco_fixtures / "test_coco.json")
    if results:
        with contextlib.redirect_stdout(io.StringIO()):
            gt.loadRes(results)  # pycocotools reads it


def test_a_video_goes_in_and_a_drawn_video_and_json_come_out(demo_weights, coco_fixtures, tmp_path):
    image = cv2.resize(cv2.imread(str(coco_fixtures / CROWD)), (320, 192))
    video = VideoOut(tmp_path / "clip.mp4", fps=10)
    for shift in range(3):
        video.write(np.roll(image, 8 * shift, axis=1))
    video.close()
    out = tmp_path / "out"
    args = ["--checkpoint", demo_weights, "--input", tmp_path / "clip.mp4", "--out", out]
    assert predict(*args, "--whole-image", "--frames", "2") == 0
    drawn = cv2.VideoCapture(str(out / "clip_pose.mp4"))
    frames = 0
    while drawn.read()[0]:
        frames += 1
    assert frames == 3
    results = json.loads((out / "keypoints.json").read_text())
    assert [r["frame"] for r in results] == [0, 1, 2] and [r["image_id"] for r in results] == [
        0,
        1,
        2,
    ]
    assert not list(out.glob("*.png"))
    frames_dir = tmp_path / "frames"
    frames_dir.mkdir()
    for n in range(3):
        cv2.imwrite(str(frames_dir / f"{n:03d}.jpg"), image)
    args = ["--checkpoint", demo_weights, "--input", frames_dir, "--out", tmp_path / "as_video"]
    assert predict(*args, "--whole-image", "--as-video", "--fps", "5") == 0
    assert (tmp_path / "as_video" / "frames_pose.mp4").stat().st_size > 0


def test_a_missing_checkpoint_is_said_to_be_missing(coco_fixtures, tmp_path, capsys):
    args = ["--checkpoint", tmp_path / "nowhere", "--input", coco_fixtures / CROWD]
    assert predict(*args, "--out", tmp_path / "o", "--whole-image") == 2
    err = capsys.readouterr().err
    assert "nowhere' (does not exist)" in err and "no config" not in err
