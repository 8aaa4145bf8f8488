"""Where the training cost shows beyond `summary --train`: `compare --train` and the HTML page's saved-bytes chart."""

from __future__ import annotations

import json
import re

import pytest
from typer.testing import CliRunner

import resnet_inspect
from resnet_inspect.cli.app import app
from resnet_inspect.render.html import stage_values

runner = CliRunner()


def run(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.fixture(scope="module")
def compared() -> list[dict]:
    return json.loads(run("compare", "resnet18", "resnet20", "--train", "--optimizer", "momentum", "-b", "4",
                          "--format", "json"))


def test_compare_train_rows_are_each_models_training_step(compared):
    for entry in compared:
        size = entry["input_shape"][2]
        step = resnet_inspect.training_memory(entry["model"], size, batch_size=4, optimizer="momentum")
        assert entry["train_peak_bytes"] == step.peak_bytes and entry["saved_bytes"] == step.saved_bytes
        assert entry["training"] == step.to_dict()
        totals = resnet_inspect.summary(entry["model"], size, batch_size=4, train=True,
                                        optimizer="momentum").to_dict()["totals"]
        assert entry["backward_macs"] == totals["backward_macs"]
    first, second = compared
    assert second["vs_first"]["train_peak_bytes"] == pytest.approx(second["train_peak_bytes"]
                                                                   / first["train_peak_bytes"])


def test_compare_train_adds_three_columns_and_says_what_they_are():
    table = run("compare", "resnet18", "resnet20", "--train")
    assert all(header in table for header in ("bwd MACs", "saved", "train peak"))
    assert "train peak: estimated peak of one training step at batch 1 (adamw, float32)" in table


def test_compare_without_train_has_the_keys_empty():
    entry = json.loads(run("compare", "resnet20", "--format", "json"))[0]
    assert (entry["backward_macs"], entry["saved_bytes"], entry["train_peak_bytes"], entry["training"]) == (
        None, None, None, None)


def test_compare_train_options_need_train():
    result = runner.invoke(app, ["compare", "resnet20", "--optimizer", "sgd"])
    assert result.exit_code == 2 and "--optimizer applies to a training step: add --train" in result.stderr


@pytest.fixture(scope="module")
def trained_page(tmp_path_factory) -> tuple[str, dict]:
    target = tmp_path_factory.mktemp("html") / "resnet18.html"
    run("summary", "resnet18", "--train", "--format", "html", "-o", str(target))
    return target.read_text(), json.loads(run("summary", "resnet18", "--train", "--format", "json"))


def test_the_page_charts_each_stages_saved_bytes_from_its_layers(trained_page):
    html, report = trained_page
    bars = {name: (int(saved), int(macs)) for name, saved, macs in re.findall(
        r'<g class="saved-bar" data-stage="([^"]+)" data-saved-bytes="(\d+)" data-macs="(\d+)">', html)}
    layers = {layer["name"]: layer for layer in report["layers"]}
    stages = [name for name in report["totals"]["params_by_stage"] if name not in ("stem", "head")]
    assert list(bars) == ["stem", *stages, "head"]
    for stage in stages:
        assert bars[stage] == (layers[stage]["saved_bytes"], layers[stage]["macs"])
    assert sum(saved for saved, _ in bars.values()) == report["totals"]["saved_bytes"]
    assert bars["encoder.layers.0"][0] > bars["encoder.layers.3"][0]  # early stages keep the large maps
    assert "Saved for backward per stage" in html and "MiB/GMAC" in html


def test_the_page_without_train_has_no_saved_chart(tmp_path):
    target = tmp_path / "plain.html"
    run("summary", "resnet20", "--format", "html", "-o", str(target))
    assert "saved-bar" not in target.read_text()


def test_stage_values_give_the_stem_and_head_what_the_stages_leave():
    summary = {
        "totals": {"saved_bytes": 100, "params_by_stage": {"stem": 1, "body.0": 2, "body.1": 3, "head": 4}},
        "layers": [
            {"name": "gate", "depth": 1, "saved_bytes": 10},
            {"name": "gate.conv", "depth": 2, "saved_bytes": 8},
            {"name": "body", "depth": 1, "saved_bytes": 70},
            {"name": "body.0", "depth": 2, "saved_bytes": 50},
            {"name": "body.1", "depth": 2, "saved_bytes": 20},
            {"name": "fc", "depth": 1, "saved_bytes": 5},
        ],
    }
    assert stage_values(summary, "saved_bytes") == {"stem": 10, "body.0": 50, "body.1": 20, "head": 20}
