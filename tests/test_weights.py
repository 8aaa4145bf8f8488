"""Loading torchvision-layout checkpoints, checked against an independent torchvision-layout ResNet."""

from __future__ import annotations

from functools import cache

import pytest
import torch
from torch import Tensor, nn

from resnet_inspect.models import get_model, load_torchvision_weights, torchvision_key_map

# --- an independent ResNet in torchvision's layout and key names -----------------------------------------------


class ReferenceBasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int, downsample: nn.Module | None, **_: object) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ReferenceBottleneck(nn.Module):
    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int,
        downsample: nn.Module | None,
        groups: int = 1,
        width_per_group: int = 64,
        stride_on_conv1: bool = False,
    ) -> None:
        super().__init__()
        width = int(planes * (width_per_group / 64.0)) * groups
        self.conv1 = nn.Conv2d(inplanes, width, 1, stride=stride if stride_on_conv1 else 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(
            width, width, 3, stride=1 if stride_on_conv1 else stride, padding=1, groups=groups, bias=False
        )
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU()
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ReferenceResNet(nn.Module):
    def __init__(self, block: type[nn.Module], layers: list[int], num_classes: int = 1000, **block_options: object):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0], 1, block_options)
        self.layer2 = self._make_layer(block, 128, layers[1], 2, block_options)
        self.layer3 = self._make_layer(block, 256, layers[2], 2, block_options)
        self.layer4 = self._make_layer(block, 512, layers[3], 2, block_options)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)

    def _make_layer(
        self, block: type[nn.Module], planes: int, blocks: int, stride: int, options: dict[str, object]
    ) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample, **options)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, 1, None, **options) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


REFERENCES = {
    "resnet18": lambda: ReferenceResNet(ReferenceBasicBlock, [2, 2, 2, 2]),
    "resnet50": lambda: ReferenceResNet(ReferenceBottleneck, [3, 4, 6, 3]),
    "resnet50_v1": lambda: ReferenceResNet(ReferenceBottleneck, [3, 4, 6, 3], stride_on_conv1=True),
    "resnext50_32x4d": lambda: ReferenceResNet(ReferenceBottleneck, [3, 4, 6, 3], groups=32, width_per_group=4),
}


@cache
def randomised_reference(name: str) -> nn.Module:
    """A reference model with random weights and random BatchNorm statistics, in eval mode; shared, never modified."""
    torch.manual_seed(0)
    reference = REFERENCES[name]()
    for module in reference.modules():
        if isinstance(module, nn.BatchNorm2d):
            nn.init.uniform_(module.weight, 0.5, 1.5)
            nn.init.normal_(module.bias, std=0.1)
            module.running_mean.normal_(std=0.1)
            module.running_var.uniform_(0.5, 1.5)
            module.num_batches_tracked.fill_(7)
    return reference.eval()


# --- loading ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(REFERENCES))
def test_loaded_model_gives_the_reference_output(name: str) -> None:
    reference = randomised_reference(name)
    model = load_torchvision_weights(get_model(name), reference.state_dict()).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected_output = reference(x)
        assert expected_output.std() > 0
        torch.testing.assert_close(model(x), expected_output, atol=1e-5, rtol=0)


def test_stride_placement_is_not_in_the_checkpoint_so_v1_weights_need_the_v1_model() -> None:
    reference = randomised_reference("resnet50_v1")
    model = load_torchvision_weights(get_model("resnet50"), reference.state_dict()).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert not torch.allclose(model(x), reference(x), atol=1e-3)


def test_loading_copies_batch_norm_buffers() -> None:
    reference = randomised_reference("resnet18")
    model = load_torchvision_weights(get_model("resnet18"), reference.state_dict())
    torch.testing.assert_close(model.encoder.gate.bn.running_var, reference.bn1.running_var)
    assert model.encoder.layers[1].blocks[0].shortcut.bn.num_batches_tracked.item() == 7


