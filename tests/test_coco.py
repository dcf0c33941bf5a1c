import json

import numpy as np
import pytest

from pose.data.coco import (
    PERSON_CATEGORY,
    CocoFormatError,
    box_to_center_scale,
    clean_bbox,
    load_coco,
    training_instances,
)
from pose.data.layout import COCO_17


def test_real_fixtures_load_and_filter(coco_fixtures):
    coco = load_coco(coco_fixtures / "test_coco.json")
    assert len(coco.imgs) == 4 and len(coco.anns) == 14
    instances, skipped = training_instances(coco)
    assert len(instances) == 12  # 14 annotations, two of them with num_keypoints == 0
    assert dict(skipped) == {"no_keypoints": 2}
    assert sum(int((i.keypoints[:, 2] > 0).sum()) for i in instances) == 181
    assert all(i.keypoints.shape == (17, 3) for i in instances)
    assert coco.cats[1]["keypoints"] == list(COCO_17.joints)
    assert coco.cats[1]["skeleton"] == PERSON_CATEGORY["skeleton"]
    edge = next(i for i in instances if i.ann_id == 543117)  # box [0.5, 43.74, 90.1, 220.09]
    np.testing.assert_allclose(edge.bbox, (0.5, 43.74, 89.1, 219.09), atol=1e-6)
    for inst in instances:  # cleaned boxes stay inside the image
        x, y, w, h = inst.bbox
        assert x >= 0 and y >= 0 and x + w <= inst.image_wh[0] - 1 + 1e-6
        assert y + h <= inst.image_wh[1] - 1 + 1e-6


def test_clean_bbox_matches_the_reference():
    assert clean_bbox([-10, -5, 50, 40], 100, 100) == (0.0, 0.0, 49.0, 39.0)
    assert clean_bbox([95, 95, 20, 20], 100, 100) == (95.0, 95.0, 4.0, 4.0)
    assert clean_bbox([10, 10, 0, 5], 100, 100) is None
    assert clean_bbox([150, 10, 10, 10], 100, 100) is None


def test_box_to_center_scale_widens_to_aspect_and_pads():
    center, scale = box_to_center_scale((10, 20, 30, 80), aspect_ratio=0.75)
    np.testing.assert_allclose(center, (25, 60))
    np.testing.assert_allclose(scale, (75, 100))  # width widened to 60, then x1.25
    _, scale = box_to_center_scale((0, 0, 100, 50), aspect_ratio=0.75)
    np.testing.assert_allclose(scale, (125, 100 / 0.75 * 1.25), rtol=1e-6)


def test_bad_annotation_files_are_clear_errors(tmp_path):
    with pytest.raises(CocoFormatError, match="does not exist"):
        load_coco(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(CocoFormatError, match="not valid JSON"):
        load_coco(tmp_path / "bad.json")
    (tmp_path / "noanns.json").write_text(json.dumps({"images": [], "categories": []}))
    with pytest.raises(CocoFormatError, match="'annotations'"):
        load_coco(tmp_path / "noanns.json")
    doc = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "person"}]}
    (tmp_path / "nokp.json").write_text(json.dumps(doc))
    with pytest.raises(CocoFormatError, match="person category with keypoints"):
        load_coco(tmp_path / "nokp.json")


def test_training_instances_count_bad_annotations():
    from pycocotools.coco import COCO

    good = {
        "id": 1,
        "image_id": 1,
        "bbox": [10, 10, 20, 40],
        "num_keypoints": 1,
        "iscrowd": 0,
        "keypoints": [15, 20, 2] + [0] * 48,
        "category_id": 1,
    }
    anns = [
        good,
        {**good, "id": 2, "iscrowd": 1},
        {**good, "id": 3, "num_keypoints": 0},
        {**good, "id": 4, "bbox": [200, 10, 5, 5]},
        {**good, "id": 5, "keypoints": [float("nan")] * 51},
        {k: v for k, v in good.items() if k != "bbox"} | {"id": 6},
        {**good, "id": 7, "image_id": 99},
        {**good, "id": 8, "bbox": [10, 10, "20", 40]},  # wrong-typed fields
        {**good, "id": 9, "keypoints": ["15", 20, 2] + [0] * 48},
        {**good, "id": 10, "bbox": [10, float("nan"), 20, 40]},
        {**good, "id": 11, "bbox": [10, 10, float("inf"), 40]},
        {**good, "id": 12, "keypoints": [15, 20, 2] + [0] * 60},  # 21 joints, not 17
        {**good, "id": 13, "keypoints": [15, 20, True] + [0] * 48},
        {**good, "id": 14, "num_keypoints": "1"},
        {k: v for k, v in good.items() if k != "iscrowd"} | {"id": 15},  # as in AIC: kept
    ]
    coco = COCO()
    coco.dataset = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 100, "height": 100}],
        "annotations": anns,
        "categories": [PERSON_CATEGORY],
    }
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    instances, skipped = training_instances(coco)
    assert [i.ann_id for i in instances] == [1, 15]
    assert dict(skipped) == {
        "crowd": 1,
        "no_keypoints": 1,
        "invalid_box": 4,
        "bad_keypoints": 4,
        "missing_fields (bbox)": 1,
        "unknown_image": 1,
        "wrong_keypoint_count (17 joints expected, 21 found)": 1,
    }


@pytest.mark.parametrize(
    ("document", "words"),
    [
        ({"images": [{"id": "1", "file_name": "a", "width": 1, "height": 1}]}, "images[0]"),
        ({"images": [{"id": 1, "file_name": "a", "width": "640", "height": 1}]}, "'width'"),
        ({"annotations": [{"image_id": 1}]}, "annotations[0] needs an integer 'id'"),
        ({"annotations": [{"id": 1}]}, "annotations[0]"),
        ({"annotations": "none"}, "'annotations' list"),
    ],
)
def test_files_pycocotools_cannot_index_are_named_errors(tmp_path, document, words):
    base = {"images": [], "annotations": [], "categories": [PERSON_CATEGORY]}
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(base | document))
    with pytest.raises(CocoFormatError) as err:
        load_coco(path)
    assert str(path) in str(err.value) and words in str(err.value)


def test_sharding_streams_the_annotations_and_counts_a_duplicate_id(tmp_path):
    """index_coco keeps the images and categories and streams the annotations (held only for
    a file with NaN, which streaming readers refuse); an annotation id given twice is a counted
    skip, not a silent replacement."""
    import json

    from pose.data.coco import index_coco

    image = {"id": 1, "file_name": "a.jpg", "width": 100, "height": 100}
    person = {
        "id": 1,
        "image_id": 1,
        "category_id": 1,
        "bbox": [10, 10, 50, 80],
        "num_keypoints": 1,
        "keypoints": [30, 30, 2] + [0, 0, 0] * 16,
    }
    data = {
        "images": [image],
        "annotations": [person, dict(person)],
        "categories": [PERSON_CATEGORY],
    }
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    index = index_coco(path)
    assert index.held is None and index.imgs == {
        1: {"file_name": "a.jpg", "width": 100, "height": 100}
    }
    instances, skipped = training_instances(index)
    assert len(instances) == 1 and skipped == {"duplicate_annotation_id": 1}
    person["keypoints"][1] = float("nan")
    path.write_text(json.dumps(data))  # Python writes NaN: read whole, said so
    assert index_coco(path).held is not None
