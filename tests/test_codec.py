"""The heatmap codec (pose/data/codec.py): encode, decode to input pixels and flip-back of each
target kind, as one object."""

import numpy as np
import pytest
import torch

from pose.config import DataConfig
from pose.data.codec import DECODERS, TARGET_KINDS, HeatmapCodec

SIZES = [((256, 192), (64, 48)), ((128, 96), (32, 24)), ((384, 288), (96, 72))]


def _grid_points(codec: HeatmapCodec, offset: float, count: int = 40) -> np.ndarray:
    """Keypoints (1, count, 3) in input pixels at `offset` heatmap pixels right of and below
    pixels of the kind's heatmap grid, with the whole Gaussian (3 sigma) inside the map."""
    rng = np.random.default_rng(0)
    (hm_h, hm_w), (sx, sy) = codec.heatmap_size, codec.scale
    cells = np.stack([rng.integers(7, hm_w - 7, count), rng.integers(7, hm_h - 7, count)], 1)
    cells = cells + offset
    points = np.concatenate([cells * np.array([sx, sy]), np.full((count, 1), 2.0)], 1)
    return points[None].astype(np.float32)


@pytest.mark.parametrize("kind", TARGET_KINDS)
@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("image_size,heatmap_size", SIZES)
def test_round_trip_in_input_pixels(kind, decoder, image_size, heatmap_size):
    """What each kind encodes exactly comes back within 0.05 input pixels: the gaussian kind
    rounds to its grid, so joints on it; UDP keeps sub-pixel positions, so joints a quarter
    pixel off it (where the reference's argmax lands exactly: a quarter toward the larger
    neighbour)."""
    codec = HeatmapCodec(image_size, heatmap_size, 2.0, kind)
    points = _grid_points(codec, 0.25 if kind == "udp" else 0.0)
    targets, weights = codec.encode(torch.from_numpy(points))
    assert weights.all()
    coords, scores = codec.decode(targets, decoder)
    error = np.abs(coords[0].numpy() - points[0, :, :2]).max()
    assert error <= 0.05, (kind, decoder, image_size, error)
    assert (scores > 0.98).all()  # the peak: 1 on the grid, a little less a quarter off it


@pytest.mark.parametrize("image_size,heatmap_size", SIZES)
def test_udp_keeps_sub_pixel_positions_and_the_far_edge(image_size, heatmap_size):
    """UDP centres its Gaussian on the unrounded position and decodes with the same scale:
    a joint near the right and bottom edge comes back where it was (with the gaussian kind's
    size ratio it came back 1.6% toward the origin: 190 -> 187 at 192 -> 48)."""
    codec = HeatmapCodec(image_size, heatmap_size, 2.0, "udp")
    (in_h, in_w), (sx, sy) = image_size, codec.scale
    rng = np.random.default_rng(1)
    xy = rng.uniform([7 * sx, 7 * sy], [in_w - 1 - 7 * sx, in_h - 1 - 7 * sy], (50, 2))
    xy = np.concatenate([xy, [[in_w - 1 - 7 * sx, in_h - 1 - 7 * sy]]])
    points = np.concatenate([xy, np.full((len(xy), 1), 2.0)], 1)[None].astype(np.float32)
    coords, _ = codec.decode(codec.encode(torch.from_numpy(points))[0], "dark")
    error = np.abs(coords[0].numpy() - xy) / np.array([sx, sy])  # in heatmap pixels
    assert error.max() <= 0.05, error.max()


def test_the_scale_is_the_kinds_and_the_codec_comes_from_the_config():
    data = DataConfig(image_size=[256, 192], sigma=3.0, target="udp")
    codec = HeatmapCodec.of(data, torch.Size([64, 48]))
    assert codec == HeatmapCodec((256, 192), (64, 48), 3.0, "udp")
    assert codec.scale == pytest.approx((191 / 47, 255 / 63))
    assert HeatmapCodec((256, 192), (64, 48), 2.0).scale == (4.0, 4.0)
    with pytest.raises(ValueError, match="unknown heatmap target kind 'box'"):
        HeatmapCodec((256, 192), (64, 48), 2.0, "box")


@pytest.mark.parametrize("kind", TARGET_KINDS)
def test_flip_back_undoes_a_mirrored_input_with_the_kinds_shift(kind):
    """Targets of the mirrored input (x -> W - 1 - x, pairs swapped) flipped back decode where
    the unmirrored targets do: to a quarter heatmap pixel for the reference's one-pixel shift
    (its convention), exactly for UDP, which needs none."""
    codec = HeatmapCodec((256, 192), (64, 48), 2.0, kind)
    rng = np.random.default_rng(2)
    xy = rng.uniform(30, 160, (1, 2, 2)).astype(np.float32)
    points = torch.from_numpy(np.concatenate([xy, np.full((1, 2, 1), 2.0, np.float32)], -1))
    mirrored = points.clone()
    mirrored[..., 0] = 191 - points[..., 0]
    permutation = torch.tensor([1, 0])
    back = codec.flip_back(codec.encode(mirrored[:, [1, 0]])[0], permutation)
    expected, _ = codec.decode(codec.encode(points)[0], "dark")
    got, _ = codec.decode(back, "dark")
    bound = 0.05 if kind == "udp" else 0.25 * codec.scale[0] + 0.05
    assert (got - expected).abs().max() <= bound
