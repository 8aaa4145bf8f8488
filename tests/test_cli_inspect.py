"""The summary, verify, arith and list commands, end to end through the CLI."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from resnet_inspect.cli.app import app
from resnet_inspect.models import list_models, model_spec
from resnet_inspect.ops.arithmetic import conv_output, conv_transpose_output, pool_output
from resnet_inspect.schemas import SCHEMA_VERSION

ZOO = "tests/fixtures/cnn_zoo.py"
runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args))


def invoke_json(*args: str):
    result = invoke(*args, "--format", "json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def resnet50_summary():
    return invoke_json("summary", "resnet50", "--no-fvcore")


def test_summary_resnet50_shows_53_convolutions_and_no_failed_check(resnet50_summary):
    convolutions = [layer for layer in resnet50_summary["layers"] if layer["kind"] == "conv"]
    assert len(convolutions) == 53
    assert {layer["type"] for layer in convolutions} == {"Conv2d", "Conv2dAuto"}
    assert resnet50_summary["arithmetic"] == {"checked": 55, "failed": 0}


def test_summary_resnet50_stem_output_is_1x64x112x112(resnet50_summary):
    stem = next(layer for layer in resnet50_summary["layers"] if layer["name"] == "encoder.gate.conv")
    assert stem["output_shape"] == [1, 64, 112, 112]
    assert stem["arithmetic"] == {"relation": 6, "expected": [112, 112], "observed": [112, 112], "ok": True,
                                  "dropped": [1, 1]}


def test_summary_resnet50_totals(resnet50_summary):
    totals = resnet50_summary["totals"]
    assert totals["params"] == totals["trainable_params"] == 25_557_032
    assert totals["macs"] == 4_089_184_256
    assert totals["param_bytes_by_dtype"] == {"float32": 4 * 25_557_032}
    assert sum(totals["params_by_stage"].values()) == 25_557_032
    assert resnet50_summary["input_shape"] == [1, 3, 224, 224]
    assert resnet50_summary["output_shape"] == [1, 1000]


def test_summary_json_follows_the_contract(resnet50_summary):
    assert {"model", "input_shape", "output_shape", "totals", "arithmetic", "layers"} <= set(resnet50_summary)
    assert {"params", "trainable_params", "macs", "activation_bytes"} <= set(resnet50_summary["totals"])
    for layer in resnet50_summary["layers"]:
        assert {"name", "type", "depth", "input_shape", "output_shape", "params", "macs", "arithmetic"} <= set(layer)
        assert all(isinstance(size, int) for size in layer["output_shape"])


def test_summary_table_shows_the_tree_down_to_depth():
    result = invoke("summary", "resnet18", "--depth", "2", "--no-fvcore")
    assert result.exit_code == 0, result.output
    assert "gate" in result.stdout and "layers" in result.stdout
    assert "conv" not in result.stdout.split("gate", 1)[1].split("\n", 1)[0]
    assert "failed: 0" in result.stdout
    assert "convolutions: 20" in result.stdout


def test_summary_input_size_and_batch_size_reach_the_shapes():
    data = invoke_json("summary", "resnet18", "-i", "97x131", "-b", "2", "--no-fvcore")
    assert data["input_shape"] == [2, 3, 97, 131]
    assert data["arithmetic"]["failed"] == 0


@pytest.mark.parametrize("name", list_models())
def test_verify_passes_on_every_registered_model_at_its_own_size(name):
    size = str(model_spec(name).default_input_size)
    result = invoke("verify", name, "-i", size, "--format", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["failed"] == 0


@pytest.mark.parametrize("size", ["225", "97x131", "33"])
@pytest.mark.parametrize("name", ["resnet18", "resnet50", "resnext50_32x4d", "resnet50_v1"])
def test_verify_passes_on_odd_input_sizes(name, size):
    result = invoke("verify", name, "-i", size)
    assert result.exit_code == 0, result.output


def test_verify_checks_a_layer_that_pads_in_its_own_forward_on_what_it_runs():
    # PaddingLiar declares padding=1 but its forward pads 2 and convolves with padding 0: the check reads the
    # F.pad and F.conv2d it really runs (relation 1 on the padded 24x24), not the attributes it declares.
    result = invoke("verify", f"{ZOO}:liar_cnn", "-i", "20", "--format", "json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    liar = next(layer for layer in data["layers"] if layer["name"].startswith("2."))
    assert (liar["name"], liar["relation"], liar["observed"]) == ("2.conv2d", 1, [22, 22])
    assert data["failed"] == 0


def test_verify_reports_dropped_rows_and_even_kernel_padding():
    data = invoke_json("verify", f"{ZOO}:odd_cnn", "-i", "37")
    assert data["failed"] == 0
    assert any("even kernel" in warning for warning in data["warnings"])
    assert {layer["type"] for layer in data["layers"]} == {"Conv2d", "MaxPool2d", "AvgPool2d", "ConvTranspose2d"}


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["-i", "56", "-k", "3", "-s", "2", "-p", "1"], conv_output(56, 3, 2, 1)),
        (["-i", "224", "-k", "7", "-s", "2", "-p", "3"], conv_output(224, 7, 2, 3)),
        (["-i", "10", "-k", "3", "-s", "2", "-p", "1", "--pool", "--ceil-mode"], pool_output(10, 3, 2, 1, 1, True)),
        (["-i", "7", "-k", "3", "-s", "2", "-p", "1", "--transposed", "--output-padding", "1"],
         conv_transpose_output(7, 3, 2, 1, 1, 1)),
        (["-i", "32", "-k", "3", "-d", "2", "-p", "2"], conv_output(32, 3, 1, 2, 2)),
    ],
)
def test_arith_prints_output_relation_formula_and_dropped(args, expected):
    data = invoke_json("arith", *args)
    assert (data["output"], data["relation"], data["formula"], data["dropped"]) == (
        expected.output, expected.relation, expected.formula, expected.dropped)


def test_arith_agrees_with_torch():
    data = invoke_json("arith", "-i", "57", "-k", "5", "-s", "3", "-p", "2", "-d", "2")
    conv = torch.nn.Conv2d(1, 1, 5, stride=3, padding=2, dilation=2)
    assert data["output"] == conv(torch.zeros(1, 1, 57, 57)).shape[-1]


def test_arith_solve_lists_the_size_preserving_paddings():
    data = invoke_json("arith", "-i", "56", "-k", "3", "--solve")
    assert data["solve"] == {"target": 56, "paddings": [1]}
    data = invoke_json("arith", "-i", "56", "-k", "3", "-s", "2", "--solve")
    assert data["solve"]["target"] == 28 and 1 in data["solve"]["paddings"]


def test_list_json_has_every_name_with_its_exact_parameter_count():
    data = invoke_json("list")
    assert [entry["name"] for entry in data] == list_models()
    by_name = {entry["name"]: entry for entry in data}
    assert by_name["resnet50"] == {"schema_version": SCHEMA_VERSION, "name": "resnet50", "family": "resnet",
                                   "block": "bottleneck", "stages": [3, 4, 6, 3], "params": 25_557_032}
    assert by_name["resnet20"]["params"] == 269_722
    assert by_name["wide_resnet101_2"]["params"] == 126_886_696


@pytest.mark.parametrize("fmt", ["table", "csv", "markdown"])
def test_every_format_renders_verify(fmt):
    result = invoke("verify", "resnet20", "--format", fmt)
    assert result.exit_code == 0
    assert "encoder.gate.conv" in result.stdout


def test_output_file_receives_the_whole_report(tmp_path):
    target = tmp_path / "verify.json"
    result = invoke("verify", "resnet18", "--format", "json", "-o", str(target))
    assert result.exit_code == 0 and result.stdout == ""
    assert json.loads(target.read_text())["failed"] == 0


def test_summary_reports_operations_it_has_no_counting_rule_for():
    data = invoke_json("summary", f"{ZOO}:cumulative", "-i", "8")
    assert data["totals"]["uncounted_ops"] == {"cumsum": 1}
    table = invoke("summary", f"{ZOO}:cumulative", "-i", "8").stdout
    assert "no counting rule (0 MACs assumed) for: cumsum x1" in table


def test_summary_counts_a_spatial_matmul_as_flop_counter_mode_does():
    from torch.utils.flop_counter import FlopCounterMode

    from resnet_inspect.capture.loader import load_model

    data = invoke_json("summary", f"{ZOO}:attention", "-i", "8")
    model, _ = load_model(f"{ZOO}:attention", device=None)
    with FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, 8, 8))
    assert data["totals"]["uncounted_ops"] == {}
    assert 2 * data["totals"]["macs"] == counter.get_total_flops()
