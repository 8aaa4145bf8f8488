"""The ResNet family: blocks, layouts, registry and the published parameter counts."""

from __future__ import annotations

import math
from functools import cache

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from resnet_inspect.models import (
    BlockType,
    Conv2dAuto,
    ModelSpec,
    ResidualBlock,
    ResNet,
    ResNetBasicBlock,
    ResNetBottleNeckBlock,
    ResNetConfig,
    ResnetDecoder,
    ResNetLayer,
    ZeroPadShortcut,
    conv_bn,
    get_model,
    list_models,
    model_spec,
    register_model,
)

# torchvision weights metadata `num_params`; He et al. 2015 section 4.2 for the CIFAR networks.
PUBLISHED_PARAMETERS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
    "resnext50_32x4d": 25_028_904,
    "resnext101_32x8d": 88_791_336,
    "wide_resnet50_2": 68_883_240,
    "wide_resnet101_2": 126_886_696,
    "resnet50_v1": 25_557_032,
    "resnet101_v1": 44_549_160,
    "resnet152_v1": 60_192_808,
    "resnet20": 269_722,
    "resnet32": 464_154,
    "resnet44": 658_586,
    "resnet56": 853_018,
    "resnet110": 1_727_962,
}


@cache
def meta_model(name: str) -> nn.Module:
    """Build on the meta device (shapes and parameters, no storage); built once, never modified by a test."""
    with torch.device("meta"):
        return get_model(name)


def parameter_count(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


def stage_outputs(model: ResNet, x: torch.Tensor) -> list[tuple[int, ...]]:
    """Shape after each stage of the encoder."""
    shapes = []
    x = model.encoder.gate(x)
    for layer in model.encoder.layers:
        x = layer(x)
        shapes.append(tuple(x.shape[1:]))
    return shapes


# --- registry -----------------------------------------------------------------------------------------------


def test_list_models_gives_the_seventeen_variants_in_registration_order() -> None:
    assert list_models() == list(PUBLISHED_PARAMETERS)


@pytest.mark.parametrize("name", list(PUBLISHED_PARAMETERS))
def test_parameter_count_matches_the_published_value(name: str) -> None:
    assert parameter_count(meta_model(name)) == PUBLISHED_PARAMETERS[name]


# The deepest variants only repeat blocks the others already cover; a meta forward costs about 2 ms per layer.
DEEP_VARIANTS = {
    "resnet101",
    "resnet152",
    "resnext101_32x8d",
    "wide_resnet101_2",
    "resnet101_v1",
    "resnet152_v1",
    "resnet110",
}


@pytest.mark.parametrize(
    "name",
    [pytest.param(name, marks=pytest.mark.slow) if name in DEEP_VARIANTS else name for name in PUBLISHED_PARAMETERS],
)
def test_forward_at_the_default_input_size_gives_one_logit_per_default_class(name: str) -> None:
    spec = model_spec(name)
    model = meta_model(name)
    with torch.device("meta"):
        output = model(torch.empty(2, 3, spec.default_input_size, spec.default_input_size))
    assert output.shape == (2, spec.default_num_classes)


def test_model_spec_describes_an_imagenet_variant() -> None:
    assert model_spec("resnext50_32x4d") == ModelSpec(
        name="resnext50_32x4d",
        family="resnext",
        block="bottleneck",
        stages=(3, 4, 6, 3),
        default_input_size=224,
        default_num_classes=1000,
        params=25_028_904,
    )


def test_model_spec_describes_a_cifar_variant() -> None:
    assert model_spec("resnet56") == ModelSpec(
        name="resnet56",
        family="cifar-resnet",
        block="basic",
        stages=(9, 9, 9),
        default_input_size=32,
        default_num_classes=10,
        params=853_018,
    )


@pytest.mark.parametrize(
    ("name", "family"),
    [("resnet34", "resnet"), ("resnet152_v1", "resnet-v1"), ("wide_resnet101_2", "wide-resnet")],
)
def test_model_spec_names_the_family(name: str, family: str) -> None:
    assert model_spec(name).family == family


@pytest.mark.parametrize("name", list(PUBLISHED_PARAMETERS))
def test_stages_of_the_built_model_match_its_spec(name: str) -> None:
    model = meta_model(name)
    assert tuple(len(layer.blocks) for layer in model.encoder.layers) == model_spec(name).stages


def test_in_channels_and_num_classes_reach_the_stem_and_the_classifier() -> None:
    model = get_model("resnet18", in_channels=1, num_classes=7)
    assert model.encoder.gate.conv.in_channels == 1
    assert model.decoder.fc.out_features == 7
    assert model(torch.randn(2, 1, 64, 64)).shape == (2, 7)


def test_cifar_resnet_classifies_a_real_cifar_sized_batch_into_ten_classes() -> None:
    model = get_model("resnet20")
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_resnet18_classifies_a_real_small_image() -> None:
    model = get_model("resnet18").eval()
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1000)


