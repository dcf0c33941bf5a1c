"""Heads for a model trained on several datasets (pose/data/union.py): one final layer per
dataset over its own joints on a shared backbone and deconvolutions (`DatasetHeads`), and a union
model seen as one dataset's (`DatasetView`), as evaluation, pictures and per-dataset prediction
take it.

`DatasetHeads` returns heatmaps over the union's joints. Each head's maps are placed at its
dataset's union channels by a fixed 0/1 matrix (one matrix product: exported as such to ONNX):
for a sample of dataset d (`dataset` given), head d's maps, and zeros at the joints d does not
annotate (the loss gives those no weight); with no dataset given (prediction), each union joint
is the mean of the heads that have it. Every head takes part in every forward pass (weighted by
0 where the sample is another dataset's), so data-parallel gradient reduction finds every
parameter used."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class DatasetHeads(nn.Module):
    """One convolution per dataset, `channels[d]` its union channels in its joints' order."""

    def __init__(
        self, in_channels: int, channels: Sequence[Sequence[int]], num_joints: int, kernel: int
    ):
        super().__init__()
        self.heads = nn.ModuleList(
            nn.Conv2d(in_channels, len(c), kernel, padding=kernel // 2) for c in channels
        )
        owner = torch.cat([torch.full((len(c),), d) for d, c in enumerate(channels)])
        placing = torch.zeros(num_joints, len(owner))  # union joint <- head channel
        column = 0
        for c in channels:
            for union_channel in c:
                placing[union_channel, column] = 1.0
                column += 1
        coverage = placing.sum(1, keepdim=True)
        if not (coverage > 0).all():
            raise ValueError("every union joint needs a dataset head that predicts it")
        # not in the state dict: they follow from the union layout the model is built for
        self.register_buffer("owner", owner, persistent=False)
        self.register_buffer("placing", placing, persistent=False)
        self.register_buffer("averaging", placing / coverage, persistent=False)

    def forward(self, features: torch.Tensor, dataset: torch.Tensor | None = None):
        maps = torch.cat([head(features) for head in self.heads], dim=1)  # (N, sum K_d, h, w)
        if dataset is None:
            return torch.einsum("nchw,uc->nuhw", maps, self.averaging.to(maps.dtype))
        mine = (dataset[:, None] == self.owner[None, :]).to(maps.dtype)  # (N, sum K_d)
        return torch.einsum("nchw,nc,uc->nuhw", maps, mine, self.placing.to(maps.dtype))


class DatasetView(nn.Module):
    """A union model as dataset `index`'s: its heatmaps are that dataset's joints (`channels`,
    its union channels in its order), from its own head where the model has one per dataset."""

    def __init__(self, model: nn.Module, index: int, channels: Sequence[int]):
        super().__init__()
        self.model = model
        self.index = index
        self.register_buffer("channels", torch.as_tensor(list(channels)), persistent=False)

    def forward(self, images: torch.Tensor, return_attention: bool = False):
        dataset = torch.full((images.shape[0],), self.index, device=images.device)
        out = self.model(images, return_attention=return_attention, dataset=dataset)
        channels = self.channels.to(images.device)
        if return_attention:
            heatmaps, maps = out
            return heatmaps.index_select(1, channels), maps
        return out.index_select(1, channels)
