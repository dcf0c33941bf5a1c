"""Heatmap targets (encode), decoding and flip-back in torch, vectorised over the batch and the
joints, on the device of the keypoints. `HeatmapCodec` holds one model's sizes, sigma and
target kind and owns the scale between input and heatmap pixels: every caller encodes, decodes
and flips back through it.

Reference: `generate_target` of the Simple Baselines code (dataset/JointsDataset.py): a Gaussian
of `sigma` heatmap pixels, peak 1, inside a window of radius 3 sigma around the joint rounded to
the heatmap grid; weight 0 for an unlabelled joint or one whose window lies off the heatmap. The
`udp` option (Huang et al. 2020) centres the Gaussian on the unrounded position, with the stride
measured between the first and last pixel centres.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pose.config import DataConfig

TARGET_KINDS = ("gaussian", "udp")
DECODERS = ("argmax", "dark")


@dataclass(frozen=True)
class HeatmapCodec:
    """Heatmaps of one model: input and heatmap sizes (height, width), the target's sigma in
    heatmap pixels and its kind (`gaussian`: the reference's, `udp`: unbiased data processing).

    `encode` makes targets from keypoints in input pixels; `decode` returns keypoints in input
    pixels, through the same scale the kind encodes with; `flip_back` undoes a mirrored input
    with the kind's shift (one pixel for `gaussian`, as the reference; none for `udp`)."""

    image_size: tuple[int, int]
    heatmap_size: tuple[int, int]
    sigma: float
    kind: str = "gaussian"

    def __post_init__(self) -> None:
        if self.kind not in TARGET_KINDS:
            raise ValueError(f"unknown heatmap target kind '{self.kind}' (gaussian or udp)")

    @classmethod
    def of(cls, data: DataConfig, heatmap_size: tuple[int, int]) -> HeatmapCodec:
        """The codec of `data`'s input size, sigma and target at a model's heatmap size."""
        size = (int(heatmap_size[0]), int(heatmap_size[1]))
        return cls(tuple(data.image_size), size, data.sigma, data.target)

    @property
    def scale(self) -> tuple[float, float]:
        """Input pixels per heatmap pixel, (x, y): the size ratio for `gaussian`; for `udp` the
        distance between the first and last pixel centres of each grid."""
        (in_h, in_w), (hm_h, hm_w) = self.image_size, self.heatmap_size
        if self.kind == "udp":
            return (in_w - 1) / max(1, hm_w - 1), (in_h - 1) / max(1, hm_h - 1)
        return in_w / hm_w, in_h / hm_h

    def encode(self, keypoints: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Targets (N, K, h, w) and weights (N, K) from keypoints (N, K, 3) in input pixels."""
        return encode_heatmaps(keypoints, self.image_size, self.heatmap_size, self.sigma, self.kind)

    def decode(
        self, heatmaps: torch.Tensor, method: str = "argmax"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Keypoints (N, K, 2) in input pixels and confidences (N, K) from heatmaps."""
        coords, scores = decode_heatmaps(heatmaps, method)
        return coords * coords.new_tensor(self.scale), scores

    def flip_back(self, heatmaps: torch.Tensor, permutation: torch.Tensor) -> torch.Tensor:
        """Heatmaps of the mirrored input, flipped back with left/right joints swapped."""
        return flip_back(heatmaps, permutation, shift=self.kind != "udp")


def heatmap_size(image_size: tuple[int, int], stride: int) -> tuple[int, int]:
    """(height, width) of the heatmaps of an input of `image_size` (height, width) at `stride`
    input pixels per heatmap pixel (`model.output_stride`)."""
    return image_size[0] // stride, image_size[1] // stride


def encode_heatmaps(
    keypoints: torch.Tensor,
    image_size: tuple[int, int],
    heatmap_size: tuple[int, int],
    sigma: float,
    kind: str = "gaussian",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets (N, K, h, w) and weights (N, K) from keypoints (N, K, 3): x, y in input pixels
    and visibility. Sizes are (height, width)."""
    if kind not in TARGET_KINDS:
        raise ValueError(f"unknown heatmap target kind '{kind}' (gaussian or udp)")
    dtype = torch.float32
    kpts = keypoints.to(dtype)
    (in_h, in_w), (hm_h, hm_w) = image_size, heatmap_size
    if kind == "udp":
        stride = torch.tensor(
            [(in_w - 1) / (hm_w - 1), (in_h - 1) / (hm_h - 1)], device=kpts.device
        )
    else:
        stride = torch.tensor([in_w / hm_w, in_h / hm_h], device=kpts.device)
    exact = kpts[..., :2] / stride  # (N, K, 2) in heatmap pixels
    mu = torch.trunc(exact + 0.5)  # the reference's int(x / stride + 0.5)
    radius = sigma * 3
    upper_left = torch.trunc(mu - radius)
    bottom_right = torch.trunc(mu + radius + 1)
    # The reference pastes a (2r+1)-wide Gaussian whose centre is at index size // 2.
    centre = upper_left + float(int(2 * radius + 1) // 2)
    if kind == "udp":
        centre = centre + (exact - mu)
    outside = (
        (upper_left[..., 0] >= hm_w)
        | (upper_left[..., 1] >= hm_h)
        | (bottom_right[..., 0] < 0)
        | (bottom_right[..., 1] < 0)
    )
    weights = ((kpts[..., 2] > 0) & ~outside).to(dtype)
    xs = torch.arange(hm_w, device=kpts.device, dtype=dtype)
    ys = torch.arange(hm_h, device=kpts.device, dtype=dtype)
    in_x = (xs >= upper_left[..., :1]) & (xs < bottom_right[..., :1])  # (N, K, w)
    in_y = (ys >= upper_left[..., 1:]) & (ys < bottom_right[..., 1:])  # (N, K, h)
    gx = torch.exp(-((xs - centre[..., :1]) ** 2) / (2 * sigma**2)) * in_x
    gy = torch.exp(-((ys - centre[..., 1:]) ** 2) / (2 * sigma**2)) * in_y * weights[..., None]
    targets = gy[..., :, None] * gx[..., None, :]  # one (N, K, h, w) product, no temporary
    return targets, weights


# --------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------


def decode_heatmaps(
    heatmaps: torch.Tensor, kind: str = "argmax"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Joint positions (N, K, 2) in heatmap pixels and confidences (N, K) from heatmaps
    (N, K, h, w), on their device.

    `argmax`: the reference `get_final_preds`: the maximum, moved a quarter pixel toward the
    larger neighbour when it is not on the border (1 < x < w - 1). `dark`: distribution-aware
    refinement (Zhang et al. 2020): blur with an 11-pixel Gaussian keeping each maximum, take the
    log, and move by one Newton step of its second-order Taylor expansion."""
    if kind not in DECODERS:
        raise ValueError(f"unknown heatmap decoding '{kind}' (argmax or dark)")
    hm = heatmaps.float()
    n, k, _, w = hm.shape
    flat = hm.reshape(n, k, -1)
    scores, index = flat.max(dim=-1)
    coords = torch.stack([index % w, index // w], dim=-1).float()
    coords = coords * (scores > 0).unsqueeze(-1)  # the reference zeroes non-positive maxima
    if kind == "argmax":
        return coords + _quarter_offset(hm, coords), scores
    return coords + _dark_offset(hm, coords), scores


def _values_at(hm: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """hm[n, k, y, x] for integer index tensors of shape (N, K), clamped into the map."""
    h, w = hm.shape[-2:]
    flat_index = (y.clamp(0, h - 1) * w + x.clamp(0, w - 1)).long()
    return hm.reshape(*hm.shape[:2], -1).gather(-1, flat_index.unsqueeze(-1)).squeeze(-1)


def _quarter_offset(hm: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    h, w = hm.shape[-2:]
    px = torch.floor(coords[..., 0] + 0.5)
    py = torch.floor(coords[..., 1] + 0.5)
    inside = ((px > 1) & (px < w - 1) & (py > 1) & (py < h - 1)).float()
    dx = _values_at(hm, px + 1, py) - _values_at(hm, px - 1, py)
    dy = _values_at(hm, px, py + 1) - _values_at(hm, px, py - 1)
    return torch.stack([torch.sign(dx), torch.sign(dy)], dim=-1) * 0.25 * inside.unsqueeze(-1)


def gaussian_blur(hm: torch.Tensor, kernel: int = 11) -> torch.Tensor:
    """cv2.GaussianBlur((kernel, kernel), sigma 0) per map, reflect-101 borders, each map
    rescaled to keep its maximum (DARK's modulation)."""
    sigma = 0.3 * ((kernel - 1) * 0.5 - 1) + 0.8
    x = torch.arange(kernel, dtype=hm.dtype, device=hm.device) - (kernel - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    n, k, h, w = hm.shape
    flat = hm.reshape(n * k, 1, h, w)
    pad = kernel // 2
    blurred = F.conv2d(F.pad(flat, (pad, pad, 0, 0), mode="reflect"), g.view(1, 1, 1, -1))
    blurred = F.conv2d(F.pad(blurred, (0, 0, pad, pad), mode="reflect"), g.view(1, 1, -1, 1))
    blurred = blurred.reshape(n, k, h, w)
    peak = hm.amax(dim=(-2, -1), keepdim=True)
    return blurred * peak / blurred.amax(dim=(-2, -1), keepdim=True).clamp_min(1e-12)


def _dark_offset(hm: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    h, w = hm.shape[-2:]
    log = torch.log(gaussian_blur(hm).clamp_min(1e-10))
    px, py = coords[..., 0], coords[..., 1]
    inside = (px > 1) & (px < w - 2) & (py > 1) & (py < h - 2)

    def at(dx: int, dy: int) -> torch.Tensor:
        return _values_at(log, px + dx, py + dy)

    centre = at(0, 0)
    dx = 0.5 * (at(1, 0) - at(-1, 0))
    dy = 0.5 * (at(0, 1) - at(0, -1))
    dxx = 0.25 * (at(2, 0) - 2 * centre + at(-2, 0))
    dxy = 0.25 * (at(1, 1) - at(1, -1) - at(-1, 1) + at(-1, -1))
    dyy = 0.25 * (at(0, 2) - 2 * centre + at(0, -2))
    det = dxx * dyy - dxy**2
    ok = inside & (det != 0)
    safe = torch.where(ok, det, torch.ones_like(det))
    # offset = -H^-1 g, with H^-1 = [[dyy, -dxy], [-dxy, dxx]] / det
    ox = -(dyy * dx - dxy * dy) / safe
    oy = -(-dxy * dx + dxx * dy) / safe
    return torch.stack([ox, oy], dim=-1) * ok.unsqueeze(-1)


def flip_back(
    heatmaps: torch.Tensor, permutation: torch.Tensor, shift: bool = True
) -> torch.Tensor:
    """Heatmaps of a horizontally flipped input, flipped back with left/right joints swapped
    and, as the reference does (SHIFT_HEATMAP), moved one pixel to the right."""
    back = heatmaps.flip(-1)[:, permutation]
    if shift:
        back = torch.cat([back[..., :1], back[..., :-1]], dim=-1)
    return back


def input_to_image(points: torch.Tensor, to_image: torch.Tensor) -> torch.Tensor:
    """Input pixels (N, K, 2) -> original image pixels, through the affine `to_image` (N, 2, 3)."""
    pts = points.double()
    return pts @ to_image[:, :, :2].transpose(1, 2).double() + to_image[:, None, :, 2].double()