def test_unknown_name_raises_value_error_naming_the_closest_registered_names() -> None:
    with pytest.raises(ValueError, match=r"unknown model 'resnet5'; did you mean .*resnet50") as error:
        get_model("resnet5")
    assert "resnet56" in str(error.value)


def test_unknown_name_with_nothing_close_lists_every_registered_name() -> None:
    with pytest.raises(ValueError, match="unknown model 'vgg16'; available: resnet18, resnet34"):
        get_model("vgg16")


def test_model_spec_of_an_unknown_name_raises_value_error() -> None:
    with pytest.raises(ValueError, match="unknown model 'resnet19'"):
        model_spec("resnet19")


def test_registering_a_taken_name_is_refused_and_keeps_the_original() -> None:
    taken = ModelSpec("resnet18", "resnet", "basic", (1,), 224, 1000)
    with pytest.raises(ValueError, match="'resnet18' is already registered"):
        register_model(taken)(lambda in_channels=3, num_classes=1000: nn.Identity())
    assert parameter_count(meta_model("resnet18")) == PUBLISHED_PARAMETERS["resnet18"]
    assert list_models() == list(PUBLISHED_PARAMETERS)


def test_models_build_on_the_meta_device_without_real_storage() -> None:
    model = meta_model("wide_resnet101_2")
    assert all(parameter.is_meta for parameter in model.parameters())


# --- module names other analyses rely on ----------------------------------------------------------------------


def child_names(module: nn.Module) -> list[str]:
    return [name for name, _ in module.named_children()]


def test_resnet_is_an_encoder_followed_by_a_decoder() -> None:
    assert child_names(meta_model("resnet18")) == ["encoder", "decoder"]


def test_imagenet_gate_is_a_7x7_stride_2_conv_bn_relu_and_3x3_stride_2_max_pool() -> None:
    gate = meta_model("resnet50").encoder.gate
    assert child_names(gate) == ["conv", "bn", "act", "pool"]
    assert (gate.conv.kernel_size, gate.conv.stride, gate.conv.padding) == ((7, 7), (2, 2), (3, 3))
    assert gate.conv.bias is None
    assert isinstance(gate.bn, nn.BatchNorm2d) and isinstance(gate.act, nn.ReLU)
    assert isinstance(gate.pool, nn.MaxPool2d)
    assert (gate.pool.kernel_size, gate.pool.stride, gate.pool.padding) == (3, 2, 1)


def test_cifar_gate_is_a_3x3_stride_1_conv_with_16_filters_and_no_pool() -> None:
    gate = meta_model("resnet20").encoder.gate
    assert child_names(gate) == ["conv", "bn", "act"]
    assert (gate.conv.kernel_size, gate.conv.stride, gate.conv.padding) == ((3, 3), (1, 1), (1, 1))
    assert gate.conv.out_channels == 16


def test_encoder_layers_hold_one_non_empty_resnet_layer_per_stage() -> None:
    layers = meta_model("resnet34").encoder.layers
    assert isinstance(layers, nn.ModuleList)
    assert all(isinstance(layer, ResNetLayer) and child_names(layer) == ["blocks"] for layer in layers)
    assert [len(layer.blocks) for layer in layers] == [3, 4, 6, 3]


def test_residual_block_children_are_blocks_shortcut_and_activation() -> None:
    assert child_names(meta_model("resnet50").encoder.layers[1].blocks[0]) == ["blocks", "shortcut", "activation"]


def test_decoder_is_global_average_pool_then_fully_connected() -> None:
    decoder = meta_model("resnet50").decoder
    assert isinstance(decoder, ResnetDecoder)
    assert child_names(decoder) == ["avg", "fc"]
    assert isinstance(decoder.avg, nn.AdaptiveAvgPool2d) and decoder.avg.output_size == 1
    assert (decoder.fc.in_features, decoder.fc.out_features) == (2048, 1000)


def test_conv_bn_is_a_sequential_of_conv_and_bn() -> None:
    unit = conv_bn(4, 8, Conv2dAuto, kernel_size=3, bias=False)
    assert child_names(unit) == ["conv", "bn"]
    assert isinstance(unit.conv, Conv2dAuto) and unit.bn.num_features == 8


