"""Work on buffers, parameters and constants (issue 18, item 3): Swin V2's position-bias MLP on a coordinate
table, EdgeNeXt's positional encoding on a grid built with zeros/cumsum/arange. Its MACs count as
FlopCounterMode counts them; its field is "constant", and the main path it joins keeps its own field."""

from __future__ import annotations

import json

import oracle_torch
import pytest
import torch
from fixtures import family_models
from typer.testing import CliRunner

import resnet_inspect
from resnet_inspect.cli.app import app

runner = CliRunner()
INPUT = (1, 3, 64, 64)
MODELS = ["swin_v2_bias_like", "edgenext_pos_like"]
CONSTANT_LAYERS = {
    "swin_v2_bias_like": ("features.3.cpb_mlp", "features.3.cpb_mlp.0", "features.3.cpb_mlp.1",
                          "features.3.cpb_mlp.2"),
    "edgenext_pos_like": ("features.1.pos_embd", "features.1.pos_embd.token_projection"),
}


def build(name: str) -> torch.nn.Module:
    return getattr(family_models, name)().eval()


def example() -> torch.Tensor:
    return torch.randn(INPUT, generator=torch.Generator().manual_seed(0))


def summary(name: str) -> dict:
    return resnet_inspect.summary(build(name), INPUT).to_dict()


@pytest.mark.parametrize("name", MODELS)
def test_macs_of_work_on_constants_equal_flop_counter_mode(name):
    assert summary(name)["totals"]["macs"] == oracle_torch.flop_counter_macs(build(name), example())


@pytest.mark.parametrize("name", MODELS)
def test_parameters_and_shapes_are_the_real_models(name):
    model, report = build(name), summary(name)
    assert report["totals"]["params"] == sum(parameter.numel() for parameter in model.parameters())
    assert report["output_shape"] == oracle_torch.output_shape(model, example())
    reported: dict[str, set[tuple[int, ...]]] = {}
    for layer in report["layers"]:
        reported.setdefault(layer["name"], set()).add(tuple(layer["output_shape"]))
    real = oracle_torch.leaf_output_shapes(model, example())
    assert {module: {tuple(shape) for shape in shapes} for module, shapes in real.items()} == {
        module: reported[module] for module in real}


def test_the_position_bias_mlp_counts_its_macs_on_the_coordinate_table():
    """The 7x7 table of 2 coordinates: Linear 2->32 is 49 * 2 * 32 MACs, Linear 32->2 is 49 * 32 * 2."""
    layers = {layer["name"]: layer for layer in summary("swin_v2_bias_like")["layers"]}
    assert layers["features.3.cpb_mlp.0"]["macs"] == 49 * 2 * 32
    assert layers["features.3.cpb_mlp.2"]["macs"] == 49 * 32 * 2


def test_the_positional_encoding_counts_its_projection():
    """A 1x1 conv from 16 to 16 channels over the 16x16 map."""
    layers = {layer["name"]: layer for layer in summary("edgenext_pos_like")["layers"]}
    assert layers["features.1.pos_embd.token_projection"]["macs"] == 16 * 16 * 16 * 16


@pytest.mark.parametrize("name", MODELS)
def test_layers_on_constants_have_a_constant_field_in_json_and_table(name):
    layers = {layer["name"]: layer for layer in summary(name)["layers"]}
    for layer in CONSTANT_LAYERS[name]:
        assert layers[layer]["receptive_field"]["constant"] is True
        assert layers[layer]["receptive_field"]["size"] is None
    text = str(resnet_inspect.summary(build(name), INPUT, depth=9))
    container = CONSTANT_LAYERS[name][0].rpartition(".")[2]  # cpb_mlp, pos_embd: the table's relative name
    rows = [line for line in text.splitlines() if line.count("│") > 2 and line.split("│")[1].strip() == container]
    assert len(rows) == 1 and "constant" in rows[0]


def test_a_constant_added_to_the_main_path_leaves_its_field_as_the_input_gradient_has_it():
    """EdgeNeXt-like: 16 wide at stride 8, padding 4 (the convolutions alone), as the gradient of the centre unit
    of the 8x8 encoder output reaches the input."""
    field = resnet_inspect.receptive_field(build("edgenext_pos_like"), 64).to_dict()["output"]
    assert (field["size"], field["stride"], field["padding"]) == ([16, 16], [8, 8], [4, 4])
    support = oracle_torch.gradient_support(build("edgenext_pos_like"), INPUT, (4, 4), (2, 3))
    assert support.first == (-4 + 4 * 8,) * 2 and support.last == (-4 + 4 * 8 + 15,) * 2


def test_attention_with_a_constant_bias_sees_the_whole_input():
    report = resnet_inspect.receptive_field(build("swin_v2_bias_like"), 64).to_dict()
    assert report["output"]["global_context"] is True and report["stages"][-1]["covers_input"] is True
    # small weights: with large logits the softmax saturates and its gradient underflows
    support = oracle_torch.gradient_support(build("swin_v2_bias_like"), INPUT, (1, 1), (2, 3), low=0.01, high=0.1)
    assert support.first == (0, 0) and support.last == (63, 63)


@pytest.mark.parametrize("name", MODELS)
def test_every_command_runs(name):
    spec = f"tests/fixtures/family_models.py:{name}"
    for command in (["rf", spec, "-i", "64"], ["summary", spec, "-i", "64"], ["verify", spec, "-i", "64"],
                    ["compare", spec, spec, "-i", "64"]):
        result = runner.invoke(app, [*command, "-f", "json"])
        assert result.exit_code == 0, (command, result.output)
        json.loads(result.stdout)