def test_load_returns_the_same_model() -> None:
    model = get_model("resnet18")
    assert load_torchvision_weights(model, randomised_reference("resnet18").state_dict()) is model


def test_key_map_follows_torchvision_names() -> None:
    key_map = torchvision_key_map(get_model("resnet50"))
    assert key_map["encoder.gate.conv.weight"] == "conv1.weight"
    assert key_map["encoder.gate.bn.running_mean"] == "bn1.running_mean"
    assert key_map["encoder.layers.0.blocks.0.blocks.0.conv.weight"] == "layer1.0.conv1.weight"
    assert key_map["encoder.layers.0.blocks.0.blocks.4.bn.bias"] == "layer1.0.bn3.bias"
    assert key_map["encoder.layers.3.blocks.0.shortcut.conv.weight"] == "layer4.0.downsample.0.weight"
    assert (
        key_map["encoder.layers.3.blocks.0.shortcut.bn.num_batches_tracked"]
        == "layer4.0.downsample.1.num_batches_tracked"
    )
    assert key_map["decoder.fc.bias"] == "fc.bias"


def test_key_map_covers_the_torchvision_state_dict_exactly() -> None:
    key_map = torchvision_key_map(get_model("resnext50_32x4d"))
    assert sorted(key_map.values()) == sorted(randomised_reference("resnext50_32x4d").state_dict())


def test_missing_keys_are_named() -> None:
    state_dict = randomised_reference("resnet18").state_dict()
    del state_dict["layer2.0.downsample.0.weight"]
    with pytest.raises(ValueError, match=r"missing keys \(1\): layer2\.0\.downsample\.0\.weight"):
        load_torchvision_weights(get_model("resnet18"), state_dict)


def test_unexpected_keys_are_named() -> None:
    state_dict = randomised_reference("resnet18").state_dict()
    state_dict["head.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"unexpected keys \(1\): head\.weight"):
        load_torchvision_weights(get_model("resnet18"), state_dict)


def test_shape_mismatches_are_named_with_both_shapes() -> None:
    state_dict = randomised_reference("resnet18").state_dict()
    with pytest.raises(
        ValueError, match=r"shape mismatches \(2\): fc\.weight \(checkpoint \(1000, 512\), model \(10, 512\)\)"
    ):
        load_torchvision_weights(get_model("resnet18", num_classes=10), state_dict)


def test_checkpoint_of_another_depth_is_refused_naming_every_missing_key() -> None:
    state_dict = randomised_reference("resnet18").state_dict()
    expected = torchvision_key_map(get_model("resnet34")).values()
    missing = [key for key in expected if key not in state_dict and not key.endswith("num_batches_tracked")]
    assert len(missing) > 10  # more than any shortened list would show
    with pytest.raises(ValueError, match=rf"missing keys \({len(missing)}\): ") as refused:
        load_torchvision_weights(get_model("resnet34"), state_dict)
    assert all(key in str(refused.value) for key in missing)
    assert "more" not in str(refused.value)


def test_refused_checkpoint_leaves_the_model_unchanged() -> None:
    model = get_model("resnet18")
    before = {key: tensor.clone() for key, tensor in model.state_dict().items()}
    state_dict = randomised_reference("resnet18").state_dict()
    state_dict["extra"] = torch.zeros(1)
    with pytest.raises(ValueError):
        load_torchvision_weights(model, state_dict)
    assert all(torch.equal(before[key], tensor) for key, tensor in model.state_dict().items())


def test_checkpoint_without_num_batches_tracked_loads() -> None:
    reference = randomised_reference("resnet18")
    state_dict = {key: t for key, t in reference.state_dict().items() if not key.endswith("num_batches_tracked")}
    model = load_torchvision_weights(get_model("resnet18"), state_dict).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), atol=1e-5, rtol=0)


def test_a_model_that_is_not_a_resnet_is_refused() -> None:
    with pytest.raises(TypeError, match="expected a resnet_inspect ResNet"):
        load_torchvision_weights(nn.Linear(1, 1), {})
