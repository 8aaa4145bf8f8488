"""The building blocks of a ResNet, one idea per class.

``Conv2dAuto`` adds automatic padding to a convolution; ``ResidualBlock`` adds the shortcut connection;
``ResNetResidualBlock`` adds expansion and downsampling; ``ResNetBasicBlock`` and ``ResNetBottleNeckBlock``
fill in the residual branch (He et al. 2015, "Deep Residual Learning for Image Recognition").
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from enum import StrEnum
from functools import partial
from typing import Any, ClassVar

import torch.nn.functional as F
from torch import Tensor, nn


class ShortcutType(StrEnum):
    """How a block's shortcut matches the residual branch when the shape changes (He et al. 2015, section 3.3)."""

    PROJECTION = "projection"  # option B: 1x1 conv + BN with the block's stride
    ZERO_PAD = "zero-pad"  # option A: subsample, then zero-pad the new channels; no parameters


class BottleneckStride(StrEnum):
    """Which convolution of a downsampling bottleneck carries the stride."""

    FIRST_1X1 = "first-1x1"  # the original paper, Caffe and TF-Slim ("ResNet v1")
    MIDDLE_3X3 = "middle-3x3"  # torchvision ("ResNet v1.5"): the 3x3 sees every input position


class Conv2dAuto(nn.Conv2d):
    """A convolution padded by ``p = k // 2`` on each side.

    For an odd kernel and unit stride that keeps the spatial size (convolution arithmetic, relation 3);
    an even kernel grows the output by one.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int], **kwargs: Any) -> None:
        kernel_height, kernel_width = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
        padding = (kernel_height // 2, kernel_width // 2)
        super().__init__(in_channels, out_channels, kernel_size, padding=padding, **kwargs)


def conv_bn(
    in_channels: int, out_channels: int, conv: Callable[..., nn.Module], *args: Any, **kwargs: Any
) -> nn.Sequential:
    """A convolution followed by batch normalisation, named ``conv`` and ``bn``."""
    return nn.Sequential(
        OrderedDict(
            conv=conv(in_channels, out_channels, *args, **kwargs),
            bn=nn.BatchNorm2d(out_channels),
        )
    )


class ResidualBlock(nn.Module):
    """The residual idea: ``out = activation(shortcut(x) + blocks(x))``.

    Abstract in spirit: both branches are identities here; subclasses replace ``blocks`` (the residual
    function F of the paper) and, when the shape changes, ``shortcut``. The activation is applied to the sum,
    as in He et al. 2015.
    """

    def __init__(self, in_channels: int, out_channels: int, activation: type[nn.Module] = nn.ReLU) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.blocks: nn.Module = nn.Identity()
        self.shortcut: nn.Module = nn.Identity()
        self.activation = activation()

    def forward(self, x: Tensor) -> Tensor:
        residual = self.blocks(x)
        x = self.shortcut(x)
        x = x + residual
        return self.activation(x)


class ZeroPadShortcut(nn.Module):
    """The parameter-free "option A" shortcut: subsample by ``stride``, then zero-pad the new channels.

    Used by the CIFAR ResNets of He et al. 2015 (section 4.2). Half the new channels go before the input's,
    half after.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        if out_channels < in_channels:
            raise ValueError(f"a zero-pad shortcut cannot reduce channels ({in_channels} -> {out_channels})")
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        self.pad_before = (out_channels - in_channels) // 2
        self.pad_after = out_channels - in_channels - self.pad_before

    def forward(self, x: Tensor) -> Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad_before, self.pad_after))

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, stride={self.stride}"


class ResNetResidualBlock(ResidualBlock):
    """A residual block that can widen its output (``expansion``) and shrink its input (``downsampling``).

    ``out_channels`` is the width of the residual branch; the block outputs ``out_channels * expansion``
    channels. When that or the spatial size differs from the input, the shortcut becomes a 1x1 conv + BN
    projection with the block's stride (or, with ``ShortcutType.ZERO_PAD``, a ``ZeroPadShortcut``).
    """

    expansion: ClassVar[int] = 1

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        downsampling: int = 1,
        activation: type[nn.Module] = nn.ReLU,
        shortcut: ShortcutType = ShortcutType.PROJECTION,
    ) -> None:
        super().__init__(in_channels, out_channels, activation)
        self.downsampling = downsampling
        # The convolution of the residual branch: 3x3 unless overridden, auto padded, no bias (BN follows).
        self.conv = partial(Conv2dAuto, kernel_size=3, bias=False)
        if self.should_apply_shortcut:
            self.shortcut = self._make_shortcut(ShortcutType(shortcut))

    @property
    def expanded_channels(self) -> int:
        return self.out_channels * self.expansion

    @property
    def should_apply_shortcut(self) -> bool:
        """The identity no longer fits when the channels or the spatial size change."""
        return self.in_channels != self.expanded_channels or self.downsampling != 1

    def _make_shortcut(self, shortcut: ShortcutType) -> nn.Module:
        if shortcut is ShortcutType.ZERO_PAD:
            return ZeroPadShortcut(self.in_channels, self.expanded_channels, self.downsampling)
        return conv_bn(
            self.in_channels, self.expanded_channels, nn.Conv2d, kernel_size=1, stride=self.downsampling, bias=False
        )


class ResNetBasicBlock(ResNetResidualBlock):
    """Two 3x3 convolutions (ResNet-18/34 and the CIFAR ResNets); the first one carries the stride."""

    expansion: ClassVar[int] = 1

    def __init__(
        self, in_channels: int, out_channels: int, activation: type[nn.Module] = nn.ReLU, **kwargs: Any
    ) -> None:
        super().__init__(in_channels, out_channels, activation=activation, **kwargs)
        self.blocks = nn.Sequential(
            conv_bn(self.in_channels, self.out_channels, self.conv, stride=self.downsampling),
            activation(),
            conv_bn(self.out_channels, self.expanded_channels, self.conv),
        )


class ResNetBottleNeckBlock(ResNetResidualBlock):
    """1x1 (reduce), 3x3, 1x1 (expand by 4): cheaper than two 3x3 at the same depth (ResNet-50 and deeper).

    The inner width is ``int(out_channels * base_width / 64) * groups``, as in torchvision: ``groups`` makes
    the 3x3 a grouped convolution (ResNeXt) and ``base_width`` widens it (wide ResNets). ``stride_at`` picks
    the convolution that downsamples: the middle 3x3 (torchvision, "v1.5") or the first 1x1 (the paper).
    """

    expansion: ClassVar[int] = 4

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        activation: type[nn.Module] = nn.ReLU,
        groups: int = 1,
        base_width: int = 64,
        stride_at: BottleneckStride = BottleneckStride.MIDDLE_3X3,
        **kwargs: Any,
    ) -> None:
        super().__init__(in_channels, out_channels, activation=activation, **kwargs)
        self.groups, self.base_width = groups, base_width
        width = int(out_channels * base_width / 64) * groups
        on_first = BottleneckStride(stride_at) is BottleneckStride.FIRST_1X1
        stride_first, stride_middle = (self.downsampling, 1) if on_first else (1, self.downsampling)
        self.blocks = nn.Sequential(
            conv_bn(self.in_channels, width, self.conv, kernel_size=1, stride=stride_first),
            activation(),
            conv_bn(width, width, self.conv, kernel_size=3, stride=stride_middle, groups=groups),
            activation(),
            conv_bn(width, self.expanded_channels, self.conv, kernel_size=1),
        )
