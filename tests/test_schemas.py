"""The published contracts: every command's --format json fits its JSON Schema; CSV holds numbers and words."""

from __future__ import annotations

import csv
import io
import json
import re

import pytest
from jsonschema import Draft202012Validator, ValidationError
from typer.testing import CliRunner

from resnet_inspect.cli.app import app
from resnet_inspect.schemas import COMMANDS, SCHEMA_VERSION, load_schema

# One run per command (and per option that adds keys), small models and sizes so that the suite stays quick.
RUNS = {
    "list": ["list"],
    "summary": ["summary", "resnet18", "-i", "64"],
    "summary --torchinfo --fvcore": ["summary", "resnet20", "--torchinfo", "--fvcore"],
    "verify": ["verify", "resnet18", "-i", "64"],
    "arith": ["arith", "-i", "56", "-k", "3", "-s", "2", "--solve"],
    "arith --transposed": ["arith", "-i", "28", "-k", "3", "-s", "2", "-p", "1", "--transposed",
                           "--output-padding", "1"],
    "rf": ["rf", "resnet50"],
    "rf --check --erf": ["rf", "resnet20", "--check", "--erf", "--erf-samples", "1"],
    "time": ["time", "resnet20", "-b", "1,2", "--warmup", "0", "--repeat", "2", "--per-layer"],
    "compare": ["compare", "resnet18", "resnet20", "--stages"],
    "rf (measured fields)": ["rf", "tests/fixtures/family_models.py:unaligned_fusion", "-i", "16"],
    "rf (a field that cannot be measured)": ["rf", "tests/fixtures/family_models.py:unaligned_fusion_detached",
                                             "-i", "16"],
    "summary (layers on constants)": ["summary", "tests/fixtures/family_models.py:swin_v2_bias_like", "-i", "32"],
    "summary (measured field)": ["summary", "tests/fixtures/family_models.py:unaligned_fusion", "-i", "16"],
    "compare (measured field)": ["compare", "tests/fixtures/family_models.py:unaligned_fusion", "resnet20",
                                 "--stages"],
    "compare --train": ["compare", "resnet20", "--train"],
    "fit": ["fit", "resnet20", "--memory", "64MiB"],
    "time --train": ["time", "resnet20", "--train", "--warmup", "0", "--repeat", "1"],
}


def command_json(arguments: list[str]) -> object:
    result = CliRunner().invoke(app, [*arguments, "--format", "json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.mark.parametrize("command", COMMANDS)
def test_each_published_schema_is_a_valid_draft_2020_12_schema(command: str):
    Draft202012Validator.check_schema(load_schema(command))


@pytest.mark.parametrize("run", RUNS, ids=str)
def test_command_json_validates_against_its_schema_and_carries_the_version(run: str):
    document = command_json(RUNS[run])
    Draft202012Validator(load_schema(run.split()[0])).validate(document)
    entries = document if isinstance(document, list) else [document]
    assert entries and all(entry["schema_version"] == SCHEMA_VERSION for entry in entries)


def test_fractional_strides_and_one_axis_fields_fit_the_schemas(tmp_path):
    """After upsampling the effective stride is a fraction; a Conv1d net has one entry per size list."""
    factory = tmp_path / "nets.py"
    factory.write_text(
        "from torch import nn\n"
        "def upsampled():\n"
        "    return nn.Sequential(nn.Upsample(scale_factor=2), nn.Conv2d(3, 8, 3, padding=1))\n"
        "def signal():\n"
        "    return nn.Sequential(nn.Conv1d(3, 8, 5, stride=2), nn.ReLU(), nn.Conv1d(8, 8, 3))\n"
    )
    upsampled = command_json(["rf", f"{factory}:upsampled", "-i", "16"])
    assert upsampled["output"]["stride"] == [0.5, 0.5]
    Draft202012Validator(load_schema("rf")).validate(upsampled)
    signal = command_json(["summary", f"{factory}:signal", "-i", "64"])
    assert signal["receptive_field"]["size"] == [9]
    Draft202012Validator(load_schema("summary")).validate(signal)


def test_every_command_is_covered_by_a_run():
    assert {run.split()[0] for run in RUNS} == set(COMMANDS)


def test_a_document_missing_a_documented_key_is_rejected():
    document = command_json(["summary", "resnet20"])
    del document["totals"]["macs"]
    with pytest.raises(ValidationError, match="'macs' is a required property"):
        Draft202012Validator(load_schema("summary")).validate(document)


def test_extra_keys_are_allowed_because_keys_are_added_never_renamed():
    document = command_json(["verify", "resnet20"])
    document["a_key_from_a_later_version"] = [1, 2, 3]
    Draft202012Validator(load_schema("verify")).validate(document)


def test_an_unknown_command_has_no_schema():
    with pytest.raises(ValueError, match="no schema for 'inspect'"):
        load_schema("inspect")


# ------------------------------------------------------------------------------------------------ CSV


def command_csv(arguments: list[str], exit_code: int = 0) -> list[list[str]]:
    result = CliRunner().invoke(app, [*arguments, "--format", "csv"])
    assert result.exit_code == exit_code, result.output
    return list(csv.reader(io.StringIO(result.stdout)))


def test_summary_csv_holds_full_names_plain_numbers_and_words():
    rows = command_csv(["summary", "resnet18"])
    assert rows[0] == ["layer", "type", "input", "output", "kernel/stride/pad", "check", "RF", "params", "MACs"]
    assert ["encoder.gate.conv", "Conv2d", "1x3x224x224", "1x64x112x112", "7x7/2 p3", "ok", "7", "9408",
            "118013952"] in rows
    cells = [cell for row in rows for cell in row]
    assert not [cell for cell in cells if re.search(r"\d,\d{3}", cell) or "✓" in cell or "✗" in cell]


def test_verify_csv_says_failed_for_a_layer_that_disagrees():
    rows = command_csv(["verify", "examples/verify_padding.py:seed_style_cnn", "-i", "32"], exit_code=1)
    check = rows[0].index("check")
    assert [row[check] for row in rows[1:]] == ["failed", "ok", "ok", "ok"]


def test_compare_csv_holds_exact_counts_instead_of_units_and_ratios():
    rows = command_csv(["compare", "resnet18", "resnet50"])
    assert rows[0][4:7] == ["params", "MACs", "act. memory (bytes)"]
    assert rows[2][:7] == ["resnet50", "224", "50", "3-4-6-3", "25557032", "4089184256", "150239136"]
