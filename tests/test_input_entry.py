"""The default input takes its spatial rank and channels from the first windowed operation the input meets
(issue 18, item 4), not from the first such module in registration order."""

from __future__ import annotations

import json

import oracle_torch
import torch
from fixtures import family_models
from typer.testing import CliRunner

import resnet_inspect
from resnet_inspect.capture.entry import input_channels, input_entry, spatial_rank
from resnet_inspect.cli.app import app

runner = CliRunner()
SPEC = "tests/fixtures/family_models.py:eca_nfnet_like"


def test_the_input_meets_the_weight_standardised_stem_before_the_eca_conv1d():
    model = family_models.eca_nfnet_like()
    assert input_entry(model, 1) == input_entry(model, 2)
    assert input_entry(model, 2).rank == 2 and input_entry(model, 2).channels == 3
    assert spatial_rank(model) == 2
    assert input_channels(model) == 3


def test_the_default_input_of_an_eca_nfnet_is_an_rgb_image():
    result = runner.invoke(app, ["summary", SPEC, "-f", "json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["input_shape"] == [1, 3, 224, 224]
    assert resnet_inspect.summary(family_models.eca_nfnet_like()).to_dict()["input_shape"] == [1, 3, 224, 224]


def test_an_eca_nfnet_has_the_shapes_and_macs_of_the_real_forward_pass():
    model = family_models.eca_nfnet_like().eval()
    example = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    report = resnet_inspect.summary(model).to_dict()
    assert report["output_shape"] == oracle_torch.output_shape(model, example)
    real = oracle_torch.leaf_output_shapes(model, example)
    reported: dict[str, set[tuple[int, ...]]] = {}
    for layer in report["layers"]:
        reported.setdefault(layer["name"], set()).add(tuple(layer["output_shape"]))
    assert {name: {tuple(shape) for shape in shapes} for name, shapes in real.items()} == {
        name: reported[name] for name in real}
    assert report["totals"]["macs"] == oracle_torch.flop_counter_macs(model, example)
    assert report["totals"]["params"] == sum(parameter.numel() for parameter in model.parameters())


def test_every_command_runs_on_an_eca_nfnet_at_its_default_input():
    for command in (["rf", SPEC], ["summary", SPEC], ["verify", SPEC], ["compare", SPEC, SPEC]):
        result = runner.invoke(app, command)
        assert result.exit_code == 0, (command, result.output)
