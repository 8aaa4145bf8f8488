"""Issue 11's acceptance: the patterns of real torchvision and timm networks, each against an independent oracle.

The zoo (`tests/fixtures/real_models.py`) re-creates SE, ECA and CBAM gates, ConvNeXt and Swin-style NHWC
blocks, ShuffleNetV2's channel shuffle, a ViT with three forms of attention, a ResNet-D shortcut, blur pooling,
an FPN, a U-Net, an ESPCN and three single upsamplers, timm's Conv2dSame, Conv1d / Conv3d nets and a VGG head.
The oracles use torch alone (`tests/oracle_torch.py`): forward hooks on a real pass for shapes, `FlopCounterMode`
for MACs, and the input-gradient support of a positive-weight float64 copy for receptive fields.

A field reported as (size, stride, padding) puts unit ``u`` of its map on input rows
``[-padding + u * stride, -padding + u * stride + size - 1]``; each test picks the centre unit and an input large
enough that this interval lies inside the input, so the gradient support is not clipped.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import oracle_torch
import pytest
import torch
from fixtures import real_models
from typer.testing import CliRunner

import resnet_inspect
from resnet_inspect.cli.app import app

ROOT = Path(__file__).resolve().parent.parent
ZOO_FILE = "tests/fixtures/real_models.py"


@dataclass(frozen=True)
class Case:
    """How to run one zoo model, and what its field should be."""

    input_size: tuple[int, ...]  # one entry per spatial axis
    in_channels: int = 3
    spatial_axes: tuple[int, ...] = (2, 3)  # of forward_features' output: NCHW (2, 3), NHWC (1, 2), tokens (1,)
    gate: str | None = None  # the first gate module: every layer after it has global_context
    field: str = "local"  # "local": one finite field; "global": the whole input; "upsampled": varies per pixel

    @property
    def cli_size(self) -> str:
        sizes = set(self.input_size)
        return str(self.input_size[0]) if len(sizes) == 1 else "x".join(map(str, self.input_size))

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (1, self.in_channels, *self.input_size)


CASES: dict[str, Case] = {
    "se_net": Case((32, 32), gate="features.1.block.2"),
    "eca_net": Case((64, 64), gate="features.2"),
    "cbam_net": Case((64, 64), gate="features.2.se"),
    "convnext": Case((128, 128)),
    "swin_like": Case((64, 64), spatial_axes=(1, 2)),
    "shufflenet": Case((64, 64)),
    "vit": Case((64, 64), spatial_axes=(1,), field="global"),
    "resnet_d": Case((64, 64)),
    "blur_pool_net": Case((64, 64)),
    "fpn": Case((64, 64), field="upsampled"),
    "unet": Case((64, 64), field="upsampled"),
    "espcn": Case((32, 32), in_channels=1, field="upsampled"),
    "upsample_nearest": Case((32, 32), field="upsampled"),
    "upsample_bilinear": Case((32, 32), field="upsampled"),
    "upsample_transposed": Case((32, 32), field="upsampled"),
    "conv2d_same_net": Case((64, 64)),
    "audio_net": Case((256,), in_channels=1, spatial_axes=(2,)),
    "video_net": Case((16, 32, 32), spatial_axes=(2, 3, 4)),
    "vgg_like": Case((28, 28)),
}
GATED = [name for name, case in CASES.items() if case.gate]
LOCAL = [name for name, case in CASES.items() if case.field == "local"]

# (size, stride, padding) per spatial axis at the case's input size, computed by hand in each factory's docstring.
HAND_FIELDS: dict[str, tuple[list[int], list[int], list[int]]] = {
    "se_net": ([11, 11], [4, 4], [5, 5]),
    "eca_net": ([11, 11], [4, 4], [5, 5]),
    "cbam_net": ([23, 23], [4, 4], [11, 11]),
    "convnext": ([80, 80], [8, 8], [36, 36]),
    "swin_like": ([32, 32], [8, 8], [12, 12]),
    "shufflenet": ([31, 31], [8, 8], [15, 15]),
    "resnet_d": ([39, 39], [8, 8], [19, 19]),
    "blur_pool_net": ([16, 16], [4, 4], [6, 6]),
    "conv2d_same_net": ([15, 15], [4, 4], [4, 4]),
    "audio_net": ([29], [4], [14]),
    "video_net": ([6, 23, 23], [2, 8, 8], [2, 9, 9]),
    "vgg_like": ([10, 10], [4, 4], [3, 3]),
}

runner = CliRunner()


def build(name: str, **options: object) -> torch.nn.Module:
    return getattr(real_models, name)(**options).eval()


def example(name: str) -> torch.Tensor:
    return torch.randn(CASES[name].input_shape, generator=torch.Generator().manual_seed(0))


@cache
def summary(name: str) -> dict:
    """The `summary --format json` document, through the Python API (given the full input shape)."""
    report = resnet_inspect.inspect(build(name), input_size=CASES[name].input_shape, model_name=f"{ZOO_FILE}:{name}")
    return report.to_dict()


def cli_json(*args: str) -> dict | list:
    result = runner.invoke(app, [*args, "--format", "json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def model_args(name: str) -> list[str]:
    case = CASES[name]
    return [f"{ZOO_FILE}:{name}", "-i", case.cli_size, "--in-channels", str(case.in_channels)]


@cache
def rf_checked(name: str) -> dict:
    """`rf --check --format json`."""
    return cli_json("rf", *model_args(name), "--check")


@cache
def verified(name: str) -> dict:
    """`verify --format json`."""
    return cli_json("verify", *model_args(name))


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "resnet_inspect", *args, "--format", "json"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


@cache
def encoder_output(name: str) -> torch.Size:
    with torch.no_grad():
        return build(name).forward_features(example(name)).shape


def centre_unit(name: str) -> tuple[int, ...]:
    shape = encoder_output(name)
    return tuple(shape[axis] // 2 for axis in CASES[name].spatial_axes)


def interval(field: dict, unit: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The input rows (first, last per axis) that unit ``unit`` covers by the reported field."""
    first = tuple(-padding + position * stride
                  for padding, position, stride in zip(field["padding"], unit, field["stride"], strict=True))
    last = tuple(start + size - 1 for start, size in zip(first, field["size"], strict=True))
    return first, last


