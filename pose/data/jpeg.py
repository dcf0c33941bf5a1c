"""Crops stored as JPEGs with restart markers, so that a sample decodes only the window it uses.

A stored crop keeps the context that scale and rotation augmentation may reach, but one sample's
warp reads only part of it, and entropy decoding (most of a decode: BENCHMARKS.md) cannot
skip anything in a plain JPEG. `encode_crop` therefore writes a restart marker every few MCUs, with
the intervals lined up with the MCU rows: each interval then starts afresh (byte aligned, DC
prediction reset) and covers a fixed rectangle of the image. `JpegIntervals.window` copies the
intervals that cover a region into a smaller, valid JPEG (its size in the frame header, its
restart markers renumbered) without decoding anything, and cv2 decodes that. Inside the region
its pixels equal those of the whole decoded crop; a margin around the region keeps chroma
upsampling at the cut edges away from the pixels a warp reads.

The markers cost a few percent in file size (BENCHMARKS.md, sharding). JPEGs without suitable
restart intervals (shards written before this, or by other tools) are decoded whole:
`JpegIntervals.find` returns None for them.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import cv2
import numpy as np

from pose.data.geometry import affine_points, compose_affine, invert_affine

RESTART_MCUS = 4  # default restart interval: the largest divisor of the MCU columns up to this
RST0, EOI, DRI, SOS, SOF_BASELINE = 0xD0, 0xD9, 0xDD, 0xDA, (0xC0, 0xC1)
# Pixels added around a window. At a cut edge, libjpeg's fancy (triangle) chroma upsampling lacks
# the chroma sample beyond the edge, which changes the one outermost pixel row or column; a
# bilinear warp reads one pixel past the sample point (added by the caller). Tested exactly.
EDGE_MARGIN = 2
# Cutting has a fixed cost (finding the intervals, copying them, a second decoder set-up) and
# decoding a cost per KB of entropy-coded data (both measured: BENCHMARKS.md, "Numbers the code
# relies on"). A window is cut out only where it skips at least this much of the crop's data
# (estimated by interval count), about what the cut costs.
MIN_SKIPPED_BYTES = 8 << 10


def restart_interval(width: int, most: int = RESTART_MCUS, mcu_width: int = 16) -> int:
    """MCUs per restart interval for an image `width` pixels wide: the largest divisor of its
    MCU columns up to `most`, so that every interval lies within one MCU row; 0 for `most` 0."""
    columns = -(-width // mcu_width)
    return max((d for d in range(1, most + 1) if columns % d == 0), default=0)


def encode_crop(image: np.ndarray, quality: int, restart_mcus: int = RESTART_MCUS) -> bytes | None:
    """BGR uint8 image -> baseline JPEG (4:2:0, 16x16 MCUs) with row-aligned restart intervals
    of up to `restart_mcus` MCUs (none for 0); None if cv2 cannot encode it."""
    interval = restart_interval(image.shape[1], restart_mcus)
    params = [
        cv2.IMWRITE_JPEG_QUALITY,
        quality,
        cv2.IMWRITE_JPEG_SAMPLING_FACTOR,
        cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420,
        cv2.IMWRITE_JPEG_RST_INTERVAL,
        interval,
    ]
    ok, jpg = cv2.imencode(".jpg", image, params)
    return jpg.tobytes() if ok else None


@dataclass(frozen=True)
class JpegHeader:
    """What the markers before the entropy-coded data say."""

    width: int
    height: int
    sof: int  # offset of the frame header (its height and width at +5)
    scan: int  # offset of the entropy-coded data, just after the scan header
    mcu: tuple[int, int]  # pixels (w, h) of one MCU
    interval: int  # MCUs per restart interval, 0 for none
    cuttable: bool  # baseline, one scan of every component, intervals within MCU rows

    @property
    def grid(self) -> tuple[int, int]:
        """Restart intervals per MCU row, and MCU rows (for a `cuttable` JPEG)."""
        return -(-self.width // self.mcu[0]) // self.interval, -(-self.height // self.mcu[1])

    def intervals_covering(
        self, x0: float, y0: float, x1: float, y1: float
    ) -> tuple[int, int, int, int] | None:
        """The intervals (columns c0..c1, rows r0..r1, ends excluded) that cover [x0, x1) x
        [y0, y1) widened by EDGE_MARGIN, clipped to the image; None for a region wholly
        outside it."""
        span_w, span_h = self.mcu[0] * self.interval, self.mcu[1]
        columns, rows = self.grid
        c0 = max(0, math.floor((x0 - EDGE_MARGIN) / span_w))
        c1 = min(columns, math.ceil((x1 + EDGE_MARGIN) / span_w))
        r0 = max(0, math.floor((y0 - EDGE_MARGIN) / span_h))
        r1 = min(rows, math.ceil((y1 + EDGE_MARGIN) / span_h))
        return (c0, r0, c1, r1) if c1 > c0 and r1 > r0 else None


def read_header(data: bytes) -> JpegHeader | None:
    """The header of a JPEG, or None where it cannot be read here (callers then leave the JPEG
    to cv2, which decides whether it decodes)."""
    try:
        if data[:2] != b"\xff\xd8":
            return None
        pos, sof, interval, baseline = 2, None, 0, True
        while True:
            if data[pos] != 0xFF:
                return None
            while data[pos + 1] == 0xFF:  # fill bytes before a marker
                pos += 1
            marker = data[pos + 1]
            length = struct.unpack_from(">H", data, pos + 2)[0]
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # a frame header
                sof, baseline = pos, marker in SOF_BASELINE
            elif marker == DRI:
                interval = struct.unpack_from(">H", data, pos + 4)[0]
            elif marker == SOS:
                break
            pos += 2 + length
        if sof is None:
            return None
        height, width, components = struct.unpack_from(">HHB", data, sof + 5)
        factors = [data[sof + 11 + 3 * c] for c in range(components)]
    except (IndexError, struct.error):
        return None
    mcu = (8 * max(f >> 4 for f in factors), 8 * max(f & 15 for f in factors))
    if components == 1:
        mcu = (8, 8)  # a single-component scan is not interleaved
    cuttable = (
        baseline
        and interval > 0
        and data[pos + 4] == components
        and (-(-width // mcu[0])) % interval == 0
    )
    return JpegHeader(width, height, sof, pos + 2 + length, mcu, interval, cuttable)


class JpegIntervals:
    """Where each restart interval of a JPEG lies, and how to cut windows out of it."""

    def __init__(self, data: bytes, header: JpegHeader, starts: np.ndarray, ends: np.ndarray):
        self.data, self.header = data, header
        self.starts, self.ends = starts, ends  # entropy-coded bytes of interval i

    @classmethod
    def find(cls, data: bytes, header: JpegHeader) -> JpegIntervals | None:
        """The intervals of `data`, or None where windows cannot be cut from it: not
        `cuttable`, or a stream with other markers or fill bytes between its intervals."""
        if not header.cuttable or data[-2:] != b"\xff\xd9":
            return None
        stream = np.frombuffer(data, np.uint8, len(data) - header.scan - 2, header.scan)
        ff = np.flatnonzero(stream[:-1] == 0xFF)
        follows = stream[ff + 1]
        markers = ff[(follows & 0xF8) == RST0] + header.scan  # RST0..RST7
        others = (follows != 0) & ((follows & 0xF8) != RST0)  # 0xFF00 is a stuffed 0xFF
        columns, rows = header.grid
        if len(markers) != columns * rows - 1 or np.any(others):
            return None
        starts = np.concatenate([[header.scan], markers + 2])
        ends = np.concatenate([markers, [len(data) - 2]])
        return cls(data, header, starts, ends)

    def window(self, c0: int, r0: int, c1: int, r1: int) -> tuple[np.ndarray, int, int]:
        """A JPEG of intervals c0..c1 of MCU rows r0..r1 (ends excluded), and the position
        (x, y) of its top-left pixel in this image."""
        h = self.header
        span_w, span_h = h.mcu[0] * h.interval, h.mcu[1]
        columns = h.grid[0]
        buf = np.frombuffer(self.data, np.uint8)
        header = buf[: h.scan].copy()
        width = min(h.width, c1 * span_w) - c0 * span_w
        height = min(h.height, r1 * span_h) - r0 * span_h
        header[h.sof + 5 : h.sof + 9] = np.frombuffer(struct.pack(">HH", height, width), np.uint8)
        first = np.arange(r0, r1) * columns + c0  # each row's first and last interval
        last = first + (c1 - c0 - 1)
        between = np.array([0xFF, RST0], np.uint8)
        pieces = [header]
        for a, b in zip(self.starts[first], self.ends[last]):
            pieces += [buf[a:b], between]  # a row's intervals with the markers between them
        pieces[-1] = np.array([0xFF, EOI], np.uint8)
        out = np.concatenate(pieces)
        # Renumber every marker RST0..RST7 in order: each interval is followed by one 2-byte
        # marker, so marker k sits after the first k + 1 intervals and k markers.
        picked = (first[:, None] + np.arange(c1 - c0)).ravel()  # the intervals, in order
        lengths = self.ends[picked] - self.starts[picked]
        positions = h.scan + np.cumsum(lengths[:-1] + 2) - 1
        out[positions] = RST0 + np.arange(len(positions)) % 8
        return out, c0 * span_w, r0 * span_h


def decode_rgb(data: bytes | np.ndarray) -> np.ndarray | None:
    """JPEG bytes -> uint8 HxWx3 RGB in the stored pixel grid (an EXIF orientation is not
    applied: keypoints refer to the stored pixels), None if they do not decode."""
    flags = cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION
    return cv2.imdecode(np.frombuffer(data, np.uint8), flags)


def warp_span(
    header: JpegHeader, matrix: np.ndarray, out_size: tuple[int, int], size: int
) -> tuple[int, ...] | None:
    """The intervals (c0, r0, c1, r1) that a warp by `matrix` (2x3, crop -> output) to
    `out_size` (w, h) reads from a JPEG of `size` bytes; () where it reads none (all border);
    None where the whole crop is to be decoded: not `cuttable`, or cutting would skip too
    little of it to pay (MIN_SKIPPED_BYTES)."""
    if not header.cuttable:
        return None
    w, h = out_size
    corners = np.array([[-0.5, -0.5], [w - 0.5, -0.5], [-0.5, h - 0.5], [w - 0.5, h - 0.5]])
    source = affine_points(invert_affine(matrix), corners)
    (x0, y0), (x1, y1) = source.min(axis=0), source.max(axis=0)
    span = header.intervals_covering(x0, y0, x1 + 1, y1 + 1)  # + 1: bilinear's second tap
    if span is None:
        return ()
    c0, r0, c1, r1 = span
    columns, rows = header.grid
    skipped = 1.0 - (c1 - c0) * (r1 - r0) / (columns * rows)
    return span if skipped * (size - header.scan) >= MIN_SKIPPED_BYTES else None


def decode_for_warp(
    data: bytes, header: JpegHeader, matrix: np.ndarray, out_size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray] | None:
    """Decode what a warp by `matrix` (2x3, crop -> output) to `out_size` (w, h) reads: the
    image, and the matrix from that image to the output (the crop's own matrix where the whole
    crop was decoded). None if the JPEG does not decode."""
    span = warp_span(header, matrix, out_size, len(data))
    if span == ():
        return np.zeros((1, 1, 3), np.uint8), matrix  # black, and the border around it
    layout = JpegIntervals.find(data, header) if span else None
    if layout is None:
        image = decode_rgb(data)
        return None if image is None else (image, matrix)
    jpeg, x, y = layout.window(*span)
    image = decode_rgb(jpeg)
    if image is None:
        return None
    return image, compose_affine(matrix, np.array([[1.0, 0.0, x], [0.0, 1.0, y]]))
