"""ResNet assembled from its blocks: layer (a stage), encoder (stem + stages), decoder (the head), model.

Every registered variant is one ``ResNetConfig`` passed to ``build_resnet``; none is a class of its own.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import torch
from torch import Tensor, nn

from resnet_inspect.models.blocks import (
    BottleneckStride,
    ResNetBasicBlock,
    ResNetBottleNeckBlock,
    ResNetResidualBlock,
    ShortcutType,
)
from resnet_inspect.models.registry import ModelSpec, register_model


class BlockType(StrEnum):
    """The residual block a ResNet is made of."""

    BASIC = "basic"
    BOTTLENECK = "bottleneck"

    @property
    def block_class(self) -> type[ResNetResidualBlock]:
        return ResNetBasicBlock if self is BlockType.BASIC else ResNetBottleNeckBlock


class Stem(StrEnum):
    """The encoder's first layers ("gate"), chosen by the dataset the network was designed for."""

    IMAGENET = "imagenet"  # 7x7/2 conv, BN, ReLU, 3x3/2 max pool: 224 -> 56
    CIFAR = "cifar"  # 3x3/1 conv, BN, ReLU: 32 -> 32

    @property
    def default_input_size(self) -> int:
        return 224 if self is Stem.IMAGENET else 32

    @property
    def default_num_classes(self) -> int:
        return 1000 if self is Stem.IMAGENET else 10