# --- blocks ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kernel_size", "padding"), [(1, (0, 0)), (3, (1, 1)), (7, (3, 3)), ((1, 5), (0, 2)), (4, (2, 2))]
)
def test_conv2d_auto_pads_by_half_the_kernel(kernel_size: int | tuple[int, int], padding: tuple[int, int]) -> None:
    assert Conv2dAuto(1, 1, kernel_size).padding == padding


@settings(max_examples=25, deadline=None)
@given(kernel=st.sampled_from([1, 3, 5, 7]), size=st.integers(min_value=1, max_value=16))
def test_conv2d_auto_keeps_the_size_for_odd_kernels_at_unit_stride(kernel: int, size: int) -> None:
    # Relation 3 (Dumoulin & Visin): o = i when p = floor(k / 2), k odd, s = 1.
    assert Conv2dAuto(1, 1, kernel)(torch.zeros(1, 1, size, size)).shape[-2:] == (size, size)


def test_conv2d_auto_grows_the_size_by_one_for_even_kernels() -> None:
    assert Conv2dAuto(1, 1, 2)(torch.zeros(1, 1, 8, 8)).shape[-2:] == (9, 9)


def test_residual_block_applies_relu_after_the_sum() -> None:
    torch.manual_seed(0)
    block = ResNetBasicBlock(8, 8).eval()
    x = torch.randn(2, 8, 6, 6)
    pre_activation = block.blocks(x) + x
    assert isinstance(block.activation, nn.ReLU)
    assert pre_activation.min() < 0
    torch.testing.assert_close(block(x), torch.relu(pre_activation))


def test_every_residual_block_of_a_model_ends_with_a_relu_module() -> None:
    blocks = [module for module in meta_model("resnet50").modules() if isinstance(module, ResidualBlock)]
    assert len(blocks) == 16
    assert all(isinstance(block.activation, nn.ReLU) for block in blocks)


def test_residual_block_without_a_residual_branch_is_relu_of_twice_the_input() -> None:
    x = torch.tensor([[[[-1.0, 2.0]]]])
    torch.testing.assert_close(ResidualBlock(1, 1)(x), torch.tensor([[[[0.0, 4.0]]]]))


def test_basic_block_strides_on_its_first_3x3() -> None:
    block = meta_model("resnet18").encoder.layers[1].blocks[0]
    assert [block.blocks[i].conv.stride for i in (0, 2)] == [(2, 2), (1, 1)]
    assert all(block.blocks[i].conv.kernel_size == (3, 3) for i in (0, 2))


def test_torchvision_layout_bottleneck_strides_on_its_3x3() -> None:
    block = meta_model("resnet50").encoder.layers[1].blocks[0]
    assert [block.blocks[i].conv.kernel_size for i in (0, 2, 4)] == [(1, 1), (3, 3), (1, 1)]
    assert [block.blocks[i].conv.stride for i in (0, 2, 4)] == [(1, 1), (2, 2), (1, 1)]


@pytest.mark.parametrize("name", ["resnet50_v1", "resnet101_v1", "resnet152_v1"])
def test_original_layout_bottleneck_strides_on_its_first_1x1(name: str) -> None:
    block = meta_model(name).encoder.layers[1].blocks[0]
    assert [block.blocks[i].conv.stride for i in (0, 2, 4)] == [(2, 2), (1, 1), (1, 1)]


def test_projection_shortcut_is_a_1x1_conv_bn_with_the_block_stride() -> None:
    shortcut = meta_model("resnet50").encoder.layers[2].blocks[0].shortcut
    assert child_names(shortcut) == ["conv", "bn"]
    assert (shortcut.conv.kernel_size, shortcut.conv.stride, shortcut.conv.bias) == ((1, 1), (2, 2), None)
    assert (shortcut.conv.in_channels, shortcut.conv.out_channels) == (512, 1024)


def test_first_bottleneck_projects_the_stem_to_four_times_the_width_without_stride() -> None:
    layer = meta_model("resnet50").encoder.layers[0]
    assert (layer.blocks[0].shortcut.conv.out_channels, layer.blocks[0].shortcut.conv.stride) == (256, (1, 1))
    assert isinstance(layer.blocks[1].shortcut, nn.Identity)


def test_shortcut_is_the_identity_when_the_shape_is_kept() -> None:
    assert isinstance(meta_model("resnet18").encoder.layers[0].blocks[0].shortcut, nn.Identity)


def test_every_convolution_has_no_bias() -> None:
    convs = [module for module in meta_model("resnext50_32x4d").modules() if isinstance(module, nn.Conv2d)]
    assert convs and all(conv.bias is None for conv in convs)


