"""Multi-context attention (Chu et al., CVPR 2017), as modules over a feature map.

An attention map is made from features f by a 3x3 convolution, u = conv3x3(f), then refined by
T mean-field steps with one k x k kernel shared across the steps:

    s_1 = sigmoid(conv_k(u) + u),   s_t = sigmoid(conv_k(s_{t-1}) + u)

so every map lies in (0, 1). `maps` > 1 gives one map per part, each with its own kernels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MeanFieldAttention(nn.Module):
    """Features (N, C, H, W) -> attention maps (N, maps, H, W) in (0, 1)."""

    def __init__(self, channels: int, maps: int = 1, kernel: int = 1, steps: int = 3):
        super().__init__()
        self.steps = steps
        self.unary = nn.Conv2d(channels, maps, 3, padding=1)
        # The pairwise term: one k x k kernel per map, shared by all T steps.
        self.pairwise = nn.Conv2d(maps, maps, kernel, padding=kernel // 2, groups=maps, bias=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        u = self.unary(features)
        s = torch.sigmoid(self.pairwise(u) + u)
        for _ in range(self.steps - 1):
            s = torch.sigmoid(self.pairwise(s) + u)
        return s


class HolisticAttention(nn.Module):
    """One attention map per deconvolution stage, upsampled to the last stage's resolution and
    summed (multi-resolution attention); the sum multiplies every channel of the last stage."""

    def __init__(self, stage_channels: list[int], kernel: int, steps: int):
        super().__init__()
        self.stages = nn.ModuleList(MeanFieldAttention(c, 1, kernel, steps) for c in stage_channels)

    def forward(
        self, stage_features: list[torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        last = stage_features[-1]
        maps: dict[str, torch.Tensor] = {}
        total = torch.zeros_like(last[:, :1])
        for i, (attend, feats) in enumerate(zip(self.stages, stage_features), start=1):
            a = attend(feats)  # each stage's own map (the seed TF code reused stage 1's here)
            maps[f"stage{i}"] = a
            if a.shape[-2:] != last.shape[-2:]:
                a = F.interpolate(a, size=last.shape[-2:], mode="bilinear", align_corners=False)
            total = total + a
        maps["holistic"] = total
        return last * total, maps


class PartAttention(nn.Module):
    """One refined map per joint. Each joint's heatmap is a 1x1 convolution of the features
    multiplied by its map; since a 1x1 convolution acts per pixel, w_k . (f * p_k) + b_k equals
    p_k * (w_k . f) + b_k, which is computed without materialising a feature copy per joint."""

    def __init__(self, channels: int, joints: int, kernel: int, steps: int):
        super().__init__()
        self.attend = MeanFieldAttention(channels, joints, kernel, steps)

    def forward(
        self, features: torch.Tensor, final_layer: nn.Conv2d
    ) -> tuple[torch.Tensor, torch.Tensor]:
        parts = self.attend(features)
        reduced = F.conv2d(features, final_layer.weight)  # bias added after the product
        return parts * reduced + final_layer.bias.view(1, -1, 1, 1), parts
