"""User-file models far larger than memory, for `bench_meta_build.py`: a small convolutional stem, then a wide
fully-connected head that holds almost all the parameters."""

from __future__ import annotations

import torch
from torch import nn


class WideHead(nn.Module):
    """A 4x4 patchifying convolution, global pooling, then ``hidden`` x ``hidden`` fully-connected layers."""

    def __init__(self, hidden: int, layers: int = 1, num_classes: int = 1000) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 64, 4, stride=4)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.expand = nn.Linear(64, hidden)
        self.body = nn.Sequential(*(nn.Linear(hidden, hidden) for _ in range(layers)))
        self.head = nn.Linear(hidden, num_classes)
        # timm's habit: drop-path rates read from a tensor, which the meta device alone cannot give
        self.rates = [rate.item() for rate in torch.linspace(0, 0.1, layers)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.expand(self.pool(self.stem(x)).flatten(1))))


def ten_billion(num_classes: int = 1000) -> nn.Module:
    """10.0 billion parameters (40 GB in float32): one 100,000 x 100,000 layer."""
    return WideHead(100_000, 1, num_classes)