@pytest.mark.parametrize(
    ("name", "width", "groups"),
    [("resnet50", 64, 1), ("resnext50_32x4d", 128, 32), ("resnext101_32x8d", 256, 32), ("wide_resnet50_2", 128, 1)],
)
def test_bottleneck_inner_width_is_planes_times_width_per_group_over_64_times_groups(
    name: str, width: int, groups: int
) -> None:
    middle = meta_model(name).encoder.layers[0].blocks[0].blocks[2].conv
    assert (middle.in_channels, middle.out_channels, middle.groups) == (width, width, groups)


def test_bottleneck_expands_its_output_four_times() -> None:
    block = ResNetBottleNeckBlock(256, 64)
    assert (ResNetBottleNeckBlock.expansion, block.expanded_channels) == (4, 256)
    assert isinstance(block.shortcut, nn.Identity)


@pytest.mark.parametrize("name", ["resnet50", "resnet50_v1", "resnext50_32x4d"])
def test_imagenet_stages_halve_the_size_from_56_to_7(name: str) -> None:
    model = meta_model(name)
    with torch.device("meta"):
        shapes = stage_outputs(model, torch.empty(1, 3, 224, 224))
    assert shapes == [(256, 56, 56), (512, 28, 28), (1024, 14, 14), (2048, 7, 7)]


def test_cifar_stages_are_16_32_64_filters_at_32_16_8() -> None:
    shapes = stage_outputs(get_model("resnet20"), torch.randn(1, 3, 32, 32))
    assert shapes == [(16, 32, 32), (32, 16, 16), (64, 8, 8)]


# --- option A shortcut -------------------------------------------------------------------------------------------


def test_zero_pad_shortcut_has_no_parameters_and_no_children() -> None:
    shortcut = ZeroPadShortcut(16, 32, stride=2)
    assert list(shortcut.parameters()) == [] and list(shortcut.children()) == []


def test_zero_pad_shortcut_subsamples_and_pads_the_new_channels_evenly_with_zeros() -> None:
    x = torch.randn(2, 16, 8, 8)
    output = ZeroPadShortcut(16, 32, stride=2)(x)
    assert output.shape == (2, 32, 4, 4)
    torch.testing.assert_close(output[:, 8:24], x[:, :, ::2, ::2])
    assert not output[:, :8].any() and not output[:, 24:].any()


def test_cifar_resnets_use_zero_pad_shortcuts_only_where_the_shape_changes() -> None:
    model = get_model("resnet20")
    shortcuts = [module.shortcut for module in model.modules() if isinstance(module, ResidualBlock)]
    assert [type(shortcut).__name__ for shortcut in shortcuts].count("ZeroPadShortcut") == 2
    assert all(isinstance(s, (ZeroPadShortcut, nn.Identity)) for s in shortcuts)
    assert sum(parameter_count(shortcut) for shortcut in shortcuts) == 0


# --- configuration and initialisation ------------------------------------------------------------------------------


def test_config_refuses_groups_on_basic_blocks() -> None:
    with pytest.raises(ValueError, match="basic blocks"):
        ResNetConfig(BlockType.BASIC, (2, 2, 2, 2), groups=32)


def test_config_refuses_a_depth_without_a_width() -> None:
    with pytest.raises(ValueError, match="one width per stage"):
        ResNetConfig(BlockType.BASIC, (2, 2, 2))


def test_batch_norm_starts_as_the_identity() -> None:
    norms = [module for module in get_model("resnet20").modules() if isinstance(module, nn.BatchNorm2d)]
    assert all(bool((bn.weight == 1).all()) and not bn.bias.any() for bn in norms)


def test_convolutions_start_with_kaiming_normal_fan_out_weights() -> None:
    torch.manual_seed(0)
    conv = get_model("resnet20").encoder.layers[2].blocks[1].blocks[0].conv  # 64 -> 64, 3x3
    expected_std = math.sqrt(2.0 / (64 * 3 * 3))
    assert conv.weight.std().item() == pytest.approx(expected_std, rel=0.05)


@pytest.mark.parametrize("name", list_models())
def test_the_listed_parameter_count_is_the_built_models_own(name):
    """`list` counts parameters from the configuration, without building: the count must be the model's."""
    from resnet_inspect.models.resnet import CONFIGS, parameter_count

    with torch.device("meta"):
        default = get_model(name)
        other = get_model(name, in_channels=1, num_classes=7)
    assert model_spec(name).params == sum(p.numel() for p in default.parameters())
    assert parameter_count(CONFIGS[name], 1, 7) == sum(p.numel() for p in other.parameters())
