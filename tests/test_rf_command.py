"""`resnet-inspect rf`, end to end through the CLI: stage rows, JSON contract, --check, --erf, bad input."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from resnet_inspect.cli.app import app
from resnet_inspect.models import get_model, torchvision_key_map

TORCHVISION_LAYOUT = str(Path(__file__).parent / "fixtures" / "tv_resnet.py")  # factories resnet18..101
runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, ["rf", *args])


def invoke_json(*args: str) -> dict:
    result = invoke(*args, "--format", "json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def stage_sizes(report: dict) -> dict[str, int]:
    return {stage["name"]: stage["size"][0] for stage in report["stages"]}


@pytest.fixture(scope="module")
def resnet18_report() -> dict:
    return invoke_json("resnet18")


def test_json_follows_the_contract(resnet18_report):
    assert {"model", "input_shape", "stages", "output", "aligned", "empirical", "erf"} <= set(resnet18_report)
    for stage in resnet18_report["stages"]:
        assert {"name", "size", "stride", "padding", "output_size", "covers_input"} <= set(stage)
    assert resnet18_report["input_shape"] == [1, 3, 224, 224]
    assert resnet18_report["aligned"] is True
    assert resnet18_report["empirical"] is None and resnet18_report["erf"] is None


def test_resnet18_rows_are_the_stem_each_layer_and_the_encoder_output(resnet18_report):
    assert stage_sizes(resnet18_report) == {"stem": 11, "layers.0": 43, "layers.1": 99, "layers.2": 211,
                                            "layers.3": 435, "output": 435}
    assert resnet18_report["output"] == {"size": [435, 435], "stride": [32, 32], "padding": [217, 217],
                                         "global_context": False, "method": "analytic"}
    assert [stage["output_size"] for stage in resnet18_report["stages"]][-1] == [7, 7]


def test_torchvision_layout_file_factory_matches_the_published_resnet50_fields():
    report = invoke_json(f"{TORCHVISION_LAYOUT}:resnet50")
    assert stage_sizes(report) == {"stem": 11, "layer1": 35, "layer2": 91, "layer3": 267, "layer4": 427,
                                   "output": 427}
    assert report["output"]["stride"] == [32, 32]


def test_cifar_models_default_to_their_32x32_input():
    report = invoke_json("resnet20")
    assert report["input_shape"] == [1, 3, 32, 32]
    assert report["stages"][-1]["covers_input"] is True  # 81 pixels seen by every unit of an 8x8 map


def test_rectangular_input_keeps_the_field_and_changes_the_output_size():
    report = invoke_json("resnet18", "-i", "224x320")
    assert report["output"]["size"] == [435, 435]
    assert report["stages"][-1]["output_size"] == [7, 10]


def test_check_agrees_on_every_stage():
    report = invoke_json("resnet20", "--check")
    empirical = report["empirical"]
    assert empirical["agrees"] is True and empirical["size"] == [81, 81]
    assert [stage["size"] for stage in empirical["stages"]] == [stage["size"] for stage in report["stages"]]
    assert all(stage["inside"] for stage in empirical["stages"])


def test_table_shows_one_row_per_stage_and_the_check():
    result = invoke("resnet20", "--check")
    assert result.exit_code == 0, result.output
    for name in ("stem", "layers.0", "layers.1", "layers.2", "output"):
        assert name in result.stdout
    assert "measured" in result.stdout and "agrees with the analysis on every stage" in result.stdout


@pytest.mark.parametrize("fmt", ["csv", "markdown"])
def test_plain_formats_list_every_stage(fmt):
    result = invoke("resnet20", "--format", fmt)
    assert result.exit_code == 0, result.output
    assert result.stdout.count("layers.") == 3


def test_erf_radii_are_ordered_inside_the_field_and_drawn(tmp_path):
    picture = tmp_path / "erf.png"
    result = invoke("resnet20", "--erf", "--erf-samples", "2", "--png", str(picture), "--format", "json")
    assert result.exit_code == 0, result.output
    erf = json.loads(result.stdout)["erf"]
    assert 0 <= erf["r50"] <= erf["r90"] <= erf["r99"] <= (81 - 1) / 2
    assert erf["ratio"] == pytest.approx(erf["r99"] / 40, abs=1e-4)
    assert erf["samples"] == 2 and erf["weights"] == "random (seed 0)"
    data = picture.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", data[16:24]) == (32, 32)


def test_erf_heatmap_is_drawn_in_the_terminal():
    result = invoke("resnet20", "--erf", "--erf-samples", "1")
    assert result.exit_code == 0, result.output
    assert "Effective receptive field" in result.stdout and "█" in result.stdout


def test_torchvision_layout_weights_give_the_same_erf_as_our_layout(tmp_path):
    torch.manual_seed(1)
    model = get_model("resnet20")
    ours, theirs = tmp_path / "ours.pth", tmp_path / "torchvision.pth"
    torch.save(model.state_dict(), ours)
    key_map = torchvision_key_map(model)
    torch.save({key_map[key]: value for key, value in model.state_dict().items()}, theirs)
    erf_ours = invoke_json("resnet20", "--weights", str(ours), "--erf-samples", "1")["erf"]
    erf_theirs = invoke_json("resnet20", "--weights", str(theirs), "--erf-samples", "1")["erf"]
    assert erf_ours["weights"] == str(ours)
    assert [erf_ours[key] for key in ("r50", "r90", "r99")] == [erf_theirs[key] for key in ("r50", "r90", "r99")]


def test_a_network_with_shifted_paths_reports_the_union_and_says_it_is_not_aligned():
    report = invoke_json("tests/fixtures/cnn_zoo.py:shifted", "-i", "16", "--check")
    assert report["aligned"] is False and report["union"] is True
    assert report["output"] == {"size": [3, 3], "stride": [1, 1], "padding": [1, 1], "global_context": False,
                                "method": "analytic"}
    assert report["reasons"] == []
    assert report["empirical"]["agrees"] is True


def test_output_file_gets_the_whole_report(tmp_path):
    target = tmp_path / "rf.json"
    result = invoke("resnet20", "--format", "json", "--output", str(target))
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert json.loads(target.read_text())["output"]["size"] == [81, 81]


# ----------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(("args", "message"), [
    (("resnet19",), "unknown model"),
    (("resnet20", "-i", "0"), "input size"),
    (("resnet20", "-i", "32x"), "input size"),
    (("resnet20", "--erf-samples", "0"), "--erf-samples"),
    (("resnet20", "--in-channels", "0"), "--in-channels"),
    (("resnet20", "--weights", "missing.pth"), "weights file not found"),
    ((f"{TORCHVISION_LAYOUT}:resnet999",), "has no attribute"),
])
def test_bad_input_is_one_line_on_stderr_and_exit_2(args, message):
    result = invoke(*args)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_weights_that_do_not_fit_leave_no_partial_files(tmp_path):
    weights, target, picture = tmp_path / "w.pth", tmp_path / "out.json", tmp_path / "erf.png"
    torch.save({"conv.weight": torch.zeros(1)}, weights)
    result = invoke("resnet20", "--weights", str(weights), "--png", str(picture), "-f", "json", "-o", str(target))
    assert result.exit_code == 2
    assert "do not fit the model" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert sorted(path.name for path in tmp_path.iterdir()) == ["w.pth"]


def test_unwritable_output_fails_before_any_work(tmp_path):
    result = invoke("resnet20", "-o", str(tmp_path / "missing" / "rf.json"))
    assert result.exit_code == 2 and "does not exist" in result.stderr
