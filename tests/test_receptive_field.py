"""Receptive fields: Distill 2019's recurrence over the dataflow graph, published ResNet values, the gradient check."""

from __future__ import annotations

import functools
import struct
import zlib
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from torch import nn

from resnet_inspect.analysis.empirical import effective_receptive_field, empirical_check, support_check
from resnet_inspect.analysis.receptive_field import NodeField, analyze_receptive_field, layer_fields
from resnet_inspect.capture.loader import load_model
from resnet_inspect.capture.trace import capture
from resnet_inspect.errors import InputTooSmallError
from resnet_inspect.models import list_models, model_spec
from resnet_inspect.render.heatmap import erf_heatmap, png_bytes

TORCHVISION_LAYOUT = str(Path(__file__).parent / "fixtures" / "tv_resnet.py")  # factories resnet18..101

# Stage outputs with the stem's max pool counted (reference.md: samson-wang's gist, DeLF-pytorch issues 15, 22).
PUBLISHED_V15 = {
    "resnet18": (43, 99, 211, 435),
    "resnet34": (59, 179, 547, 899),
    "resnet50": (35, 91, 267, 427),
    "resnet101": (35, 91, 811, 971),
}
# The original layout, stride on the first 1x1 (Distill 2019's table).
PUBLISHED_V1 = {"resnet50_v1": 483, "resnet101_v1": 1027, "resnet152_v1": 1507}


@functools.cache
def analysed(spec: str, size: int | None = None):
    model, name = load_model(spec)
    side = size or (model_spec(spec).default_input_size if ":" not in spec else 224)
    captured = capture(model, side, model_name=name)
    return model, captured, analyze_receptive_field(captured)


def sizes(result) -> list[int]:
    return [stage.size[0] for stage in result.stages]


def analyse_module(module: nn.Module, size: int | tuple[int, int] = 32, in_channels: int = 1):
    captured = capture(module, size, in_channels=in_channels)
    return captured, analyze_receptive_field(captured)


# ----------------------------------------------------------------------------------- published values


@pytest.mark.parametrize("name", sorted(PUBLISHED_V15))
def test_registry_resnets_match_the_published_stage_fields(name):
    _, _, result = analysed(name)
    assert [stage.name for stage in result.stages] == ["stem", "layers.0", "layers.1", "layers.2", "layers.3",
                                                       "output"]
    assert sizes(result)[1:5] == list(PUBLISHED_V15[name])
    assert result.stages[4].stride == (32, 32)
    assert result.stages[0].modules == ("encoder.gate",)
    assert result.output == result.stages[4].field


@pytest.mark.parametrize("name", sorted(PUBLISHED_V15))
def test_torchvision_layout_outside_the_registry_matches_the_published_stage_fields(name):
    _, _, result = analysed(f"{TORCHVISION_LAYOUT}:{name}")
    assert [stage.name for stage in result.stages] == ["stem", "layer1", "layer2", "layer3", "layer4", "output"]
    assert result.stages[0].modules == ("conv1", "bn1", "relu", "maxpool")
    assert sizes(result) == [11, *PUBLISHED_V15[name], PUBLISHED_V15[name][-1]]
    assert result.output.stride == (32, 32)


@pytest.mark.parametrize("name", sorted(PUBLISHED_V1))
def test_original_layout_matches_distill(name):
    _, _, result = analysed(name)
    assert result.output.size == (PUBLISHED_V1[name],) * 2
    assert result.output.stride == (32, 32)


def test_stem_counts_the_max_pool():
    _, _, result = analysed("resnet18")
    stem = result.stages[0]
    # 7x7/2 conv (r 7, S 2, P 3) then 3x3/2 pool: r = 7 + 2 * 2, S = 4, P = 3 + 1 * 2.
    assert (stem.size, stem.stride, stem.padding, stem.output_size) == ((11, 11), (4, 4), (5, 5), (56, 56))


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_is_aligned_with_a_row_per_stage(name):
    _, _, result = analysed(name)
    assert result.aligned and not result.reasons
    assert len(result.stages) == 1 + len(model_spec(name).stages) + 1
    assert all(stage.field is not None for stage in result.stages)
    strides = [stage.stride[0] for stage in result.stages[1:-1]]
    assert strides == ([1, 2, 4] if model_spec(name).family == "cifar-resnet" else [4, 8, 16, 32])