@cache
def oracle_support(name: str, unit: tuple[int, ...]) -> oracle_torch.Support:
    case = CASES[name]
    model = build(name, detach_gate=True) if case.gate else build(name)
    return oracle_torch.gradient_support(model, case.input_shape, unit, case.spatial_axes)


# Shapes ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(CASES))
def test_output_shape_is_the_real_forward_pass(name: str) -> None:
    report = summary(name)
    assert report["input_shape"] == list(CASES[name].input_shape)
    assert report["output_shape"] == oracle_torch.output_shape(build(name), example(name))


@pytest.mark.parametrize("name", list(CASES))
def test_every_leaf_module_has_the_shape_of_the_real_forward_pass(name: str) -> None:
    """Each leaf module the real pass calls is listed under its name with the output shape(s) it really had."""
    real = oracle_torch.leaf_output_shapes(build(name), example(name))
    reported: dict[str, list[list[int]]] = {}
    for layer in summary(name)["layers"]:
        reported.setdefault(layer["name"], []).append(layer["output_shape"])
    missing = sorted(set(real) - set(reported))
    assert not missing, f"leaf modules missing from layers[]: {missing}"
    wrong = {module: (reported[module], shapes) for module, shapes in real.items()
             if {tuple(shape) for shape in reported[module]} != {tuple(shape) for shape in shapes}}
    assert not wrong, f"reported vs real output shapes: {wrong}"


@pytest.mark.parametrize("name", list(CASES))
def test_convolution_and_pooling_arithmetic_holds(name: str) -> None:
    assert summary(name)["arithmetic"]["failed"] == 0


def test_nhwc_output_is_reported_as_it_is() -> None:
    """Swin keeps (N, H, W, C) to the end: 64 / 4 / 2 = 8 rows and columns of 32 channels."""
    assert summary("swin_like")["output_shape"] == [1, 8, 8, 32]


def test_a_segmentation_output_is_one_score_per_class_and_pixel() -> None:
    assert summary("unet")["output_shape"] == [1, 3, 64, 64]
    assert summary("fpn")["output_shape"] == [1, 4, 64, 64]


# MACs ------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(CASES))
def test_macs_equal_flop_counter_mode(name: str) -> None:
    """Total MACs = FlopCounterMode's FLOPs / 2 on the real forward pass: convolutions (1-D, 2-D, 3-D, transposed,
    grouped and functional ones such as the blur filter and Conv2dSame's F.conv2d), linear layers, and attention's
    matrix products (the oracle runs attention on torch's math backend, so that FlopCounterMode sees the bmm calls).
    Neither side counts normalisation, activations, pooling, interpolation or element-wise products."""
    assert summary(name)["totals"]["macs"] == oracle_torch.flop_counter_macs(build(name), example(name))


