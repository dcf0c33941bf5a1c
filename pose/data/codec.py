"""Heatmap targets (encode) in torch, vectorised over the batch and the joints, on the device
of the keypoints. Decoding joins this module with the evaluation issue.

Reference: `generate_target` of the Simple Baselines code (dataset/JointsDataset.py): a Gaussian
of `sigma` heatmap pixels, peak 1, inside a window of radius 3 sigma around the joint rounded to
the heatmap grid; weight 0 for an unlabelled joint or one whose window lies off the heatmap. The
`udp` option (Huang et al. 2020) centres the Gaussian on the unrounded position, with the stride
measured between the first and last pixel centres.
"""

from __future__ import annotations

import torch


def encode_heatmaps(
    keypoints: torch.Tensor,
    image_size: tuple[int, int],
    heatmap_size: tuple[int, int],
    sigma: float,
    kind: str = "gaussian",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets (N, K, h, w) and weights (N, K) from keypoints (N, K, 3): x, y in input pixels
    and visibility. Sizes are (height, width)."""
    if kind not in ("gaussian", "udp"):
        raise ValueError(f"unknown heatmap target kind '{kind}' (gaussian or udp)")
    dtype = torch.float32
    kpts = keypoints.to(dtype)
    (in_h, in_w), (hm_h, hm_w) = image_size, heatmap_size
    if kind == "udp":
        stride = torch.tensor([(in_w - 1) / (hm_w - 1), (in_h - 1) / (hm_h - 1)], device=kpts.device)
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
        (upper_left[..., 0] >= hm_w) | (upper_left[..., 1] >= hm_h)
        | (bottom_right[..., 0] < 0) | (bottom_right[..., 1] < 0)
    )  # fmt: skip
    weights = ((kpts[..., 2] > 0) & ~outside).to(dtype)
    xs = torch.arange(hm_w, device=kpts.device, dtype=dtype)
    ys = torch.arange(hm_h, device=kpts.device, dtype=dtype)
    in_x = (xs >= upper_left[..., :1]) & (xs < bottom_right[..., :1])  # (N, K, w)
    in_y = (ys >= upper_left[..., 1:]) & (ys < bottom_right[..., 1:])  # (N, K, h)
    gx = torch.exp(-((xs - centre[..., :1]) ** 2) / (2 * sigma**2)) * in_x
    gy = torch.exp(-((ys - centre[..., 1:]) ** 2) / (2 * sigma**2)) * in_y
    targets = gy[..., :, None] * gx[..., None, :] * weights[..., None, None]
    return targets, weights
