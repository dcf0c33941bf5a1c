"""Simple Baselines (Xiao et al. 2018): a backbone, a deconvolution head and a 1x1 convolution
to one heatmap per joint, optionally with holistic or part-wise attention (Chu et al. 2017)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pose.config import ModelConfig
from pose.models.attention import HolisticAttention, PartAttention
from pose.models.dataset_heads import DatasetHeads

# kernel -> (padding, output_padding) so that every deconvolution doubles the resolution.
DECONV_PADDING = {4: (1, 0), 3: (1, 1), 2: (0, 0)}


class SimpleBaseline(nn.Module):
    """Backbone -> deconvolution stages (-> attention) -> heatmaps at 1/4 of the input size.

    `forward(x)` returns heatmaps (N, joints, H/4, W/4); `forward(x, return_attention=True)`
    also returns a dict of named attention maps (empty without attention), from the same pass.
    With `dataset_channels` (model.heads=per_dataset: each dataset's union channels) the final
    layer is one per dataset (pose/models/dataset_heads.py), and `forward(x, dataset=...)` (the
    dataset index of each sample) takes each sample's from its own; a shared head ignores it.
    """

    def __init__(
        self,
        cfg: ModelConfig,
        num_joints: int,
        backbone: nn.Module,
        channels: int,
        dataset_channels: tuple[tuple[int, ...], ...] = (),
    ):
        super().__init__()
        self.backbone = backbone
        padding, output_padding = DECONV_PADDING[cfg.deconv_kernel]
        layers: list[nn.Module] = []
        for _ in range(cfg.deconv_layers):
            deconv = nn.ConvTranspose2d(
                channels,
                cfg.deconv_filters,
                cfg.deconv_kernel,
                stride=2,
                padding=padding,
                output_padding=output_padding,
                bias=False,
            )
            layers += [
                deconv,
                nn.BatchNorm2d(cfg.deconv_filters),
                nn.ReLU(inplace=True),
            ]
            channels = cfg.deconv_filters
        # One flat Sequential, named as in the reference, so its checkpoints map one to one.
        self.deconv_layers = nn.Sequential(*layers)
        # ViTPose's simple decoder: ReLU, bilinear upsampling to stride 4, a 3x3 convolution
        self.upsample = cfg.backbone_stride // 4 if cfg.head == "simple" else 1
        kernel = 3 if cfg.head == "simple" else 1
        if dataset_channels:
            self.final_layer = DatasetHeads(channels, dataset_channels, num_joints, kernel)
        else:
            self.final_layer = nn.Conv2d(channels, num_joints, kernel, padding=kernel // 2)
        # attention attends over each deconvolution's output, or the backbone's without any
        stage_channels = [cfg.deconv_filters] * cfg.deconv_layers or [channels]
        self.holistic = (
            HolisticAttention(stage_channels, cfg.attention_kernel, cfg.attention_steps)
            if cfg.attention in ("holistic", "partwise")
            else None
        )
        self.parts = (
            PartAttention(channels, num_joints, cfg.attention_kernel, cfg.attention_steps)
            if cfg.attention == "partwise"
            else None
        )
        self.reset_head_parameters()

    def reset_head_parameters(self) -> None:
        """Initialise everything after the backbone as the reference does."""
        head = [self.deconv_layers, self.final_layer, self.holistic, self.parts]
        for module in (m for part in head if part is not None for m in part.modules()):
            if isinstance(module, nn.ConvTranspose2d | nn.Conv2d):
                nn.init.normal_(module.weight, std=0.001)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(
        self, x: torch.Tensor, return_attention: bool = False, dataset: torch.Tensor | None = None
    ):
        features = self.backbone(x)
        if self.upsample > 1:
            features = F.interpolate(
                F.relu(features), scale_factor=self.upsample, mode="bilinear", align_corners=False
            )
        stages = []
        for i in range(0, len(self.deconv_layers), 3):
            features = self.deconv_layers[i + 2](
                self.deconv_layers[i + 1](self.deconv_layers[i](features))
            )
            stages.append(features)
        stages = stages or [features]
        maps: dict[str, torch.Tensor] = {}
        if self.holistic is not None:
            features, maps = self.holistic(stages)
        if self.parts is not None:
            heatmaps, maps["parts"] = self.parts(features, self.final_layer)
        elif isinstance(self.final_layer, DatasetHeads):
            heatmaps = self.final_layer(features, dataset)
        else:
            heatmaps = self.final_layer(features)
        return (heatmaps, maps) if return_attention else heatmaps