def test_cifar_zero_pad_shortcut_is_aligned_with_its_residual_branch():
    # resnet20: 3x3 stem, then 3 basic blocks per stage; option-A shortcuts subsample with x[:, :, ::2, ::2].
    _, captured, result = analysed("resnet20")
    subsample = next(node for node in captured.nodes if node.type == "getitem")
    assert result.fields[subsample.id].stride == (2, 2)
    assert sizes(result) == [3, 15, 37, 81, 81]
    assert result.output.stride == (4, 4)


# ------------------------------------------------------------------------------- per node and per layer


def test_centre_of_unit_zero_follows_distill():
    field = NodeField(size=(11, 11), stride=(4, 4), padding=(5, 5))
    assert field.centre == (0.0, 0.0)  # -P + (r - 1) / 2
    assert field.interval((2, 3)) == ((3, 13), (7, 17))  # [-P + uS, -P + uS + r - 1]
    assert NodeField((4, 4), (1, 1), (0, 0)).centre == (1.5, 1.5)


def test_layer_fields_give_every_module_call_its_output_field():
    _, captured, result = analysed("resnet18")
    fields = layer_fields(captured, result)
    by_name = {layer.name: fields[layer.index] for layer in captured.layers}
    assert set(fields) == {layer.index for layer in captured.layers}
    def triple(field):
        return {key: field[key] for key in ("size", "stride", "padding", "global_context")}

    assert triple(by_name["encoder.gate.conv"]) == {"size": [7, 7], "stride": [2, 2], "padding": [3, 3],
                                                    "global_context": False}
    assert triple(by_name["encoder.gate"]) == {"size": [11, 11], "stride": [4, 4], "padding": [5, 5],
                                               "global_context": False}
    assert by_name["encoder"] == result.to_json()
    assert triple(by_name["encoder"]) == {"size": [435, 435], "stride": [32, 32], "padding": [217, 217],
                                          "global_context": False}


def test_global_pool_and_head_cover_the_whole_input():
    _, captured, result = analysed("resnet18")
    head = result.fields[captured.output_node]
    assert head.reduced
    assert head.covers_input(result.input_size, (1, 1))
    assert result.output_node < captured.output_node  # the encoder output comes before the global pool


def test_functional_residual_add_is_followed():
    _, captured, result = analysed("resnet18")
    adds = [node for node in captured.nodes if node.type == "add"]
    assert len(adds) == 8 and all(len(node.inputs) == 2 for node in adds)
    assert all(result.fields[node.id] is not None for node in adds)


# ------------------------------------------------------------------------------------ rules on small nets


