"""Issue 18, item 1: attention that is not one global attention, split spatial axes and space-to-depth stems.

Our own re-creations (`tests/fixtures/attention_models.py`) of Swin (windows by view/permute, shifted windows by
roll, patch merging), HaloNet (a halo by pad + unfold), MobileViT (F.unfold / F.fold into patches), PVT (keys from
a strided convolution), BoTNet (attention over a padded map) and TResNet (space-to-depth by view/permute/view and
by pixel_unshuffle), each against the torch-only oracles of `tests/oracle_torch.py`: the shapes of a real pass,
FlopCounterMode's MACs (math attention backend), and the input-gradient support of a positive-weight float64 copy.
The oracle's weights are small (0.001 to 0.01), so that no softmax saturates and hides the keys that lost.

After windowed attention every unit of a window sees the union of the window's fields, so the field no longer
steps by one stride from unit to unit: the JSON then gives each unit's first and last input position (`spans`),
and size and padding are those of the map's centre unit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache

import oracle_torch
import pytest
import torch
from fixtures import attention_models
from torch import nn
from typer.testing import CliRunner

import resnet_inspect
from resnet_inspect.cli.app import app

MODELS_FILE = "tests/fixtures/attention_models.py"


@dataclass(frozen=True)
class Case:
    input_size: int
    spatial_axes: tuple[int, ...] = (2, 3)  # of forward_features' output: NCHW (2, 3), NHWC (1, 2)
    covers_input: bool = False  # attention that reaches the whole input


CASES: dict[str, Case] = {
    "swin_one_stage": Case(64, (1, 2)),
    "swin_windows": Case(64, (1, 2), covers_input=True),
    "halo_net": Case(64),
    "mobile_vit": Case(32, covers_input=True),
    "pvt_like": Case(64, covers_input=True),
    "botnet_like": Case(32, covers_input=True),
    "space_to_depth_net": Case(32),
    "pixel_unshuffle_net": Case(32),
}
LOCAL = [name for name, case in CASES.items() if not case.covers_input]
GLOBAL = [name for name, case in CASES.items() if case.covers_input]

# (size, stride, padding) of the encoder output's centre unit ((n - 1) // 2 on each axis), by hand.
HAND_FIELDS = {
    # 4/4 patches; the window block: the 4 tokens of a window, 16 px; the shifted block joins two windows. The
    # centre token 7 is in shifted window 6..9, made of tokens of windows 4..7 and 8..11: pixels 16..47, 32 px,
    # padding 7 * 4 - 16 = 12.
    "swin_one_stage": ([32, 32], [4, 4], [12, 12]),
    # 3x3/2 stem: unit u sees pixels 2u - 1..2u + 1. The centre unit 15 is in block 12..15, which attends to units
    # 11..16 (halo 1): pixels 21..33, 13 px, padding 2 * 15 - 21 = 9.
    "halo_net": ([13, 13], [2, 2], [9, 9]),
    "space_to_depth_net": ([20, 20], [8, 8], [8, 8]),
    "pixel_unshuffle_net": ([20, 20], [8, 8], [8, 8]),
}

runner = CliRunner()


def build(name: str) -> nn.Module:
    return getattr(attention_models, name)().eval()


def input_shape(name: str) -> tuple[int, ...]:
    return (1, 3, CASES[name].input_size, CASES[name].input_size)


def example(name: str) -> torch.Tensor:
    return torch.randn(input_shape(name), generator=torch.Generator().manual_seed(0))


@cache
def summary(name: str) -> dict:
    return resnet_inspect.inspect(build(name), input_size=input_shape(name)).to_dict()


def cli_json(*args: str) -> dict | list:
    result = runner.invoke(app, [*args, "--format", "json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def model_args(name: str) -> list[str]:
    return [f"{MODELS_FILE}:{name}", "-i", str(CASES[name].input_size)]


@cache
def rf(name: str) -> dict:
    return cli_json("rf", *model_args(name))


@cache
def centre_unit(name: str) -> tuple[int, ...]:
    with torch.no_grad():
        shape = build(name).forward_features(example(name)).shape
    return tuple(shape[axis] // 2 for axis in CASES[name].spatial_axes)


@cache
def oracle_support(name: str) -> oracle_torch.Support:
    return oracle_torch.gradient_support(build(name), input_shape(name), centre_unit(name), CASES[name].spatial_axes,
                                         low=0.001, high=0.01)


def interval(field: dict, unit: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The input rows a unit covers: its own span where the field has them, else the (size, stride, padding)
    formula."""
    if "spans" in field:
        spans = [field["spans"][axis][position] for axis, position in enumerate(unit)]
        return tuple(first for first, _ in spans), tuple(last for _, last in spans)
    first = tuple(-padding + position * stride
                  for padding, position, stride in zip(field["padding"], unit, field["stride"], strict=True))
    return first, tuple(start + size - 1 for start, size in zip(first, field["size"], strict=True))