class ResNetLayer(nn.Module):
    """A stage: ``n`` blocks; the first one may downsample and change the width, the others keep the shape."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        block: type[ResNetResidualBlock] = ResNetBasicBlock,
        n: int = 1,
        downsampling: int = 1,
        **block_kwargs: Any,
    ) -> None:
        super().__init__()
        expanded_channels = out_channels * block.expansion
        self.blocks = nn.Sequential(
            block(in_channels, out_channels, downsampling=downsampling, **block_kwargs),
            *[block(expanded_channels, out_channels, downsampling=1, **block_kwargs) for _ in range(n - 1)],
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(x)


class ResNetEncoder(nn.Module):
    """The stem (``gate``) followed by the stages (``layers``); widths grow as the spatial size shrinks.

    Each stage after the first halves the spatial size (stride 2 in its first block), so the feature maps
    can afford more channels at about the same cost per layer.
    """

    def __init__(
        self,
        in_channels: int = 3,
        widths: tuple[int, ...] = (64, 128, 256, 512),
        depths: tuple[int, ...] = (2, 2, 2, 2),
        activation: type[nn.Module] = nn.ReLU,
        block: type[ResNetResidualBlock] = ResNetBasicBlock,
        stem: Stem = Stem.IMAGENET,
        **block_kwargs: Any,
    ) -> None:
        super().__init__()
        if len(widths) != len(depths):
            raise ValueError(f"one width per stage: got {len(widths)} widths and {len(depths)} depths")
        self.widths, self.depths = tuple(widths), tuple(depths)
        self.gate = _gate(Stem(stem), in_channels, widths[0], activation)
        stage_inputs = [widths[0], *(width * block.expansion for width in widths[:-1])]
        self.layers = nn.ModuleList(
            ResNetLayer(
                stage_input,
                width,
                block=block,
                n=depth,
                downsampling=1 if index == 0 else 2,
                activation=activation,
                **block_kwargs,
            )
            for index, (stage_input, width, depth) in enumerate(zip(stage_inputs, widths, depths, strict=True))
        )
        self.out_channels = widths[-1] * block.expansion

    def forward(self, x: Tensor) -> Tensor:
        x = self.gate(x)
        for layer in self.layers:
            x = layer(x)
        return x


def _gate(stem: Stem, in_channels: int, out_channels: int, activation: type[nn.Module]) -> nn.Sequential:
    if stem is Stem.CIFAR:
        return nn.Sequential(
            OrderedDict(
                conv=nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1, bias=False),
                bn=nn.BatchNorm2d(out_channels),
                act=activation(),
            )
        )
    return nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(in_channels, out_channels, kernel_size=7, stride=2, padding=3, bias=False),
            bn=nn.BatchNorm2d(out_channels),
            act=activation(),
            pool=nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        )
    )


class ResnetDecoder(nn.Module):
    """The head: global average pooling to one value per channel, then a fully connected classifier."""

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.avg = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.avg(x)
        x = torch.flatten(x, 1)
        return self.fc(x)


class ResNet(nn.Module):
    """Encoder + decoder. Keyword arguments configure the encoder (widths, depths, block, stem, ...)."""

    def __init__(self, in_channels: int = 3, num_classes: int = 1000, **encoder_kwargs: Any) -> None:
        super().__init__()
        self.encoder = ResNetEncoder(in_channels, **encoder_kwargs)
        self.decoder = ResnetDecoder(self.encoder.out_channels, num_classes)
        self._init_weights()

    def forward(self, x: Tensor) -> Tensor:
        x = self.encoder(x)
        return self.decoder(x)

    def _init_weights(self) -> None:
        """He (kaiming) normal for convolutions, BN as the identity; as torchvision.

        Skipped on the meta device, where weights hold no values (and meta random init would import torch._dynamo).
        """
        for module in self.modules():
            if any(parameter.is_meta for parameter in module.parameters(recurse=False)):
                continue
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)


@dataclass(frozen=True)
class ResNetConfig:
    """Everything that tells one ResNet variant from another.

    ``groups`` and ``width_per_group`` give ResNeXt and wide ResNets (bottleneck only); ``stride_at`` the
    original paper's layout or torchvision's; ``stem`` and ``shortcut`` the CIFAR networks.
    """

    block: BlockType
    depths: tuple[int, ...]
    widths: tuple[int, ...] = (64, 128, 256, 512)
    stem: Stem = Stem.IMAGENET
    shortcut: ShortcutType = ShortcutType.PROJECTION
    stride_at: BottleneckStride = BottleneckStride.MIDDLE_3X3
    groups: int = 1
    width_per_group: int = 64

    def __post_init__(self) -> None:
        if len(self.depths) != len(self.widths):
            raise ValueError(f"one width per stage: got {len(self.widths)} widths and {len(self.depths)} depths")
        if self.block is BlockType.BASIC and (self.groups, self.width_per_group) != (1, 64):
            raise ValueError("basic blocks support only groups=1 and width_per_group=64")


def build_resnet(config: ResNetConfig, in_channels: int = 3, num_classes: int | None = None) -> ResNet:
    """The one builder behind every registered ResNet; ``num_classes`` defaults to the stem's dataset."""
    block_kwargs: dict[str, Any] = {"shortcut": config.shortcut}
    if config.block is BlockType.BOTTLENECK:
        block_kwargs.update(groups=config.groups, base_width=config.width_per_group, stride_at=config.stride_at)
    return ResNet(
        in_channels=in_channels,
        num_classes=config.stem.default_num_classes if num_classes is None else num_classes,
        widths=config.widths,
        depths=config.depths,
        block=config.block.block_class,
        stem=config.stem,
        **block_kwargs,
    )


