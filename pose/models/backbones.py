"""The built-in backbones: torchvision ResNets, image -> stride-32 feature maps. Each builder
returns the module; its registration names its output channels and stride (registry.py)."""

from __future__ import annotations

import torch
import torchvision
from torch import nn

from pose.models.registry import register_backbone
from pose.models.weights import drop_unused


class ResNetBackbone(nn.Module):
    """A torchvision ResNet without its pooling and classifier: image -> stride-32 features.
    Submodule names (conv1, bn1, layer1..4) are torchvision's, so ImageNet weights load as is."""

    def __init__(self, name: str):
        super().__init__()
        net = getattr(torchvision.models, name)(weights=None)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            net.layer1,
            net.layer2,
            net.layer3,
            net.layer4,
        )

    def from_classifier_naming(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """ImageNet weights in torchvision's naming (timm's ResNets share it): the classifier
        `fc.*` dropped."""
        return drop_unused(state, self, ("fc.",))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


# name: output channels (torchvision's BasicBlock ResNets end in 512, the Bottleneck ones 2048)
CHANNELS = {
    "resnet18": 512,
    "resnet34": 512,
    "resnet50": 2048,
    "resnet101": 2048,
    "resnet152": 2048,
}

for _name, _channels in CHANNELS.items():
    register_backbone(_name, channels=_channels, stride=32)(
        lambda cfg, name=_name: ResNetBackbone(name)
    )