def test_vit_attention_macs_are_counted_by_hand() -> None:
    """65 tokens of width 32, 2 heads of 16: each attention has q k^T and attn v, 2 * 2 * 65 * 65 * 16 = 270,400
    MACs, three blocks. Linear layers: qkv 65*32*96, proj 65*32*32, MLP 2 * 65*32*64 per block; patch embedding
    64 * 32 * 3 * 8 * 8; head 32 * 10."""
    attention = 3 * 2 * 2 * 65 * 65 * 16
    linear = 3 * (65 * 32 * 96 + 65 * 32 * 32 + 2 * 65 * 32 * 64) + 32 * 10
    patch_embedding = 64 * 32 * 3 * 8 * 8
    assert summary("vit")["totals"]["macs"] == attention + linear + patch_embedding


def test_conv1d_and_conv3d_macs_are_counted_by_hand() -> None:
    """Audio at 256: conv k9 1->8 at 128 positions, conv k5 8->16 at 64, linear 16->5.
    Video at 16x32x32: conv (3,7,7) 3->8 at 16x16x16, conv 3x3x3 8->16 at 16x8x8, 1x1x1 16->16 at 8x4x4, linear."""
    assert summary("audio_net")["totals"]["macs"] == 128 * 8 * 9 + 64 * 16 * 8 * 5 + 16 * 5
    assert summary("video_net")["totals"]["macs"] == (16 * 16 * 16 * 8 * 3 * 147 + 16 * 8 * 8 * 16 * 8 * 27
                                                      + 8 * 4 * 4 * 16 * 16 + 16 * 5)


# Receptive fields: the local ones against the input gradient --------------------------------------------------------

@pytest.mark.parametrize("name", LOCAL)
def test_encoder_output_is_the_last_spatial_map_before_pooling(name: str) -> None:
    """The tool's encoder output (the rf table's last row) is the map ``forward_features`` returns."""
    encoder = encoder_output(name)
    assert rf_checked(name)["stages"][-1]["output_size"] == [encoder[axis] for axis in CASES[name].spatial_axes]


@pytest.mark.parametrize("name", LOCAL)
def test_field_of_the_encoder_output_is_the_input_gradient_support(name: str) -> None:
    unit = centre_unit(name)
    support = oracle_support(name, unit)
    assert not support.touches_border, "test design: pick a larger input so the oracle is not clipped"
    field = rf_checked(name)["output"]
    assert field is not None, rf_checked(name)["reasons"]
    assert interval(field, unit) == (support.first, support.last)


@pytest.mark.parametrize("name", list(HAND_FIELDS))
def test_field_of_the_encoder_output_is_the_one_computed_by_hand(name: str) -> None:
    size, stride, padding = HAND_FIELDS[name]
    field = rf_checked(name)["output"]
    assert field is not None, rf_checked(name)["reasons"]
    assert (field["size"], field["stride"], field["padding"]) == (size, stride, padding)
    assert summary(name)["receptive_field"]["size"] == size


@pytest.mark.parametrize("name", list(HAND_FIELDS))
def test_oracle_agrees_with_the_fields_computed_by_hand(name: str) -> None:
    """The two independent references agree with each other before either is held against the tool."""
    size, stride, padding = HAND_FIELDS[name]
    unit = centre_unit(name)
    support = oracle_support(name, unit)
    assert interval({"size": size, "stride": stride, "padding": padding}, unit) == (support.first, support.last)


@pytest.mark.parametrize("name", [name for name in LOCAL if not CASES[name].gate])
def test_a_local_field_has_no_global_context(name: str) -> None:
    assert rf_checked(name)["output"]["global_context"] is False
    assert summary(name)["receptive_field"]["global_context"] is False


@pytest.mark.parametrize("name", LOCAL)
def test_every_axis_has_its_own_entry(name: str) -> None:
    axes = len(CASES[name].input_size)
    field = rf_checked(name)["output"]
    assert len(field["size"]) == len(field["stride"]) == len(field["padding"]) == axes


# Gates (SE, ECA, CBAM) ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", GATED)
def test_a_gate_keeps_the_local_field_and_marks_global_context(name: str) -> None:
    """The product with a spatially reduced gate keeps the main path's field (checked against the gradient of the
    model with the gate detached above); the gate itself has seen the whole input."""
    assert rf_checked(name)["output"]["global_context"] is True
    assert summary(name)["receptive_field"]["global_context"] is True
    encoder = [stage for stage in rf_checked(name)["stages"] if stage["name"] == "output"]
    assert encoder and encoder[0]["global_context"] is True