def parameter_count(config: ResNetConfig, in_channels: int = 3, num_classes: int | None = None) -> int:
    """The parameters ``build_resnet(config, ...)`` creates, counted from the configuration without building it.

    Mirrors the builder layer by layer (the tests check it against the built model for every registered name):
    convolutions carry no bias (a BatchNorm with a weight and a bias follows each), projection shortcuts are a
    1x1 conv and a BatchNorm, zero-pad shortcuts have none, and the head is a Linear with a bias.
    """
    classes = config.stem.default_num_classes if num_classes is None else num_classes
    first = config.widths[0]
    stem_kernel = 7 if config.stem is Stem.IMAGENET else 3
    total = in_channels * first * stem_kernel**2 + 2 * first
    expansion = config.block.block_class.expansion
    channels = first
    for index, (width, depth) in enumerate(zip(config.widths, config.depths, strict=True)):
        expanded = width * expansion
        for position in range(depth):
            strided = index > 0 and position == 0
            if config.block is BlockType.BASIC:
                total += 9 * channels * width + 2 * width + 9 * width * width + 2 * width
            else:
                inner = int(width * config.width_per_group / 64) * config.groups
                total += channels * inner + 2 * inner  # 1x1
                total += 9 * inner * (inner // config.groups) + 2 * inner  # grouped 3x3
                total += inner * expanded + 2 * expanded  # 1x1 expansion
            if (channels != expanded or strided) and config.shortcut is ShortcutType.PROJECTION:
                total += channels * expanded + 2 * expanded
            channels = expanded
    return total + channels * classes + classes


CONFIGS: dict[str, ResNetConfig] = {}  # every registered name's configuration


def _register(name: str, family: str, config: ResNetConfig) -> None:
    """Register ``name`` as a factory that builds ``config``."""
    CONFIGS[name] = config
    spec = ModelSpec(
        name=name,
        family=family,
        block=config.block.value,
        stages=config.depths,
        default_input_size=config.stem.default_input_size,
        default_num_classes=config.stem.default_num_classes,
        params=parameter_count(config),
    )

    @register_model(spec)
    def factory(in_channels: int = 3, num_classes: int = spec.default_num_classes) -> ResNet:
        return build_resnet(config, in_channels=in_channels, num_classes=num_classes)

    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = f"Build {name} ({family}, {config.block.value} blocks {list(config.depths)})."


_BASIC, _BOTTLENECK = BlockType.BASIC, BlockType.BOTTLENECK
_V1 = BottleneckStride.FIRST_1X1

# torchvision layout ("v1.5"): a downsampling bottleneck strides on its 3x3 conv.
_register("resnet18", "resnet", ResNetConfig(_BASIC, (2, 2, 2, 2)))
_register("resnet34", "resnet", ResNetConfig(_BASIC, (3, 4, 6, 3)))
_register("resnet50", "resnet", ResNetConfig(_BOTTLENECK, (3, 4, 6, 3)))
_register("resnet101", "resnet", ResNetConfig(_BOTTLENECK, (3, 4, 23, 3)))
_register("resnet152", "resnet", ResNetConfig(_BOTTLENECK, (3, 8, 36, 3)))
_register("resnext50_32x4d", "resnext", ResNetConfig(_BOTTLENECK, (3, 4, 6, 3), groups=32, width_per_group=4))
_register("resnext101_32x8d", "resnext", ResNetConfig(_BOTTLENECK, (3, 4, 23, 3), groups=32, width_per_group=8))
_register("wide_resnet50_2", "wide-resnet", ResNetConfig(_BOTTLENECK, (3, 4, 6, 3), width_per_group=128))
_register("wide_resnet101_2", "wide-resnet", ResNetConfig(_BOTTLENECK, (3, 4, 23, 3), width_per_group=128))

# The original paper's layout: a downsampling bottleneck strides on its first 1x1 conv.
_register("resnet50_v1", "resnet-v1", ResNetConfig(_BOTTLENECK, (3, 4, 6, 3), stride_at=_V1))
_register("resnet101_v1", "resnet-v1", ResNetConfig(_BOTTLENECK, (3, 4, 23, 3), stride_at=_V1))
_register("resnet152_v1", "resnet-v1", ResNetConfig(_BOTTLENECK, (3, 8, 36, 3), stride_at=_V1))


def _cifar(blocks_per_stage: int) -> ResNetConfig:
    """He et al. 2015, section 4.2: depth 6n + 2, stages of 16/32/64 filters, option-A shortcuts."""
    return ResNetConfig(
        _BASIC,
        (blocks_per_stage,) * 3,
        widths=(16, 32, 64),
        stem=Stem.CIFAR,
        shortcut=ShortcutType.ZERO_PAD,
    )


_register("resnet20", "cifar-resnet", _cifar(3))
_register("resnet32", "cifar-resnet", _cifar(5))
_register("resnet44", "cifar-resnet", _cifar(7))
_register("resnet56", "cifar-resnet", _cifar(9))
_register("resnet110", "cifar-resnet", _cifar(18))
