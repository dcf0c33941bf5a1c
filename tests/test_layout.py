"""Keypoint layouts (pose/data/layout.py): the presets, custom layouts from YAML files and from
an annotation file's category, and the errors where layouts do not agree."""

import numpy as np
import pytest
import yaml

from pose.data.layout import (
    COCO_17,
    DEFAULT_SIGMA,
    KeypointLayout,
    LayoutError,
    choose_layout,
    flip_pairs_from_names,
    load_layout,
    one_layout,
    preset,
    preset_names,
    save_layout,
)


@pytest.mark.parametrize(
    "name, joints",
    [
        ("coco17", 17),
        ("crowdpose14", 14),
        ("aic14", 14),
        ("mpii16", 16),
        ("coco_wholebody133", 133),
    ],
)
def test_presets_are_consistent(name, joints):
    layout = preset(name)
    assert layout.num_joints == joints and len(layout.sigmas) == joints and layout.sigmas_known
    permutation = layout.flip_permutation
    assert np.array_equal(permutation[permutation], np.arange(joints))  # an involution
    for left, right in layout.flip_pairs:  # (left, right): a joint and its mirror image
        if "left" in layout.joints[left] or "right" in layout.joints[left]:
            assert layout.joints[left].replace("left", "right") == layout.joints[right]
    assert all(0 <= a < joints and 0 <= b < joints for a, b in layout.skeleton)
    assert len(layout.weights) == joints and set(layout.upper_body) < set(range(joints))
    assert set(preset_names()) >= {"coco17", "crowdpose14", "aic14", "mpii16"}


def test_coco17_is_what_pycocotools_and_the_annotation_files_use():
    from pycocotools.cocoeval import Params

    np.testing.assert_allclose(COCO_17.sigmas, Params(iouType="keypoints").kpt_oks_sigmas)
    coco_skeleton = [[16, 14], [14, 12], [17, 15], [15, 13], [12, 13], [6, 12], [7, 13], [6, 7]]
    coco_skeleton += [[6, 8], [7, 9], [8, 10], [9, 11], [2, 3], [1, 2], [1, 3], [2, 4], [3, 5]]
    coco_skeleton += [[4, 6], [5, 7]]
    assert {frozenset((a - 1, b - 1)) for a, b in coco_skeleton} == {
        frozenset(pair) for pair in COCO_17.skeleton
    }
    assert COCO_17.upper_body == tuple(range(11))


def test_a_custom_layout_needs_only_joint_names(tmp_path):
    path = tmp_path / "hands.yaml"
    path.write_text(yaml.safe_dump({"joints": ["head", "l_hand", "r_hand", "Foot_L", "foot_r"]}))
    layout = load_layout(str(path))
    assert layout.name == "hands" and layout.flip_pairs == ((1, 2), (3, 4))
    assert layout.sigmas == (DEFAULT_SIGMA,) * 5 and not layout.sigmas_known
    assert layout.upper_body == (0, 1, 2) and layout.weights == (1.0,) * 5
    save_layout(layout, tmp_path / "again.yaml")
    assert load_layout(str(tmp_path / "again.yaml")).joints == layout.joints
    names = ("left-eye", "right-eye", "eye_left", "eye_right", "Left Knee", "Right Knee")
    assert flip_pairs_from_names(names) == ((0, 1), (2, 3), (4, 5))


@pytest.mark.parametrize(
    "content, words",
    [
        ({"joints": "nose"}, "'joints' must be a list"),
        ({"joints": ["a", "b"], "sigma": [1, 2]}, "unknown keys ['sigma']"),
        ({"joints": ["a", "b"], "skeleton": [["a", "c"]]}, "'c' is not one of its joints"),
        (
            {"joints": ["a", "b"], "sigmas": [0.1]},
            "2 positive sigmas are needed, one per joint; 1 given",
        ),
        ({"joints": ["a", "a"]}, "distinct"),
        ({"joints": ["a", "b", "c"], "flip_pairs": [["a", "b"], ["b", "c"]]}, "two flip pairs"),
    ],
)
def test_bad_layout_files_are_named_errors(tmp_path, content, words):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(content))
    with pytest.raises(LayoutError) as err:
        load_layout(str(path))
    assert "bad.yaml" in str(err.value) and words in str(err.value)
    with pytest.raises(LayoutError, match="neither a built-in layout"):
        load_layout("coco_18")


def test_the_category_picks_a_preset_or_derives_a_layout():
    crowd = {"keypoints": list(preset("crowdpose14").joints)}
    assert choose_layout(crowd, "auto", "ann.json") == (preset("crowdpose14"), [])
    category = {"keypoints": ["top", "l_arm", "r_arm"], "skeleton": [[1, 2], [1, 3]]}
    derived, notes = choose_layout(category, "auto", "ann.json")
    assert derived.flip_pairs == ((1, 2),) and derived.skeleton == ((0, 1), (0, 2))
    assert not derived.sigmas_known and "no OKS sigmas of its own" in notes[-1]


