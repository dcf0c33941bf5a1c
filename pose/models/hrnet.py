"""HRNet's pose backbones (Sun et al. 2019) from timm: the high-resolution branch (stride 4)
after the fourth stage, whose last module fuses into that branch alone, as the pose network
does (timm's classification HRNet fuses into every branch there). The pose head is a 1x1
convolution to the joints: `model.deconv_layers: 0`.

At 256x192 the parameters are the paper's (28.5 M for W32, 63.6 M for W48 with the 17-joint
head) and so are the multiply-adds, which the paper gives in units of 2^30 (7.1 and 14.6; the
HRNet code divides by 1024^3): 7.65 and 15.69 G."""

from __future__ import annotations

import torch
from timm.models.hrnet import HighResolutionNet, cfg_cls
from torch import nn

from pose.models.registry import register_backbone
from pose.models.weights import drop_unused


class PoseHRNet(HighResolutionNet):
    """timm's HRNet without a head, its fourth stage ending in the highest resolution only."""

    def _make_stage(self, layer_config, num_in_chs, multi_scale_output=True, **kwargs):
        if layer_config is getattr(self, "stage4_cfg", None):
            multi_scale_output = False
        return super()._make_stage(layer_config, num_in_chs, multi_scale_output, **kwargs)


class HRNetBackbone(nn.Module):
    """image (N, 3, H, W) -> the high-resolution branch (N, width, H/4, W/4)."""

    def __init__(self, variant: str):
        super().__init__()
        self.hrnet = PoseHRNet(cfg_cls[variant], head="", num_classes=0)

    def from_classifier_naming(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """timm's ImageNet HRNet weights (`timm:hrnet_w32.ms_in1k`, or such a file): the
        classification head (incremental, downsampling and final layers, classifier) and the
        fusions into the lower branches at the end of stage 4 dropped."""
        last = len(self.hrnet.stage4) - 1
        unused = (
            "incre_modules.",
            "downsamp_modules.",
            "final_layer.",
            "classifier.",
            f"stage4.{last}.fuse_layers.",
        )
        return {f"hrnet.{k}": v for k, v in drop_unused(state, self.hrnet, unused).items()}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (high,) = self.hrnet.forward_features(x)
        return high


for _name, _width in {"hrnet_w32": 32, "hrnet_w48": 48}.items():
    register_backbone(_name, channels=_width, stride=4)(
        lambda cfg, variant=_name: HRNetBackbone(variant)
    )
