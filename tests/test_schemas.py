"""Every command's --format json validates against the JSON Schema the package publishes for it."""

from __future__ import annotations

import json

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