@pytest.mark.parametrize("name", GATED)
def test_without_the_detach_the_gate_really_sees_the_whole_input(name: str) -> None:
    """Sanity check of the oracle: the real gated model's centre unit depends on every input pixel (small weights
    keep the sigmoid from saturating, where its gradient would underflow to zero)."""
    case = CASES[name]
    support = oracle_torch.gradient_support(build(name), case.input_shape, centre_unit(name), case.spatial_axes,
                                            low=0.001, high=0.01)
    assert support.first == (0, 0) and support.last == tuple(size - 1 for size in case.input_size)


@pytest.mark.parametrize("name", GATED)
def test_every_layer_after_the_gate_has_global_context(name: str) -> None:
    layers = summary(name)["layers"]
    names = [layer["name"] for layer in layers]
    leaves = [layer for layer in layers if not any(other.startswith(layer["name"] + ".") for other in names)]
    gate = CASES[name].gate
    inside = [index for index, layer in enumerate(leaves) if layer["name"].startswith(gate + ".")]
    before, after = leaves[:inside[0]], leaves[inside[-1] + 1:]
    fields_after = [layer["receptive_field"] for layer in after if layer["receptive_field"] is not None]
    assert fields_after, "no layer after the gate has a field"
    assert all(field["global_context"] is True for field in fields_after)
    assert all(layer["receptive_field"]["global_context"] is False for layer in before)


# Attention ---------------------------------------------------------------------------------------------------------

def test_vit_field_is_the_whole_input_with_global_context() -> None:
    """Patch 8 alone would give 8; after any attention every token sees all 64 x 64 pixels."""
    field = rf_checked("vit")["output"]
    assert field is not None, rf_checked("vit")["reasons"]
    assert field["size"] == [64, 64] and field["global_context"] is True
    assert summary("vit")["receptive_field"]["size"] == [64, 64]
    assert summary("vit")["receptive_field"]["global_context"] is True


@pytest.mark.parametrize("token", [0, 36])
def test_oracle_every_vit_token_depends_on_every_pixel(token: int) -> None:
    """The cls token and a patch token: nonzero gradient on the whole 64 x 64 input."""
    support = oracle_torch.gradient_support(build("vit"), CASES["vit"].input_shape, (token,), (1,))
    assert support.first == (0, 0) and support.last == (63, 63)


@pytest.mark.parametrize("attention", ["SdpaAttention", "TorchMultiheadAttention", "ManualAttention"])
def test_each_form_of_attention_alone_makes_the_field_global(attention: str) -> None:
    """One block of each form: the block's output field is the whole input."""
    vit = build("vit")
    keep = [block for block in vit.blocks if type(block.attn).__name__ == attention]
    vit.blocks = torch.nn.Sequential(*keep)
    report = resnet_inspect.inspect(vit, input_size=64).to_dict()
    assert report["receptive_field"]["size"] == [64, 64]
    assert report["receptive_field"]["global_context"] is True


# ResNet-D: same stride, different centres --------------------------------------------------------------------------

def test_resnet_d_merge_is_the_union_of_both_intervals() -> None:
    """Main path [8u - 19, 8u + 19], shortcut [8u - 7, 8u + 11] (see `resnet_d`): the union is the main path's
    interval, size 39, stride 8, padding 19; the centres differ by 2, so not aligned."""
    report = rf_checked("resnet_d")
    assert report["aligned"] is False and report["union"] is True
    assert report["output"]["size"] == [39, 39]
    assert (report["output"]["stride"], report["output"]["padding"]) == ([8, 8], [19, 19])


def test_resnet_d_odd_input_pools_with_ceil_mode() -> None:
    """At 57: stem 29, max pool 15; the 3x3/2 main path gives 8 and the ceil-mode 2x2/2 shortcut 8 (floor would
    give 7 and the add would fail)."""
    report = resnet_inspect.inspect(build("resnet_d"), input_size=57).to_dict()
    shapes = {layer["name"]: layer["output_shape"] for layer in report["layers"]}
    assert shapes["maxpool"] == [1, 16, 15, 15]
    assert shapes["layer1.0.downsample.0"] == [1, 16, 8, 8] and shapes["layer1.0.conv1"] == [1, 32, 8, 8]
    assert report["output_shape"] == [1, 10]


# Upsampling: a field per output pixel, or a stated reason ------------------------------------------------------

