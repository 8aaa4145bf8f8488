"""The ResNet family: building blocks, one builder, a registry of named variants, torchvision weights."""

from resnet_inspect.models.blocks import (
    BottleneckStride,
    Conv2dAuto,
    ResidualBlock,
    ResNetBasicBlock,
    ResNetBottleNeckBlock,
    ResNetResidualBlock,
    ShortcutType,
    ZeroPadShortcut,
    conv_bn,
)
from resnet_inspect.models.registry import ModelSpec, get_model, list_models, model_spec, register_model
from resnet_inspect.models.resnet import (
    BlockType,
    ResNet,
    ResNetConfig,
    ResnetDecoder,
    ResNetEncoder,
    ResNetLayer,
    Stem,
    build_resnet,
)
from resnet_inspect.models.weights import load_torchvision_weights, torchvision_key_map

__all__ = [
    "BlockType",
    "BottleneckStride",
    "Conv2dAuto",
    "ModelSpec",
    "ResNet",
    "ResNetBasicBlock",
    "ResNetBottleNeckBlock",
    "ResNetConfig",
    "ResNetEncoder",
    "ResNetLayer",
    "ResNetResidualBlock",
    "ResidualBlock",
    "ResnetDecoder",
    "ShortcutType",
    "Stem",
    "ZeroPadShortcut",
    "build_resnet",
    "conv_bn",
    "get_model",
    "list_models",
    "load_torchvision_weights",
    "model_spec",
    "register_model",
    "torchvision_key_map",
]