# Shapes and MACs ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(CASES))
def test_every_leaf_module_has_the_shape_of_the_real_forward_pass(name: str) -> None:
    real = oracle_torch.leaf_output_shapes(build(name), example(name))
    reported: dict[str, set[tuple[int, ...]]] = {}
    for layer in summary(name)["layers"]:
        reported.setdefault(layer["name"], set()).add(tuple(layer["output_shape"]))
    assert {module: {tuple(s) for s in shapes} for module, shapes in real.items()} == {
        module: reported.get(module) for module in real}
    assert summary(name)["output_shape"] == oracle_torch.output_shape(build(name), example(name))


@pytest.mark.parametrize("name", list(CASES))
def test_macs_equal_flop_counter_mode(name: str) -> None:
    """Convolutions, linear layers and the attention products (q k^T and attn v, in windows, over halos, over
    patches, against reduced keys); unfold, fold, roll and the space-to-depth views count nothing on either side."""
    assert summary(name)["totals"]["macs"] == oracle_torch.flop_counter_macs(build(name), example(name))


# Receptive fields ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", LOCAL)
def test_a_local_field_is_the_input_gradient_support(name: str) -> None:
    support = oracle_support(name)
    assert not support.touches_border, "test design: pick a larger input so the oracle is not clipped"
    field = rf(name)["output"]
    assert field is not None, rf(name)["reasons"]
    assert field["method"] == "analytic", field
    assert interval(field, centre_unit(name)) == (support.first, support.last)
    assert field["global_context"] is False


@pytest.mark.parametrize("name", list(HAND_FIELDS))
def test_the_centre_unit_has_the_field_computed_by_hand(name: str) -> None:
    size, stride, padding = HAND_FIELDS[name]
    field = rf(name)["output"]
    assert (field["size"], field["stride"], field["padding"]) == (size, stride, padding)
    assert summary(name)["receptive_field"]["size"] == size


@pytest.mark.parametrize("name", GLOBAL)
def test_attention_that_reaches_everything_covers_the_input(name: str) -> None:
    """Every unit of the encoder output covers the input, and the oracle's centre unit depends on every pixel."""
    support = oracle_support(name)
    side = CASES[name].input_size
    assert support.first == (0, 0) and support.last == (side - 1, side - 1)
    report = rf(name)
    assert report["output"] is not None, report["reasons"]
    assert report["output"]["method"] == "analytic", report["output"]
    assert report["stages"][-1]["covers_input"] is True
    assert summary(name)["receptive_field"] is not None


def test_windowed_attention_gives_the_window_not_the_map() -> None:
    """Swin's window block alone: each token of a 4x4-token window (16 px) sees exactly its window; the units of
    one window share their field, so it does not step by one stride from unit to unit."""
    model = attention_models.SwinWindows(stages=1)
    model.layers[0] = model.layers[0][0]  # the window block, not the shifted one
    field = resnet_inspect.receptive_field(model, 64).to_dict()["output"]
    assert field["spans"][0][:8] == [[0, 15]] * 4 + [[16, 31]] * 4
    assert field["spans"][0] == field["spans"][1]
    assert field["size"] == [16, 16]


def test_shifted_windows_join_two_windows_and_wrap_at_the_border() -> None:
    """After the shifted block, tokens 2..5 of the rolled map see windows 0..3 and 4..7 (pixels 0..31); the window
    that the roll wraps around (tokens 14, 15, 0, 1) reaches both borders, as attention without the mask would
    (the mask adds -100, which the input gradient still sees)."""
    spans = rf("swin_one_stage")["output"]["spans"][0]
    assert spans[2:6] == [[0, 31]] * 4
    assert spans[0] == spans[15] == [0, 63]