UPSAMPLED = [name for name, case in CASES.items() if case.field == "upsampled"]


@pytest.mark.parametrize("name", UPSAMPLED)
def test_upsampled_output_field_is_exact_or_a_stated_bound(name: str) -> None:
    """Nearest, bilinear, transposed and pixel-shuffle upsampling give each output pixel its own field. The tool
    either has no field and says why, or its field holds every input pixel the output pixel really depends on (for
    the centre pixel and both neighbours, rounded outward where the rational stride leaves halves); where that
    field is not exact for every pixel, the encoder output's row says so."""
    report = rf_checked(name)
    field = report["output"]
    if field is None:
        assert report["reasons"] and all(reason.strip() for reason in report["reasons"])
        return
    exact = True
    for offset in (-1, 0, 1):
        unit = tuple(position + offset for position in centre_unit(name))
        support = oracle_support(name, unit)
        assert not support.touches_border
        first, last = interval(field, unit)
        exact = exact and (first, last) == (support.first, support.last)
        outward = (tuple(math.floor(bound) for bound in first), tuple(math.ceil(bound) for bound in last))
        missed = [axis for axis in range(len(unit))
                  if not outward[0][axis] <= support.first[axis] <= support.last[axis] <= outward[1][axis]]
        assert not missed, f"pixel {unit}: reported {first}..{last}, depends on {support.first}..{support.last}"
    if not exact:
        assert report["stages"][-1]["reason"], "a field that varies per pixel needs its reason stated"