class Shifted(nn.Module):
    """A residual whose shortcut is shifted one pixel: paths with equal stride but different centres."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = F.pad(x, (1, 0, 1, 0))[:, :, :-1, :-1]
        return self.conv(x) + shortcut


def test_dilated_convolution_uses_the_effective_kernel():
    _, result = analyse_module(nn.Sequential(nn.Conv2d(1, 1, 3, dilation=2, padding=2), nn.Conv2d(1, 1, 3, stride=2)))
    # k' = d(k - 1) + 1 = 5; then r = 5 + (3 - 1) * 1 = 7.
    assert result.output == NodeField((7, 7), (2, 2), (2, 2))


def test_ceil_mode_pool_keeps_size_stride_and_padding():
    floor = analyse_module(nn.Sequential(nn.Conv2d(1, 1, 3), nn.MaxPool2d(3, 2)), 12)[1]
    ceil = analyse_module(nn.Sequential(nn.Conv2d(1, 1, 3), nn.MaxPool2d(3, 2, ceil_mode=True)), 12)[1]
    assert ceil.output == floor.output == NodeField((5, 5), (2, 2), (0, 0))  # r = 3 + (3 - 1) * 1
    assert (floor.stages[-1].output_size, ceil.stages[-1].output_size) == ((4, 4), (5, 5))


def test_a_merge_with_equal_strides_and_different_centres_is_the_union_of_the_intervals():
    captured, result = analyse_module(Shifted(), 16)
    # conv: [-1 + u, u + 1]; shortcut shifted by one pixel: [u - 1, u - 1]. Their hull is [u - 1, u + 1].
    assert not result.aligned and result.union
    assert result.output == NodeField((3, 3), (1, 1), (1, 1), union=True)
    assert not result.reasons
    assert support_check(captured, result).agrees is True


def test_a_merge_of_different_strides_is_reported_not_guessed():
    class TwoStrides(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.down = nn.Conv2d(1, 1, 3, stride=2, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.down(x) + x[:, :, :8, :8]

    _, result = analyse_module(TwoStrides(), 16)
    assert not result.aligned and not result.union
    assert result.output is None
    assert result.reasons[0].startswith("unaligned merge at add")
    assert result.stages[-1].reason == result.reasons[0]


def test_transposed_convolution_has_a_rational_stride():
    _captured, result = analyse_module(nn.Sequential(nn.Conv2d(1, 1, 3), nn.ConvTranspose2d(1, 1, 2, stride=2)), 16)
    # r' = r + (k - 1) S / s = 3 + 1/2, S' = 1/2, P' = P + (k - 1 - p) S / s = 1/2: exact at every other unit.
    half = Fraction(1, 2)
    assert result.output == NodeField((3 + half,) * 2, (half,) * 2, (half,) * 2, exact=False)
    assert result.aligned and not result.reasons
    assert "varies from pixel to pixel" in result.stages[-1].reason


def test_adaptive_pool_is_a_plain_pool_only_for_an_exact_division():
    even = analyse_module(nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Conv2d(1, 1, 1)), 16)[1]
    plain = analyse_module(nn.Sequential(nn.AvgPool2d(4), nn.Conv2d(1, 1, 1)), 16)[1]
    uneven = analyse_module(nn.Sequential(nn.AdaptiveAvgPool2d(3), nn.Conv2d(1, 1, 1)), 16)[1]
    assert even.output == plain.output == NodeField((4, 4), (4, 4), (0, 0))
    assert uneven.output is None and "unequal size" in uneven.reasons[0]


def test_explicit_padding_and_subsampling_shift_the_field():
    class PadThenSlice(nn.Module):
        def forward(self, x):
            return F.pad(x, (2, 0, 2, 0))[:, :, 1::2, 1::2]

    _, result = analyse_module(PadThenSlice(), 16)
    # PAD adds p = 2; SUBSAMPLE starting at 1 is stride 2 with padding -1: P = 2 - 1 = 1.
    assert result.output == NodeField((1, 1), (2, 2), (1, 1))


def test_rectangular_input_and_kernels_are_per_axis():
    _, result = analyse_module(nn.Sequential(nn.Conv2d(1, 1, (1, 5), stride=(1, 2), padding=(0, 2))), (8, 20))
    assert result.output == NodeField((1, 5), (1, 2), (0, 2))
    assert result.stages[-1].output_size == (8, 10)


# ------------------------------------------------------------------------------------------ gradient check


def test_support_check_agrees_on_the_torchvision_layout_outside_the_registry():
    model, captured, result = analysed(f"{TORCHVISION_LAYOUT}:resnet18")
    check = empirical_check(model, captured, result)
    assert check.agrees is True
    assert all(stage.inside for stage in check.stages)  # measured unclipped: the field fits in the input
    assert [stage.measured_size[0] for stage in check.stages] == [11, 43, 99, 211, 435, 435]


def test_support_check_finds_a_wrong_field():
    model, _, _ = analysed("resnet20")
    captured = capture(model, 100)
    honest = analyze_receptive_field(captured)
    stages = list(honest.stages)
    stages[1] = replace(stages[1], field=NodeField((13, 13), (1, 1), (6, 6)))  # layers.0 really sees 15
    lying = replace(honest, stages=tuple(stages))
    verdicts = [stage.agrees for stage in support_check(captured, lying).stages]
    assert verdicts == [True, False, True, True, True]


@pytest.mark.parametrize("module", [
    nn.Sequential(nn.Conv2d(1, 1, 3), nn.MaxPool2d(3, 2, ceil_mode=True), nn.Conv2d(1, 1, 3, dilation=3)),
    nn.Sequential(nn.AdaptiveAvgPool2d(10), nn.Conv2d(1, 1, 2, stride=2, padding=1)),
])
def test_support_check_agrees_on_pooling_variants(module):
    captured, result = analyse_module(module, 40)
    assert support_check(captured, result).agrees is True


def test_support_check_tolerates_a_sparse_field_only_where_the_input_clips_it():
    # Strided 1x1 convolutions leave gaps: unit 0's field [-12, 36] has real taps only at 12, 24 and 36.
    module = nn.Sequential(nn.Conv2d(1, 1, 1, stride=12), nn.Conv2d(1, 1, 3, stride=3, padding=1, dilation=2))
    captured, result = analyse_module(module, 40)
    check = support_check(captured, result).stages[-1]
    assert (check.unit, check.field[0], check.analytic[0], check.measured[0]) == ((0, 0), (-12, 36), (0, 36), (12, 36))
    assert check.agrees is True and not check.inside


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(st.lists(st.tuples(st.integers(1, 5), st.integers(1, 2), st.integers(0, 2), st.integers(1, 2)),
                min_size=1, max_size=4))
def test_support_of_the_gradient_is_the_analytic_field_for_any_conv_chain(layers):
    module = nn.Sequential(*(nn.Conv2d(1, 1, k, stride=s, padding=min(p, k // 2), dilation=d) for k, s, p, d in layers))
    try:
        captured, result = analyse_module(module, 64)
    except InputTooSmallError:
        assume(False)  # a chain whose last window no longer fits a 64x64 input
    check = empirical_check(module, captured, result, in_channels=1)
    assert check.agrees is True
    assert all(stage.inside for stage in check.stages)


@pytest.mark.slow
@pytest.mark.parametrize("name", list_models())
def test_support_check_agrees_on_every_stage_of_every_registered_model(name):
    model, captured, result = analysed(name)
    check = empirical_check(model, captured, result)
    assert check.agrees is True
    assert all(stage.inside and stage.agrees for stage in check.stages)
    assert [stage.measured_size for stage in check.stages] == [stage.size for stage in result.stages]


# --------------------------------------------------------------------------------- effective receptive field


@functools.cache
def resnet20_erf():
    torch.manual_seed(0)
    model, name = load_model("resnet20", device=None)
    captured = capture(model, 32, model_name=name)
    result = analyze_receptive_field(captured)
    return result, effective_receptive_field(model, captured, result, samples=2)


def test_erf_radii_are_ordered_and_inside_the_theoretical_field():
    result, erf = resnet20_erf()
    assert 0 <= erf.r50 <= erf.r90 <= erf.r99 <= (result.output.size[0] - 1) / 2
    assert erf.ratio == pytest.approx(erf.r99 / 40)
    assert erf.unit == (3, 3) and erf.centre == (12.0, 12.0)  # unit 3 of 8: -P + uS + (r - 1)/2 = -40 + 12 + 40
    assert sum(map(sum, erf.mass)) == pytest.approx(1.0)


def test_erf_heatmap_is_32_shade_columns():
    _, erf = resnet20_erf()
    lines = erf_heatmap(erf.mass)
    assert len(lines) == 16 and {len(line) for line in lines} == {32}
    assert set("".join(lines)) <= set(" ░▒▓█") and "█" in "".join(lines)


def test_png_is_a_valid_grayscale_image_of_the_mass():
    mass = ((0.0, 0.25), (0.25, 1.0), (0.0, 0.0))
    data = png_bytes(mass)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height, depth, colour = struct.unpack(">IIBB", data[16:26])
    assert (width, height, depth, colour) == (2, 3, 8, 0)
    length = struct.unpack(">I", data[33:37])[0]
    assert data[37:41] == b"IDAT"
    assert zlib.decompress(data[41:41 + length]) == b"\x00\x00\x80" + b"\x00\x80\xff" + b"\x00\x00\x00"