def test_halo_attention_gives_the_block_plus_the_halo() -> None:
    """Blocks of 4 units attend to the block and 1 unit on each side: units 16..19 see units 15..20."""
    spans = rf("halo_net")["output"]["spans"][0]
    stem = lambda unit: (2 * unit - 1, 2 * unit + 1)  # noqa: E731 - the stem's 3x3/2 field of one unit
    assert spans[16:20] == [[stem(15)[0], stem(20)[1]]] * 4


def test_spatial_reduction_attention_is_not_an_unaligned_merge() -> None:
    """Queries at stride 4, keys at stride 16: the union of the keys' fields, the whole input, at the queries'
    stride."""
    report = rf("pvt_like")
    assert report["reasons"] == []
    assert report["output"]["stride"] == [4, 4] and report["output"]["global_context"] is True


def test_a_positional_encoding_from_constants_adds_no_field() -> None:
    """EdgeNeXt's positional encoding runs a convolution on a grid of coordinates made from constants: the sum keeps
    the main path's field (3x3/2 then 3x3: 7, stride 2), not a "stride 1" path."""

    class PositionalEncoding(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem, self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.Conv2d(8, 8, 3, padding=1)
            self.token_projection = nn.Conv2d(2, 8, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.stem(x)
            rows = torch.arange(x.shape[2], dtype=x.dtype, device=x.device)
            grid = torch.stack(torch.meshgrid(rows, rows, indexing="ij")).unsqueeze(0)
            return self.conv(x + self.token_projection(grid))

    report = resnet_inspect.receptive_field(PositionalEncoding(), 32, check=True).to_dict()
    field = report["output"]
    assert (field["size"], field["stride"], field["padding"]) == ([7, 7], [2, 2], [3, 3])
    assert report["empirical"]["agrees"] is True, report["empirical"]


# The CLI -------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("command", ["rf", "summary", "verify"])
@pytest.mark.parametrize("name", list(CASES))
def test_cli_command_exits_0(command: str, name: str) -> None:
    document = cli_json(command, *model_args(name))
    assert document["input_shape"] == list(input_shape(name))
    if command == "verify":
        assert document["failed"] == 0


@pytest.mark.parametrize("size", [32, 64])
def test_compare_runs_on_every_model(size: int) -> None:
    names = [name for name, case in CASES.items() if case.input_size == size]
    rows = cli_json("compare", *(f"{MODELS_FILE}:{name}" for name in names), "-i", str(size))
    assert [row["model"].split(":")[-1] for row in rows] == names
    assert all(row["receptive_field"] is not None for row in rows)


# The capture's fast shape rules for the operations these models add --------------------------------------------------

SHAPE_CALLS = {
    "roll": (torch.roll, lambda x: (x, (-2, -2), (1, 2)), {}),
    "cat along the last dimension": (torch.cat, lambda x: ([x, x[..., :3]],), {"dim": -1}),
    "cat along the first": (torch.cat, lambda x: ((x, x),), {}),
    "strided slices": (torch.Tensor.__getitem__,
                       lambda x: (x, (slice(None), slice(1, None, 2), slice(0, None, 2))), {}),
    "ellipsis, None and an int": (torch.Tensor.__getitem__, lambda x: (x, (Ellipsis, None, 1)), {}),
    "a table indexed by a tensor": (torch.Tensor.__getitem__,
                                    lambda x: (x[0, 0], torch.tensor([[0, 3], [5, 7]], device=x.device)), {}),
}


@pytest.mark.parametrize("label", list(SHAPE_CALLS))
def test_fast_shape_rules_give_torchs_shapes(label: str) -> None:
    from resnet_inspect.capture.trace import meta_result

    function, arguments, keywords = SHAPE_CALLS[label]
    real = function(*arguments(torch.zeros(1, 8, 8, 16)), **keywords)
    fast = meta_result(function, arguments(torch.zeros(1, 8, 8, 16, device="meta")), keywords)
    assert fast is not NotImplemented
    assert fast.shape == real.shape and fast.dtype == real.dtype


@pytest.mark.parametrize("command", ["rf", "summary"])
def test_json_with_spans_validates_against_the_published_schema(command: str) -> None:
    from jsonschema import Draft202012Validator

    from resnet_inspect.schemas import load_schema

    document = rf("swin_one_stage") if command == "rf" else cli_json("summary", *model_args("swin_one_stage"))
    field = document["output"] if command == "rf" else document["receptive_field"]
    assert len(field["spans"]) == 2 and len(field["spans"][0]) == 16
    Draft202012Validator(load_schema(command)).validate(document)