# Conv2dSame --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [64, 65])
def test_verify_checks_conv2d_same_on_what_it_runs(size: int) -> None:
    """Conv2dSame declares padding 0 and pads inside forward: checked on its F.pad + F.conv2d, it agrees."""
    result = runner.invoke(app, ["verify", f"{ZOO_FILE}:conv2d_same_net", "-i", str(size), "--format", "json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["failed"] == 0 and report["checked"] >= 3


def test_conv2d_same_field_follows_the_padding_of_an_odd_input() -> None:
    """At 65 the first conv pads (1, 1) and the 5x5/2 conv (2, 2): 3 (stride 2, padding 1), 7 (padding 3),
    7 + 4*2 = 15, stride 4, padding 3 + 2*2 = 7."""
    report = cli_json("rf", f"{ZOO_FILE}:conv2d_same_net", "-i", "65")
    assert report["output"]["size"] == [15, 15]
    assert (report["output"]["stride"], report["output"]["padding"]) == ([4, 4], [7, 7])
    support = oracle_torch.gradient_support(build("conv2d_same_net"), (1, 3, 65, 65), (8, 8), (2, 3))
    assert interval(report["output"], (8, 8)) == (support.first, support.last)


# Conv1d and Conv3d -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "checked"), [("audio_net", 3), ("video_net", 5)])
def test_verify_checks_one_and_three_dimensional_layers_on_every_axis(name: str, checked: int) -> None:
    """Audio: two Conv1d and a MaxPool1d. Video: three Conv3d, a MaxPool3d and an AvgPool3d."""
    report = verified(name)
    assert report["failed"] == 0 and report["checked"] >= checked
    axes = len(CASES[name].input_size)
    assert all(len(layer["expected"]) == len(layer["observed"]) == axes for layer in report["layers"])


def test_spatial_axes_come_from_the_first_convolution() -> None:
    """`-i N` gives N on every spatial axis: one for Conv1d, three for Conv3d."""
    assert cli_json("summary", f"{ZOO_FILE}:audio_net", "-i", "256", "--in-channels", "1")["input_shape"] == [
        1, 1, 256]
    assert cli_json("summary", f"{ZOO_FILE}:video_net", "-i", "32")["input_shape"] == [1, 3, 32, 32, 32]


@pytest.mark.parametrize(("name", "input_size"), [("audio_net", 256), ("video_net", 32), ("video_net", (16, 32, 32))])
def test_python_api_takes_an_int_or_one_size_per_spatial_axis(name: str, input_size: int | tuple[int, ...]) -> None:
    """As `-i`: an int for every spatial axis, or a tuple with one size per spatial axis (three for a Conv3d net,
    whose first convolution says how many axes and channels the input has)."""
    report = resnet_inspect.inspect(build(name), input_size=input_size).to_dict()
    sizes = [input_size] * len(CASES[name].input_size) if isinstance(input_size, int) else list(input_size)
    assert report["input_shape"] == [1, CASES[name].in_channels, *sizes]


def test_one_size_per_axis_for_a_video_input() -> None:
    """`-i TxHxW`, as `-i HxW` for images (a comma separates several sizes in compare)."""
    report = cli_json("summary", f"{ZOO_FILE}:video_net", "-i", "16x32x32")
    assert report["input_shape"] == [1, 3, 16, 32, 32]
    assert report["output_shape"] == [1, 5]


# rf --check ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", LOCAL)
def test_rf_check_agrees_on_every_model_with_a_local_field(name: str) -> None:
    empirical = rf_checked(name)["empirical"]
    assert empirical["agrees"] is True, empirical
    assert empirical["size"] == rf_checked(name)["output"]["size"]


@pytest.mark.parametrize("name", [name for name, case in CASES.items() if case.field != "local"])
def test_rf_check_agrees_or_gives_a_reason_on_global_and_upsampled_fields(name: str) -> None:
    empirical = rf_checked(name)["empirical"]
    assert empirical["agrees"] is not False, empirical
    for stage in empirical["stages"]:
        assert stage["agrees"] is True or stage["reason"], stage


@pytest.mark.parametrize("name", LOCAL)
def test_rf_check_runs_at_the_nominal_size_when_it_holds_the_field(name: str) -> None:
    """Every zoo input already holds the centre unit's field, so the check needs no larger input (a larger one
    would stop VGG's AdaptiveAvgPool2d(7) from being the identity)."""
    assert rf_checked(name)["empirical"]["input_size"] == list(CASES[name].input_size)


@pytest.mark.parametrize("name", list(CASES))
def test_rf_check_never_reports_a_clipped_support_as_a_measurement(name: str) -> None:
    for stage in rf_checked(name)["empirical"]["stages"]:
        assert stage["inside"] or stage["reason"], stage
        if stage["agrees"] is not None:
            assert stage["inside"], stage


# The CLI, as a user runs it -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(CASES))
def test_verify_passes_on_every_zoo_model(name: str) -> None:
    """verify observes torch's own kernels: every zoo layer's declared geometry holds, Conv2dSame included."""
    report = verified(name)
    assert report["failed"] == 0, [layer for layer in report["layers"] if not layer["ok"]]


@pytest.mark.parametrize("command", ["summary", "rf", "verify"])
@pytest.mark.parametrize("name", list(CASES))
def test_cli_command_runs_on_every_zoo_model(command: str, name: str) -> None:
    """The typer app in-process (a fresh interpreter per call would cost a torch import each: see below)."""
    document = verified(name) if command == "verify" else cli_json(command, *model_args(name))
    assert document["input_shape"] == list(CASES[name].input_shape)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["swin_like", "audio_net", "video_net"])
def test_python_m_resnet_inspect_runs_a_zoo_factory_file(name: str) -> None:
    """As a user types it, from the repository root: the NHWC model and the one- and three-dimensional nets."""
    completed = run_cli("summary", *model_args(name))
    assert completed.returncode == 0, completed.stderr
    assert json.loads(completed.stdout)["input_shape"] == list(CASES[name].input_shape)


@pytest.mark.slow
def test_compare_runs_on_the_zoo() -> None:
    """Every RGB image model in one table at 64 x 64; the NHWC model's field is read on H and W."""
    names = [name for name, case in CASES.items() if len(case.input_size) == 2 and case.in_channels == 3]
    completed = run_cli("compare", *(f"{ZOO_FILE}:{name}" for name in names), "-i", "64")
    assert completed.returncode == 0, completed.stderr
    rows = {row["model"].split(":")[-1]: row for row in json.loads(completed.stdout)}
    assert set(rows) == set(names)
    assert rows["swin_like"]["receptive_field"]["size"] == [32, 32]
    assert rows["resnet_d"]["receptive_field"]["size"] == [39, 39]
    assert rows["se_net"]["receptive_field"]["global_context"] is True
    assert rows["shufflenet"]["receptive_field"]["global_context"] is False


@pytest.mark.slow
@pytest.mark.parametrize("name", ["audio_net", "video_net", "espcn"])
def test_compare_runs_on_the_other_inputs(name: str) -> None:
    """A one-channel waveform, a video clip and a one-channel image (compare has no --in-channels: the model's
    first layer says how many it takes)."""
    completed = run_cli("compare", f"{ZOO_FILE}:{name}", "-i", "32")
    assert completed.returncode == 0, completed.stderr
    row = json.loads(completed.stdout)[0]
    assert row["input_shape"] == [1, CASES[name].in_channels, *[32] * len(CASES[name].input_size)]