def test_names_match_presets_without_case_spaces_or_hyphens():
    """AIC's file names its joints 'Right Shoulder', 'Head top', ..."""
    aic = preset("aic14")
    spelled = [name.replace("_", " ").title() for name in aic.joints]
    spelled[8] = "Right-ankle"
    layout, notes = choose_layout({"keypoints": spelled}, "auto", "aic.json")
    assert layout == aic and "match preset 'aic14' up to case" in notes[0]
    renamed = [f"{n}_x" for n in spelled]  # no preset: derived, the pairs still found
    layout, _ = choose_layout({"keypoints": renamed}, "auto", "aic.json")
    assert len(layout.flip_pairs) == 6 and (3, 0) in layout.flip_pairs  # Left/Right Shoulder


def test_a_near_match_is_noted_and_a_foreign_skeleton_is_not_drawn():
    """CrowdPose's file: 'head' where the preset has 'top_head', and COCO's 17-joint skeleton
    (1-based, up to 17) on its 14 joints."""
    joints = list(preset("crowdpose14").joints)
    joints[12] = "head"
    coco_skeleton = [[a + 1, b + 1] for a, b in COCO_17.skeleton]
    layout, notes = choose_layout({"keypoints": joints, "skeleton": coco_skeleton}, "auto", "c")
    assert layout.name == "custom14" and layout.skeleton == () and len(layout.flip_pairs) == 6
    near, skeleton, sigmas = notes
    assert "nearly match preset 'crowdpose14'" in near
    assert "joint 12: 'head' in the data, 'top_head' in the layout" in near
    assert "--layout crowdpose14" in near
    assert "does not fit its 14 joints" in skeleton and "up to 17" in skeleton
    assert "no OKS sigmas" in sigmas
    chosen, notes = choose_layout({"keypoints": joints}, "crowdpose14", "c")  # as it suggests
    assert chosen == preset("crowdpose14") and "'head' in the data" in notes[0]


def test_a_zero_based_skeleton_is_read_as_such():
    """ExLPose's file numbers its skeleton from 0."""
    category = {"keypoints": ["a", "b", "c"], "skeleton": [[0, 1], [1, 2]]}
    layout, notes = choose_layout(category, "auto", "x")
    assert layout.skeleton == ((0, 1), (1, 2)) and "0-based" in notes[0]


def test_a_layout_that_names_other_joints_is_refused():
    """`--layout aic14` on CrowdPose's joints: the same count, other joints in another order."""
    crowd = {"keypoints": list(preset("crowdpose14").joints)}
    with pytest.raises(LayoutError) as err:
        choose_layout(crowd, "aic14", "crowd.json")
    assert "does not name the joints of the person category of 'crowd.json'" in str(err.value)
    assert "joint 0: 'left_shoulder' in the data, 'right_shoulder' in the layout" in str(err.value)
    with pytest.raises(LayoutError, match="has 17 joints, the person category"):
        choose_layout(crowd, "coco17", "crowd.json")


def test_an_empty_category_and_a_layout_file_without_sigmas_say_so(tmp_path):
    with pytest.raises(LayoutError, match="names no keypoints \\('keypoints': \\[\\]\\)"):
        choose_layout({"keypoints": []}, "auto", "empty.json")
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump({"joints": ["a", "b"]}))
    _, notes = choose_layout({"keypoints": ["a", "b"]}, str(path), "x.json")
    assert "no OKS sigmas of its own" in notes[0]
    path.write_text("joints: [a, b\n")
    with pytest.raises(LayoutError, match=r"layout file '.*mine\.yaml' is not valid YAML"):
        load_layout(str(path))


def test_train_and_val_layouts_must_agree_in_sigmas_and_skeleton():
    crowd = preset("crowdpose14")
    other = KeypointLayout(crowd.name, crowd.joints, crowd.flip_pairs, (0.1,) * 14, (), ())
    with pytest.raises(LayoutError, match="different sigmas"):
        one_layout({"train": crowd, "val": other})


def test_layouts_that_differ_are_errors_naming_both():
    crowd = preset("crowdpose14")
    assert one_layout({"a": COCO_17, "b": COCO_17}, "coco17") is COCO_17
    with pytest.raises(LayoutError, match=r"'coco17' \(17 joints\), b 'crowdpose14' \(14\)"):
        one_layout({"a": COCO_17, "b": crowd})
    with pytest.raises(LayoutError, match=r"data\.layout': 'coco17' .* is not the layout of a"):
        one_layout({"a": crowd}, "coco17")
    with pytest.raises(LayoutError, match="flip pairs"):
        KeypointLayout("x", ("a", "b"), ((0, 0),), (0.1, 0.1), (), ()).check()
