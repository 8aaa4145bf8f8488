"""`resnet-inspect compare`: depth from the graph, one capture per row, and the numbers the summary gives."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from resnet_inspect.analysis.depth import longest_weighted_path, network_depth
from resnet_inspect.capture.loader import load_model
from resnet_inspect.cli.app import app
from resnet_inspect.models import list_models, model_spec
from resnet_inspect.pipeline.build import capture_model, summary_from_capture
from resnet_inspect.pipeline.compare import compare, family_models, row_from_capture
from resnet_inspect.report.compare import BEST

TORCHVISION_LAYOUT = str(Path(__file__).parent / "fixtures" / "tv_resnet.py")
IMAGENET = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]
CIFAR = ["resnet20", "resnet32", "resnet44", "resnet56", "resnet110"]

# The number in each registered name is its depth (He et al. 2015; the variants keep their base depth).
NAMED_DEPTH = {
    "resnet18": 18, "resnet34": 34, "resnet50": 50, "resnet101": 101, "resnet152": 152,
    "resnet50_v1": 50, "resnet101_v1": 101, "resnet152_v1": 152,
    "resnext50_32x4d": 50, "resnext101_32x8d": 101, "wide_resnet50_2": 50, "wide_resnet101_2": 101,
    "resnet20": 20, "resnet32": 32, "resnet44": 44, "resnet56": 56, "resnet110": 110,
}

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, ["compare", *args])


def invoke_json(*args: str) -> list[dict]:
    result = invoke(*args, "--format", "json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def captured(spec: str, size: int | None = None):
    model, name = load_model(spec)
    return capture_model(model, size or model_spec(spec).default_input_size, model_name=name)


@pytest.fixture(scope="module")
def imagenet_rows() -> list[dict]:
    return invoke_json("--family", "imagenet")


# ------------------------------------------------------------------------------------------------ depth


def test_every_registered_model_has_a_named_depth():
    assert set(NAMED_DEPTH) == set(list_models())


@pytest.mark.parametrize("name", list(NAMED_DEPTH))
def test_depth_from_the_graph_is_the_number_in_the_name(name):
    assert network_depth(captured(name)) == NAMED_DEPTH[name]


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "resnext101_32x8d", "resnet56"])
def test_blocks_per_stage_from_the_graph_are_the_registry_stages(name):
    assert row_from_capture(captured(name)).stages == model_spec(name).stages


def test_depth_leaves_out_the_projection_shortcuts():
    capture = captured("resnet50")
    result = longest_weighted_path(capture)
    assert result.weighted_layers == 54  # 53 convolutions (4 of them 1x1 projections) and the fc
    assert result.depth == 50
    layers = result.layer_names(capture)
    assert layers[0] == "encoder.gate.conv" and layers[-1] == "decoder.fc"
    assert not [name for name in layers if "shortcut" in name]


def test_depth_of_a_factory_comes_from_its_graph_not_its_names():
    model, name = load_model(f"{TORCHVISION_LAYOUT}:resnet50")
    row = row_from_capture(capture_model(model, 224, model_name=name))
    assert row.depth == 50
    assert row.stages == (3, 4, 6, 3)


# ---------------------------------------------------------------------------------------------- the rows


def test_imagenet_family_is_the_five_torchvision_depths_in_order(imagenet_rows):
    assert [row["model"] for row in imagenet_rows] == IMAGENET
    assert [row["depth"] for row in imagenet_rows] == [18, 34, 50, 101, 152]
    assert [row["stages"] for row in imagenet_rows] == [[2, 2, 2, 2], [3, 4, 6, 3], [3, 4, 6, 3], [3, 4, 23, 3],
                                                        [3, 8, 36, 3]]


def test_imagenet_parameters_and_macs_are_torchvisions(imagenet_rows):
    assert [row["params"] for row in imagenet_rows] == [11_689_512, 21_797_672, 25_557_032, 44_549_160, 60_192_808]
    assert [round(row["macs"] / 1e9, 3) for row in imagenet_rows] == [1.814, 3.664, 4.089, 7.801, 11.514]


def test_imagenet_receptive_fields_are_the_published_ones(imagenet_rows):
    assert [row["receptive_field"]["size"] for row in imagenet_rows][:4] == [[435, 435], [899, 899], [427, 427],
                                                                             [971, 971]]
    assert all(row["receptive_field"]["stride"] == [32, 32] for row in imagenet_rows)
    assert [row["output_shape"] for row in imagenet_rows] == [[1, 512, 7, 7]] * 2 + [[1, 2048, 7, 7]] * 3


@pytest.mark.parametrize(("name", "size"), [("resnet18", 224), ("resnet50", 320), ("resnet20", 32)])
def test_macs_and_receptive_field_match_the_summary(name, size):
    row = invoke_json(name, "-i", str(size))[0]
    summary = summary_from_capture(captured(name, size)).to_dict()
    assert row["macs"] == summary["totals"]["macs"]
    assert row["params"] == summary["totals"]["params"]
    assert row["activation_bytes"] == summary["totals"]["activation_bytes"]
    assert row["receptive_field"] == summary["receptive_field"]


def test_json_follows_the_contract(imagenet_rows):
    contract = {"model", "input_shape", "depth", "stages", "params", "macs", "activation_bytes", "receptive_field",
                "output_shape", "latency_ms"}
    for row in imagenet_rows:
        assert contract <= set(row)
        assert set(row["receptive_field"]) == {"size", "stride", "padding", "global_context"}
        assert row["input_shape"] == [1, 3, 224, 224]
        assert row["latency_ms"] is None
        assert all(isinstance(blocks, int) for blocks in row["stages"])


def test_cifar_models_default_to_their_own_input_size():
    rows = invoke_json("resnet18", "resnet20")
    assert [row["input_shape"] for row in rows] == [[1, 3, 224, 224], [1, 3, 32, 32]]
    assert rows[1]["output_shape"] == [1, 64, 8, 8]
    assert rows[1]["params"] == 269_722


def test_cifar_family_depths_and_fields():
    rows = invoke_json("--family", "cifar")
    assert [row["model"] for row in rows] == CIFAR
    assert [row["depth"] for row in rows] == [20, 32, 44, 56, 110]
    assert [row["stages"] for row in rows] == [[3, 3, 3], [5, 5, 5], [7, 7, 7], [9, 9, 9], [18, 18, 18]]
    assert rows[0]["receptive_field"] == {"size": [81, 81], "stride": [4, 4], "padding": [40, 40],
                                          "global_context": False}


def test_family_all_is_every_registered_name():
    assert family_models("all") == list_models()


def test_factories_default_to_224():
    row = invoke_json(f"{TORCHVISION_LAYOUT}:resnet18")[0]
    assert row["input_shape"] == [1, 3, 224, 224]
    assert row["depth"] == 18 and row["stages"] == [2, 2, 2, 2]


# ------------------------------------------------------------------------------------------- input sizes


def test_one_model_across_input_sizes_grows_macs_and_memory_but_not_the_field():
    rows = invoke_json("resnet50", "-i", "128,224,320,448")
    assert [row["input_shape"][2:] for row in rows] == [[128, 128], [224, 224], [320, 320], [448, 448]]
    macs = [row["macs"] for row in rows]
    assert macs[1] == 4_089_184_256
    assert macs == sorted(macs) and len(set(macs)) == 4
    memory = [row["activation_bytes"] for row in rows]
    assert memory == sorted(memory) and len(set(memory)) == 4
    assert {row["receptive_field"]["size"][0] for row in rows} == {427}
    assert [row["output_shape"][2] for row in rows] == [4, 7, 10, 14]
    assert [row["receptive_field_input_ratio"][0] for row in rows] == [427 / 128, 427 / 224, 427 / 320, 427 / 448]


def test_several_models_and_sizes_give_every_combination_model_first():
    rows = invoke_json("resnet18", "resnet34", "-i", "128,224")
    assert [(row["model"], row["input_shape"][2]) for row in rows] == [
        ("resnet18", 128), ("resnet18", 224), ("resnet34", 128), ("resnet34", 224)]


def test_one_capture_per_model_per_size(monkeypatch):
    import resnet_inspect.capture.trace as trace

    shapes = []
    original = trace.run_capture

    def counting(model, inputs, *args, **kwargs):
        shapes.append(inputs.shapes[0])
        return original(model, inputs, *args, **kwargs)

    monkeypatch.setattr(trace, "run_capture", counting)
    compare(["resnet18", "resnet20"], [(64, 64), (96, 96)], show_stages=True)
    assert shapes == [(1, 3, 64, 64), (1, 3, 96, 96)] * 2


# --------------------------------------------------------------------------------------- tables, ratios


def test_ratios_are_against_the_first_model():
    rows = invoke_json("resnet18", "resnet50")
    assert rows[0]["vs_first"]["macs"] == 1
    assert rows[1]["vs_first"]["macs"] == 4_089_184_256 / 1_814_073_344
    table = invoke("resnet18", "resnet50", "-f", "markdown").stdout
    resnet50 = next(line for line in table.splitlines() if line.startswith("| resnet50 "))
    assert "4.089 G  x2.25" in resnet50 and "25.56 M  x2.19" in resnet50


def test_best_value_of_each_column_is_highlighted():
    document = compare(["resnet18", "resnet34", "resnet50"]).document()
    headers = [column.header for column in document.tables[0].columns]
    best = {header: [row[0] for row in document.tables[0].rows if getattr(row[position], "style", None) == BEST]
            for position, header in enumerate(headers)}
    assert best["params"] == best["MACs"] == best["act. memory"] == ["resnet18"]
    assert best["RF"] == ["resnet34"]  # 899 against 435 and 427


def test_a_column_whose_rows_agree_has_no_best_value():
    document = compare(["resnet50"], [(128, 128), (224, 224)]).document()
    headers = [column.header for column in document.tables[0].columns]
    styles = {header: {getattr(row[position], "style", None) for row in document.tables[0].rows}
              for position, header in enumerate(headers)}
    assert styles["params"] == styles["RF"] == {None}  # the same weights and field at both sizes
    assert styles["MACs"] == {BEST, None}


def test_stages_table_shows_each_stage_field_and_share_of_macs():
    result = invoke("resnet18", "resnet50", "--stages", "-f", "csv")
    assert result.exit_code == 0, result.output
    main, stages = result.stdout.split("\n\n")
    assert main.startswith("# Comparison of resnet18, resnet50\n")
    assert stages.startswith("# Stages\n")
    rows = list(csv.DictReader(io.StringIO(stages.split("\n", 1)[1])))
    resnet18 = {row["stage"]: row for row in rows if row["model"] == "resnet18"}
    assert list(resnet18) == ["stem", "layers.0", "layers.1", "layers.2", "layers.3", "head"]
    assert [resnet18[name]["RF"] for name in ("layers.0", "layers.1", "layers.2", "layers.3")] == \
        ["43", "99", "211", "435"]
    assert resnet18["layers.3"]["output"] == "1x512x7x7"
    shares = [float(row["MACs share"].rstrip("%")) for row in rows if row["model"] == "resnet50"]
    assert sum(shares) == pytest.approx(100, abs=0.5)


def test_stage_details_in_json_add_up_to_the_total_macs(imagenet_rows):
    for row in imagenet_rows:
        assert sum(stage["macs"] for stage in row["stage_details"]) == row["macs"]


def test_without_stages_there_is_one_table():
    result = invoke("resnet18", "-f", "csv")
    assert result.exit_code == 0 and "# Stages" not in result.stdout


def test_time_adds_latency_and_throughput():
    rows = invoke_json("resnet20", "--time", "--warmup", "0", "--repeat", "1")
    assert rows[0]["latency_ms"] > 0 and rows[0]["images_per_s"] > 0
    assert rows[0]["device"] == "cpu"


# -------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(("args", "message"), [
    (["resnet19"], "unknown model 'resnet19'"),
    (["resnet18", "-i", "0"], "input size must be positive"),
    (["resnet18", "-i", "224,abc"], "input size"),
    (["resnet18", "--time", "--device", "tpu"], "unknown device"),
    ([], "nothing to compare"),
    (["--family", "mobile"], "mobile"),
])
def test_bad_input_is_one_line_on_stderr_and_exit_2(args, message):
    result = invoke(*args)
    assert result.exit_code == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_no_partial_output_file(tmp_path):
    target = tmp_path / "compare.json"
    result = invoke("resnet18", "resnet19", "-f", "json", "-o", str(target))
    assert result.exit_code == 2 and not target.exists()
    missing = tmp_path / "missing" / "compare.json"
    result = invoke("resnet18", "-o", str(missing))
    assert result.exit_code == 2 and "does not exist" in result.stderr and not missing.exists()


def test_output_file_holds_the_whole_report(tmp_path):
    target = tmp_path / "compare.json"
    result = invoke("resnet20", "resnet32", "-f", "json", "-o", str(target))
    assert result.exit_code == 0 and result.stdout == ""
    assert [row["model"] for row in json.loads(target.read_text())] == ["resnet20", "resnet32"]
