"""Crops with restart intervals: windows cut from them decode to the same pixels as the whole
crop, warps from a window equal warps from the whole crop, and anything else decodes whole."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from pose.config import load_config
from pose.data.geometry import augmented_transform
from pose.data.jpeg import (
    EDGE_MARGIN,
    MIN_SKIPPED_BYTES,
    JpegIntervals,
    decode_for_warp,
    decode_rgb,
    encode_crop,
    read_header,
    restart_interval,
    warp_span,
)
from pose.data.layout import COCO_17
from pose.data.loader import Augmentation
from pose.data.sharding import ShardRequest, shard_dataset
from pose.data.shards import iter_samples
from pose.data.torch_loader import transform_sample


@pytest.fixture(scope="module")
def photo(coco_fixtures) -> np.ndarray:
    """A real COCO photograph (BGR): real texture, so that entropy coding is realistic."""
    return cv2.imread(str(coco_fixtures / "000000000785.jpg"), cv2.IMREAD_COLOR)


def _intervals(data: bytes) -> JpegIntervals | None:
    return JpegIntervals.find(data, read_header(data))


def test_restart_intervals_divide_the_mcu_columns():
    for width in range(1, 400):
        columns = -(-width // 16)
        interval = restart_interval(width)
        assert 1 <= interval <= 4 and columns % interval == 0
        if columns % 4 == 0:
            assert interval == 4
    assert restart_interval(100, 0) == 0


def test_windows_decode_to_the_pixels_of_the_whole_crop(photo):
    rng = np.random.default_rng(0)
    compared = 0
    for _ in range(60):
        h, w = int(rng.integers(17, 420)), int(rng.integers(17, 630))  # odd sizes included
        y = int(rng.integers(0, photo.shape[0] - h + 1))
        x = int(rng.integers(0, photo.shape[1] - w + 1))
        data = encode_crop(np.ascontiguousarray(photo[y : y + h, x : x + w]), 95)
        layout = _intervals(data)
        assert layout is not None and layout.header.interval == restart_interval(w)
        whole = decode_rgb(data)
        x0, x1 = np.sort(rng.uniform(-40, w + 40, 2))
        y0, y1 = np.sort(rng.uniform(-40, h + 40, 2))
        span = layout.header.intervals_covering(x0, y0, x1, y1)
        if span is None:  # wholly outside, margin included
            assert (
                x1 + EDGE_MARGIN <= 0
                or y1 + EDGE_MARGIN <= 0
                or x0 - EDGE_MARGIN >= w
                or y0 - EDGE_MARGIN >= h
            )
            continue
        jpeg, ox, oy = layout.window(*span)
        part = decode_rgb(jpeg)
        assert part is not None and ox % 16 == 0 and oy % 16 == 0
        # The window with its margin lies inside the part (as far as the crop reaches) ...
        lo = np.maximum([x0 - EDGE_MARGIN, y0 - EDGE_MARGIN], 0).astype(int)
        hi = np.minimum(np.ceil([x1 + EDGE_MARGIN, y1 + EDGE_MARGIN]), [w, h]).astype(int)
        assert ox <= lo[0] and oy <= lo[1]
        assert ox + part.shape[1] >= hi[0] and oy + part.shape[0] >= hi[1]
        # ... and its pixels are exactly the whole decode's.
        a0 = np.floor([x0, y0]).clip(0).astype(int)
        a1 = np.minimum(np.ceil([x1, y1]), [w, h]).astype(int)
        if np.all(a1 > a0):
            np.testing.assert_array_equal(
                part[a0[1] - oy : a1[1] - oy, a0[0] - ox : a1[0] - ox],
                whole[a0[1] : a1[1], a0[0] : a1[0]],
            )
            compared += 1
    assert compared > 20


def test_a_small_window_decodes_a_small_jpeg(photo):
    data = encode_crop(np.ascontiguousarray(photo[:400, :640]), 95)  # 64-pixel intervals
    layout = _intervals(data)
    jpeg, ox, oy = layout.window(*layout.header.intervals_covering(200, 150, 300, 250))
    assert len(jpeg) < 0.15 * len(data)  # a 100x100 window of a 640x400 crop
    # With the margin, x 196..304 takes intervals 192..320 and y 146..254 rows 144..256.
    assert (ox, oy) == (192, 144) and decode_rgb(jpeg).shape[:2] == (112, 128)


def _shard_fixtures(coco_fixtures, out, detail) -> None:
    ann = coco_fixtures / "test_coco.json"
    shard_dataset(ShardRequest(ann, coco_fixtures, out, detail=detail, progress=False))


@pytest.mark.parametrize("detail", [(256, 192), (384, 288)])
def test_warps_from_the_window_equal_warps_from_the_whole_crop(coco_fixtures, tmp_path, detail):
    out = tmp_path / "shards"
    _shard_fixtures(coco_fixtures, out, detail)
    rng = np.random.default_rng(1)
    samples, differing, cut = 0, 0.0, 0
    for tar in sorted(out.glob("*.tar")):
        for _, parts in iter_samples(tar):
            header = read_header(parts["jpg"])
            assert _intervals(parts["jpg"]) is not None  # the sharder writes cuttable crops
            whole = decode_rgb(parts["jpg"])
            for _ in range(8):
                center = rng.uniform(0.3, 0.7, 2) * (header.width, header.height)
                box = np.array([192, 256]) * rng.uniform(0.3, 1.2)
                matrix = augmented_transform(
                    center,
                    box,
                    rng.uniform(0.65, 1.35),
                    rng.uniform(-90, 90),
                    bool(rng.random() < 0.5),
                    header.width,
                    (192, 256),
                )
                image, shifted = decode_for_warp(parts["jpg"], header, matrix, (192, 256))
                assert image.shape[0] * image.shape[1] <= whole.shape[0] * whole.shape[1]
                cut += image.shape != whole.shape
                ours = cv2.warpAffine(image, shifted, (192, 256), flags=cv2.INTER_LINEAR)
                reference = cv2.warpAffine(whole, matrix, (192, 256), flags=cv2.INTER_LINEAR)
                diff = np.abs(ours.astype(int) - reference)
                assert diff.max() <= 1  # the shifted matrix rounds a hair differently
                differing += float(np.mean(diff > 0))
                samples += 1
    print(f"pixels off by one: {differing / samples:.2%}")
    assert samples >= 80 and differing / samples < 0.001 and cut > samples / 2


def test_jpegs_that_cannot_be_cut_decode_whole(photo):
    crop = np.ascontiguousarray(photo[:200, :300])  # 19 MCU columns
    plain = encode_crop(crop, 95, restart_mcus=0)
    _, progressive = cv2.imencode(
        ".jpg", crop, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1, cv2.IMWRITE_JPEG_RST_INTERVAL, 1]
    )
    _, across_rows = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_RST_INTERVAL, 4])
    matrix = augmented_transform((150, 100), (120, 160), 1.0, 30.0, False, 300, (192, 256))
    for data in (plain, progressive.tobytes(), across_rows.tobytes()):
        header = read_header(data)
        assert header is not None and header.width == 300 and _intervals(data) is None
        image, same = decode_for_warp(data, header, matrix, (192, 256))
        assert image.shape == (200, 300, 3) and same is matrix


def test_broken_jpegs(photo):
    data = encode_crop(np.ascontiguousarray(photo[:160, :256]), 95)
    assert read_header(b"not a jpeg") is None and read_header(data[:100]) is None
    header = read_header(data)
    damaged = bytearray(data)
    damaged[len(data) // 2 : len(data) // 2 + 2] = b"\xff\xd9"  # an EOI in the middle
    assert JpegIntervals.find(bytes(damaged), header) is None  # decoded whole, as cv2 does
    zeros = bytes(data[:-600]) + b"\x00" * 600
    assert JpegIntervals.find(zeros, header) is None  # no EOI at the end


def test_a_window_outside_the_crop_warps_to_border(photo):
    data = encode_crop(np.ascontiguousarray(photo[:160, :256]), 95)
    header = read_header(data)
    assert header.intervals_covering(300, 0, 400, 100) is None
    matrix = augmented_transform((1000, 1000), (96, 128), 1.0, 0.0, False, 256, (192, 256))
    image, same = decode_for_warp(data, header, matrix, (192, 256))
    assert not cv2.warpAffine(image, same, (192, 256)).any()


def test_warp_span_cuts_only_where_it_saves(photo):
    data = encode_crop(np.ascontiguousarray(photo[:400, :640]), 95)
    header = read_header(data)
    # The padded box a quarter of the crop wide: the warp reads a window of it.
    small = augmented_transform((320, 200), (120, 160), 1.0, 0.0, False, 640, (192, 256))
    c0, r0, c1, r1 = warp_span(header, small, (192, 256), len(data))
    assert (c0, r0, c1, r1) == (4, 7, 6, 18)  # x 260..380 in 256..384, y 120..280 in 112..288
    # Zoomed out over the whole crop: cutting would save nothing.
    everything = augmented_transform((320, 200), (600, 800), 1.0, 0.0, False, 640, (192, 256))
    assert warp_span(header, everything, (192, 256), len(data)) is None
    image, same = decode_for_warp(data, header, everything, (192, 256))
    assert image.shape == (400, 640, 3) and same is everything
    outside = augmented_transform((2000, 200), (120, 160), 1.0, 0.0, False, 640, (192, 256))
    assert warp_span(header, outside, (192, 256), len(data)) == ()
    # A small crop: skipping half of it saves less than cutting costs.
    tiny = encode_crop(np.ascontiguousarray(photo[:128, :128]), 95)
    half = augmented_transform((32, 64), (60, 80), 1.0, 0.0, False, 128, (192, 256))
    assert len(tiny) < 2 * MIN_SKIPPED_BYTES
    assert warp_span(read_header(tiny), half, (192, 256), len(tiny)) is None


def test_headers_this_module_cannot_read_are_left_to_cv2(coco_fixtures, tmp_path):
    _shard_fixtures(coco_fixtures, tmp_path / "shards", (256, 192))
    _, parts = next(iter_samples(next((tmp_path / "shards").glob("*.tar"))))
    cfg = load_config(None, []).data
    data = parts["jpg"]
    filled = data.replace(b"\xff\xdb", b"\xff\xff\xff\xdb", 1)  # fill bytes: legal
    a, b = read_header(filled), read_header(data)
    assert (a.width, a.height, a.mcu, a.interval, a.cuttable, a.scan - a.sof) == (
        b.width,
        b.height,
        b.mcu,
        b.interval,
        b.cuttable,
        b.scan - b.sof,
    )
    assert decode_rgb(JpegIntervals.find(filled, a).window(0, 0, 1, 1)[0]) is not None
    junk = data.replace(b"\xff\xdb", b"\x00\x00\xff\xdb", 1)  # libjpeg skips, with a warning
    assert read_header(junk) is None and decode_rgb(junk) is not None
    augmentation = Augmentation(1.1, 20.0, True, False, False)
    ours = transform_sample({**parts, "jpg": junk}, augmentation, cfg, COCO_17)
    reference = transform_sample(parts, augmentation, cfg, COCO_17)
    assert np.abs(ours["image"].astype(int) - reference["image"]).max() <= 1
    np.testing.assert_array_equal(ours["keypoints"], reference["keypoints"])
    assert (
        transform_sample({**parts, "jpg": b"\xff\xd8 nothing"}, augmentation, cfg, COCO_17) is None
    )
