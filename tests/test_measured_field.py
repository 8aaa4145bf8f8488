"""Where no rule applies, the field is measured (issue 18, item 2): the input-gradient support of a linearised
copy of the model, labelled ``method: measured`` with the input size, the unit and the reason the rules ran
out, marked ``*`` in the tables. A bare ``-`` is left only where the backward pass cannot reach the input."""

from __future__ import annotations

import json
from functools import cache

import oracle_torch
import pytest
import torch
from fixtures import family_models
from typer.testing import CliRunner

import resnet_inspect
from resnet_inspect.analysis import memory
from resnet_inspect.cli.app import app

runner = CliRunner()
SPEC = "tests/fixtures/family_models.py:unaligned_fusion"
DETACHED = "tests/fixtures/family_models.py:unaligned_fusion_detached"


@cache
def cli(*arguments: str) -> str:
    result = runner.invoke(app, list(arguments))
    assert result.exit_code == 0, result.output
    return result.stdout


def cli_json(*arguments: str) -> dict | list:
    return json.loads(cli(*arguments, "-f", "json"))


def interval(field: dict) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The input rows (first, last per axis) that the measured unit covers by the reported field."""
    first = tuple(-pad + unit * stride for pad, unit, stride in zip(field["padding"], field["unit"], field["stride"],
                                                                     strict=True))
    return first, tuple(start + size - 1 for start, size in zip(first, field["size"], strict=True))


def oracle(field: dict) -> oracle_torch.Support:
    shape = (1, 3, *field["input_size"])
    return oracle_torch.gradient_support(family_models.unaligned_fusion(), shape, tuple(field["unit"]), (2, 3))


def test_an_unaligned_merge_is_measured_and_equals_the_input_gradient_support():
    field = cli_json("rf", SPEC, "-i", "64")["output"]
    assert field["method"] == "measured" and field["input_size"] == [64, 64] and field["unit"] == [15, 15]
    assert field["reason"].startswith("unaligned merge at features.1.add")
    support = oracle(field)
    assert not support.touches_border
    assert interval(field) == (support.first, support.last)
    assert field["size"] == list(support.size) == [13, 13]


def test_a_field_that_reaches_the_border_is_measured_again_on_a_larger_input():
    field = cli_json("rf", SPEC, "-i", "16")["output"]
    assert field["method"] == "measured" and field["input_size"] == [32, 32]
    support = oracle(field)
    assert not support.touches_border
    assert interval(field) == (support.first, support.last)


def test_analytic_rows_stay_analytic_and_only_the_undefined_ones_are_measured():
    stages = cli_json("rf", SPEC, "-i", "64")["stages"]
    assert [stage["method"] for stage in stages] == ["analytic", "measured", "measured"]
    assert stages[0]["size"] == [3, 3]
    assert all(stage["method"] == "analytic" for stage in cli_json("rf", "resnet18")["stages"])


def test_summary_and_compare_carry_the_measured_field_in_json_and_mark_it_in_the_table():
    summary = cli_json("summary", SPEC, "-i", "64")["receptive_field"]
    (row,) = cli_json("compare", SPEC, "-i", "64")
    assert summary == row["receptive_field"] == cli_json("rf", SPEC, "-i", "64")["output"]
    assert "receptive field at the encoder output: 13*, effective stride 3" in cli("summary", SPEC, "-i", "64")
    text = cli("compare", SPEC, "-i", "64")
    assert "13*" in text and "measured, not analytic" in text
    rf_text = cli("rf", SPEC, "-i", "64")
    assert "13*" in rf_text and "* 1, output (2 of 3 rows): measured, not analytic" in rf_text


def test_the_api_gives_the_same_measured_field():
    model = family_models.unaligned_fusion()
    expected = cli_json("rf", SPEC, "-i", "64")["output"]
    assert resnet_inspect.receptive_field(model, 64).to_dict()["output"] == expected
    assert resnet_inspect.summary(model, 64).to_dict()["receptive_field"] == expected
    assert resnet_inspect.compare([model], 64).to_dict()[0]["receptive_field"] == expected


def test_a_model_whose_backward_cannot_reach_the_input_keeps_a_bare_dash_and_says_why():
    document = cli_json("rf", DETACHED, "-i", "64")
    assert document["output"] is None
    assert document["stages"][-1]["reason"].endswith(
        "not measured either: its centre unit does not depend on the input through a differentiable path")
    assert "│ output │    - │" in cli("rf", DETACHED, "-i", "64")
    (row,) = cli_json("compare", DETACHED, "-i", "64")
    assert row["receptive_field"] is None and "not measured either" in row["receptive_field_reason"]


def test_the_measurement_is_memory_guarded(monkeypatch):
    monkeypatch.setattr(memory, "available_memory_bytes", lambda device="cpu": 1024)
    document = json.loads(runner.invoke(app, ["rf", SPEC, "-i", "64", "-f", "json"]).stdout)
    assert document["output"] is None
    assert "measuring the receptive field at 64x64 needs about" in document["stages"][-1]["reason"]


@pytest.mark.parametrize("command", ["rf", "summary", "verify", "compare"])
@pytest.mark.parametrize("spec", [SPEC, DETACHED])
def test_every_command_runs(command, spec):
    cli(command, spec, "-i", "64", "-f", "json")


def test_the_measured_copy_leaves_the_model_alone():
    model = family_models.unaligned_fusion()
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    resnet_inspect.receptive_field(model, 64)
    assert all(torch.equal(before[name], tensor) for name, tensor in model.state_dict().items())
    assert next(model.parameters()).dtype == torch.float32


class InPlaceAfterMerge(torch.nn.Module):
    """The unaligned fusion, then a sigmoid overwritten in place: autograd refuses the backward."""

    def __init__(self) -> None:
        super().__init__()
        self.fusion = family_models.UnalignedFusion()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.sigmoid(self.fusion(x))
        y.mul_(2)
        return y


def test_a_backward_that_fails_leaves_the_field_undefined_and_says_why():
    stage = resnet_inspect.receptive_field(InPlaceAfterMerge(), 32).to_dict()["stages"][-1]
    assert stage["size"] is None and stage["method"] is None
    assert "not measured either: the backward pass fails: RuntimeError: one of the variables needed for gradient " \
           "computation has been modified by an inplace operation" in stage["reason"]
