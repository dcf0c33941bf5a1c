"""The built-in backbones: torchvision ResNets, image -> stride-32 feature maps. Each builder
returns the module; its registration names its output channels and stride (registry.py)."""

from __future__ import annotations

import torch
import torchvision
from torch import nn

from pose.models.registry import register_backbone


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


@register_backbone("resnet18", channels=512, stride=32)
def resnet18(cfg) -> nn.Module:
    return ResNetBackbone("resnet18")


@register_backbone("resnet34", channels=512, stride=32)
def resnet34(cfg) -> nn.Module:
    return ResNetBackbone("resnet34")


@register_backbone("resnet50", channels=2048, stride=32)
def resnet50(cfg) -> nn.Module:
    return ResNetBackbone("resnet50")


@register_backbone("resnet101", channels=2048, stride=32)
def resnet101(cfg) -> nn.Module:
    return ResNetBackbone("resnet101")


@register_backbone("resnet152", channels=2048, stride=32)
def resnet152(cfg) -> nn.Module:
    return ResNetBackbone("resnet152")
