"""A network with the patterns of today's backbones, for bench_table.py: a ConvNeXt-style stage (depthwise
convolution, permute, LayerNorm, MLP), a squeeze-and-excitation gate, and a ViT-style attention block."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(width, width, 7, padding=3, groups=width)
        self.norm = nn.LayerNorm(width)
        self.up, self.down = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)
        self.squeeze, self.excite = nn.Conv2d(width, width // 4, 1), nn.Conv2d(width // 4, width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.depthwise(x).permute(0, 2, 3, 1)
        y = self.down(F.gelu(self.up(self.norm(y)))).permute(0, 3, 1, 2)
        gate = torch.sigmoid(self.excite(F.relu(self.squeeze(y.mean((2, 3), keepdim=True)))))
        return x + y * gate


class Backbone(nn.Module):
    def __init__(self, widths: tuple[int, ...] = (96, 192, 384, 768), depths: tuple[int, ...] = (3, 3, 9, 3)) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, widths[0], 4, stride=4)
        stages = []
        for index, (width, depth) in enumerate(zip(widths, depths, strict=True)):
            down = nn.Identity() if index == 0 else nn.Conv2d(widths[index - 1], width, 2, stride=2)
            stages.append(nn.Sequential(down, *(Block(width) for _ in range(depth))))
        self.stages = nn.Sequential(*stages)
        self.attention = nn.MultiheadAttention(widths[-1], 8, batch_first=True)
        self.head = nn.Linear(widths[-1], 1000)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.stages(self.stem(x)).flatten(2).transpose(1, 2)
        tokens = tokens + self.attention(tokens, tokens, tokens, need_weights=False)[0]
        return self.head(tokens.mean(1))


def backbone() -> nn.Module:
    return Backbone()
