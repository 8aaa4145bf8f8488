"""The Python API, called as a torchinfo user would, gives the CLI's numbers and reports that read and query well."""

from __future__ import annotations

import builtins
import json
from html.parser import HTMLParser

import pytest
import torch
from rich.console import Console
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from typer.testing import CliRunner

import resnet_inspect
from resnet_inspect.cli.app import app
from resnet_inspect.models import get_model


def cli_json(*arguments: str) -> dict:
    result = CliRunner().invoke(app, [*arguments, "--format", "json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def numbers(document: dict) -> dict:
    """What the CLI and the API must agree on: totals, arithmetic, receptive field and every layer."""
    return {key: document[key] for key in ("input_shape", "output_shape", "totals", "arithmetic", "receptive_field",
                                           "layers")}


@pytest.fixture(scope="module")
def resnet18_cli() -> dict:
    return cli_json("summary", "resnet18")


class TwoInputs(nn.Module):
    """Two images through two stems, added: a model with two positional inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.left = nn.Conv2d(3, 8, 3, padding=1)
        self.right = nn.Conv2d(3, 8, 5, stride=1, padding=2)
        self.head = nn.Linear(8, 10)

    def forward(self, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        merged = self.left(left) + self.right(right)
        return self.head(merged.mean(dim=(2, 3)))


# ------------------------------------------------------------------------------------------ the calls


@pytest.mark.parametrize("input_size", [(1, 3, 224, 224), 224, (224, 224)], ids=str)
def test_summary_of_a_module_at_a_full_shape_or_a_spatial_size_gives_the_cli_numbers(input_size, resnet18_cli):
    report = resnet_inspect.summary(get_model("resnet18"), input_size)
    assert numbers(report.to_dict()) == numbers(resnet18_cli)


def test_summary_of_a_name_gives_the_cli_json_exactly(resnet18_cli):
    assert resnet_inspect.summary("resnet18").to_dict() == resnet18_cli


def test_summary_with_input_data_gives_the_cli_numbers_at_that_batch_and_size():
    report = resnet_inspect.summary(get_model("resnet18"), input_data=torch.randn(2, 3, 64, 64))
    assert numbers(report.to_dict()) == numbers(cli_json("summary", "resnet18", "-i", "64", "-b", "2"))


def test_summary_of_a_two_input_model_counts_both_branches_as_torch_does():
    model = TwoInputs()
    report = resnet_inspect.summary(model, input_size=[(1, 3, 64, 64), (1, 3, 64, 64)])
    with FlopCounterMode(display=False) as counter:
        model(torch.randn(1, 3, 64, 64), torch.randn(1, 3, 64, 64))
    assert report.total("flops") == counter.get_total_flops()
    assert report.total("macs") == 64 * 64 * 8 * 3 * (9 + 25) + 8 * 10
    assert report.layer("right")["input_shape"] == [1, 3, 64, 64]


def test_summary_with_a_tuple_of_input_data_feeds_forward_positionally():
    model = TwoInputs()
    by_data = resnet_inspect.summary(model, input_data=(torch.randn(1, 3, 32, 32), torch.randn(1, 3, 32, 32)))
    by_size = resnet_inspect.summary(model, [(1, 3, 32, 32), (1, 3, 32, 32)])
    assert by_data.total("macs") == by_size.total("macs") == 32 * 32 * 8 * 3 * (9 + 25) + 8 * 10


def test_dtype_analyses_the_model_as_if_converted_and_leaves_it_as_it_was():
    model = get_model("resnet18")
    single = resnet_inspect.summary(model, 224)
    half = resnet_inspect.summary(model, 224, dtype=torch.float16)
    assert half.total("param_bytes") == 2 * 11_689_512 == single.total("param_bytes") // 2
    assert half.total("activation_bytes") * 2 == single.total("activation_bytes")
    assert half.total("macs") == single.total("macs")
    assert resnet_inspect.summary(model, 224, dtype="bfloat16").total("param_bytes_by_dtype") == {
        "bfloat16": 2 * 11_689_512}
    assert all(parameter.dtype == torch.float32 for parameter in model.parameters())


def test_inspect_stays_an_alias_of_summary():
    model = get_model("resnet20")
    assert resnet_inspect.inspect(model, 32).to_dict() == resnet_inspect.summary(model, 32).to_dict()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"input_size": (224,)}, r"^input_size must be a spatial size \(224 or \(224, 320\)\), a full shape"),
        ({"input_size": 224.0}, "input_size must be a spatial size"),
        ({"input_size": "224"}, "input_size must be a spatial size"),
        ({"input_size": (224, -1)}, "not a positive int"),
        ({"input_size": [(1, 3, 32, 32), (32, 32)]}, "each shape of a list needs batch, channels"),
        ({"input_data": [1, 2]}, "input_data must be a tensor, a tuple or list of tensors"),
        ({"input_size": 32, "input_data": torch.zeros(1, 3, 32, 32)}, "give input_size or input_data, not both"),
        ({"input_size": 32, "batch_size": 0}, "batch_size must be positive, got 0"),
        ({"input_size": 32, "depth": 0}, "depth must be positive, got 0"),
        ({"input_size": 32, "dtype": "float33"}, "dtype must be a torch.dtype or its name"),
    ],
)
def test_bad_arguments_raise_a_value_error_that_says_what_was_expected(arguments, message):
    with pytest.raises(ValueError, match=message):
        resnet_inspect.summary(get_model("resnet20"), **arguments)


def test_a_model_that_is_neither_a_module_nor_a_name_is_refused():
    with pytest.raises(ValueError, match=r"model must be an nn\.Module or a model name, got int"):
        resnet_inspect.summary(42)


# ------------------------------------------------------------------------------------------ reading a report


def test_repr_and_str_are_the_table_with_its_totals():
    report = resnet_inspect.summary("resnet50")
    text = repr(report)
    assert text == str(report)
    assert text.startswith("resnet50: input 1x3x224x224")
    assert "│   layers.0 │ ResNetLayer" in text
    assert "MACs: 4,089,184,256 (4.089 G)" in text


@pytest.mark.slow
def test_repr_of_resnet152_at_the_default_depth_stays_under_20_kb():
    report = resnet_inspect.summary("resnet152")
    assert len(repr(report).encode()) < 20_000
    assert len(report.to_dict()["layers"]) > 500  # the JSON keeps every layer


def test_depth_limits_the_table_only():
    shallow = resnet_inspect.summary("resnet20", depth=1)
    assert "layers.0" not in repr(shallow)
    assert shallow.to_dict() == resnet_inspect.summary("resnet20").to_dict()


def test_rich_print_shows_the_same_table():
    report = resnet_inspect.summary("resnet20", depth=2)
    console = Console(width=240, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    console.print(report)
    printed = [line.rstrip() for line in console.export_text().strip().splitlines()]
    assert printed == repr(report).strip().splitlines()


class TableReader(HTMLParser):
    """Reads back the cells of every <table> row, with the number of tables seen."""

    def __init__(self) -> None:
        super().__init__()
        self.tables, self.rows, self.section = 0, {"thead": [], "tbody": [], "tfoot": []}, "tbody"
        self.cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag == "table":
            self.tables += 1
        elif tag in self.rows:
            self.section = tag
        elif tag == "tr":
            self.rows[self.section].append([])
        elif tag in ("td", "th"):
            self.cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self.cell is not None:
            self.rows[self.section][-1].append("".join(self.cell))
            self.cell = None

    def handle_data(self, data: str) -> None:
        if self.cell is not None:
            self.cell.append(data)


def test_repr_html_is_one_table_that_reads_back_with_the_same_rows_and_check_marks():
    report = resnet_inspect.summary("resnet18", depth=3)
    reader = TableReader()
    reader.feed(report._repr_html_())
    table = report.document().tables[0]
    assert reader.tables == 1
    assert reader.rows["thead"] == [[column.header for column in table.columns]]
    expected = [[cell if isinstance(cell, str) else cell.text for cell in row] for row in table.rows]
    assert reader.rows["tbody"] == expected
    assert ["    conv", "Conv2d", "1x3x224x224", "1x64x112x112", "7x7/2 p3", "✓ (6)", "7", "9,408",
            "118,013,952"] in reader.rows["tbody"]
    assert ["MACs: 1,814,073,344 (1.814 G)   FLOPs = 2 x MACs: 3,628,146,688"] in reader.rows["tfoot"]


def test_a_failed_check_is_red_in_the_html():
    report = resnet_inspect.verify("examples/verify_padding.py:seed_style_cnn", 32)
    assert report.failed == 1
    assert 'font-weight: bold; color: #c00">✗</td>' in report._repr_html_()


# ------------------------------------------------------------------------------------------ queries


@pytest.fixture(scope="module")
def resnet50() -> resnet_inspect.api.SummaryReport:
    return resnet_inspect.summary(get_model("resnet50"), 224)


def test_total_reads_one_total_by_its_json_name(resnet50):
    assert (resnet50.total("macs"), resnet50.total("params")) == (4_089_184_256, 25_557_032)
    with pytest.raises(KeyError, match="no total named 'mac'; the totals are params, trainable_params, macs"):
        resnet50.total("mac")


def test_layer_is_one_layers_record_and_a_typo_gets_suggestions(resnet50):
    stem_conv = resnet50.layer("encoder.gate.conv")
    assert (stem_conv["params"], stem_conv["macs"], stem_conv["arithmetic"]["relation"]) == (9408, 118_013_952, 6)
    assert resnet50.layer("encoder.layers.0")["receptive_field"]["size"] == [35, 35]
    with pytest.raises(KeyError, match=r"did you mean encoder\.layers\.0"):
        resnet50.layer("encoder.layer.0")


def test_by_module_lists_the_modules_down_to_a_depth_with_their_inclusive_macs(resnet50):
    modules = resnet50.by_module(depth=2)
    assert list(modules) == ["encoder", "encoder.gate", "encoder.layers.0", "encoder.layers.1", "encoder.layers.2",
                             "encoder.layers.3", "decoder", "decoder.avg", "decoder.fc"]
    stages = ["encoder.gate", *(f"encoder.layers.{index}" for index in range(4))]
    assert sum(modules[name]["macs"] for name in stages) == modules["encoder"]["macs"]
    assert modules["encoder"]["macs"] + modules["decoder"]["macs"] == resnet50.total("macs")


def test_stages_give_blocks_fields_and_macs_per_stage(resnet50):
    stages = resnet50.stages
    assert [stage["name"] for stage in stages] == ["stem", "layers.0", "layers.1", "layers.2", "layers.3", "head"]
    assert [stage["blocks"] for stage in stages] == [0, 3, 4, 6, 3, 0]
    assert [stage["receptive_field"]["size"][0] for stage in stages[:5]] == [11, 35, 91, 267, 427]
    assert sum(stage["macs"] for stage in stages) == resnet50.total("macs")


def test_receptive_field_is_the_encoder_outputs(resnet50):
    assert resnet50.receptive_field["size"] == [427, 427]
    assert resnet50.receptive_field["stride"] == [32, 32]


def test_to_json_writes_the_cli_json(tmp_path, resnet18_cli):
    path = tmp_path / "resnet18.json"
    text = resnet_inspect.summary("resnet18").to_json(path)
    assert json.loads(path.read_text()) == json.loads(text) == resnet18_cli


def test_to_dataframe_has_one_row_per_layer_with_flattened_columns(resnet50):
    frame = resnet50.to_dataframe()
    assert len(frame) == len(resnet50.to_dict()["layers"])
    row = frame[frame["name"] == "encoder.gate.conv"].iloc[0]
    assert (row["macs"], row["arithmetic.relation"]) == (118_013_952, 6)


def test_to_dataframe_without_pandas_says_how_to_get_it(monkeypatch, resnet50):
    real_import = builtins.__import__

    def no_pandas(name, *args, **kwargs):
        if name == "pandas":
            raise ImportError("No module named 'pandas'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pandas)
    with pytest.raises(ImportError, match=r"to_dataframe\(\) needs pandas.*pip install pandas"):
        resnet50.to_dataframe()


# ------------------------------------------------------------------------------------------ the other functions


def test_verify_takes_a_module_or_a_name():
    by_module = resnet_inspect.verify(get_model("resnet18"), 224).to_dict()
    assert by_module["checked"] == 22 and by_module["failed"] == 0
    assert resnet_inspect.verify("resnet18").to_dict() == cli_json("verify", "resnet18")


def test_receptive_field_takes_a_module_or_a_name():
    by_module = resnet_inspect.receptive_field(get_model("resnet50_v1"), 224)
    assert by_module.to_dict()["output"]["size"] == [483, 483]
    assert resnet_inspect.receptive_field("resnet50").to_dict() == cli_json("rf", "resnet50")


def test_receptive_field_check_of_a_module_agrees_with_its_gradients():
    report = resnet_inspect.receptive_field(get_model("resnet20"), 32, check=True)
    assert report.empirical is not None and report.empirical.agrees is True


def test_compare_takes_modules_and_names_side_by_side():
    report = resnet_inspect.compare([get_model("resnet18"), "resnet50"])
    entries = report.to_dict()
    assert [entry["model"] for entry in entries] == ["ResNet", "resnet50"]
    assert [entry["macs"] for entry in entries] == [1_814_073_344, 4_089_184_256]
    labelled = resnet_inspect.compare({"small": get_model("resnet18"), "big": get_model("resnet18")}, 64)
    assert [entry["model"] for entry in labelled.to_dict()] == ["small", "big"]


def test_compare_numbers_two_modules_of_one_class():
    entries = resnet_inspect.compare([get_model("resnet20"), get_model("resnet32")]).to_dict()
    assert [entry["model"] for entry in entries] == ["ResNet", "ResNet #2"]
    assert [entry["params"] for entry in entries] == [269_722, 464_154]


def test_time_model_times_a_module_without_changing_it():
    model = get_model("resnet20").train()
    report = resnet_inspect.time_model(model, [1, 2], 32, warmup=0, repeat=2)
    assert [result["batch_size"] for result in report.to_dict()["results"]] == [1, 2]
    assert report.model == "ResNet" and model.training


def test_time_model_refuses_an_unknown_dtype():
    with pytest.raises(ValueError, match=r"dtype must be a torch.dtype or its name \(float32, bfloat16, float16\)"):
        resnet_inspect.time_model("resnet20", dtype="float64")


# ------------------------------------------------------------------------------------------ torchinfo


def test_torchinfo_mult_adds_are_our_macs_plus_batchnorm_parameters_and_fc_biases(resnet50):
    report = resnet_inspect.summary(get_model("resnet50"), 224, torchinfo=True)
    totals = report.to_dict()["totals"]
    assert totals["torchinfo_mult_adds"] == 4_089_238_376 == 4_089_184_256 + 53_120 + 1_000
    assert totals["torchinfo_params"] == 25_557_032
    footer = report.document().tables[0].footer
    assert "  + 53,120 BatchNorm parameters: torchinfo counts each BatchNorm parameter once per image as a " \
           "Mult-Add; we count no MACs for BatchNorm" in footer
    assert any(line.startswith("  + 1,000 biases:") for line in footer)
    assert not any("not explained" in line for line in footer)


class SequenceAndFunctional(nn.Module):
    """A biased conv, a functional conv written in forward, then a Linear over a (N, T, F) tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.weight = nn.Parameter(torch.randn(8, 8, 3, 3))
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.conv2d(self.conv(x), self.weight)
        return self.fc(x.flatten(2).transpose(1, 2))


def test_torchinfo_differences_for_biases_3d_linear_layers_and_functional_convolutions_add_up():
    import torchinfo

    model = SequenceAndFunctional()
    report = resnet_inspect.summary(model, (1, 3, 16, 16), torchinfo=True)
    reference = torchinfo.summary(model, input_size=(1, 3, 16, 16), verbose=0).total_mult_adds
    totals = report.to_dict()["totals"]
    assert totals["torchinfo_mult_adds"] == reference
    differences = report.torchinfo.differences
    assert differences["biases"] == 8 * 14 * 14  # one per output position of the biased conv
    assert differences["functional convolutions"] == -(8 * 8 * 9 * 12 * 12)
    # torchinfo: batch x (32 weights + 4 biases); ours: 144 positions x 32 MACs
    assert differences["Linear layers on 3-D tensors"] == 36 - 144 * 32
    assert reference == totals["macs"] + sum(differences.values())
    footer = "\n".join(report.document().tables[0].footer)
    assert "Linear layers on 3-D tensors" in footer and "functional convolutions" in footer


def test_summary_torchinfo_in_the_cli_adds_columns_and_the_json_total():
    result = CliRunner().invoke(app, ["summary", "resnet50", "--torchinfo", "--depth", "1"])
    assert result.exit_code == 0, result.output
    assert "torchinfo Mult-Adds" in result.stdout
    assert "torchinfo: 25,557,032 parameters, 4,089,238,376 Mult-Adds = our MACs 4,089,184,256" in result.stdout
    assert cli_json("summary", "resnet50", "--torchinfo")["totals"]["torchinfo_mult_adds"] == 4_089_238_376


def test_summary_on_cpu_runs_the_pass_for_real_and_agrees_with_the_meta_trace():
    model = resnet_inspect.get_model("resnet18")
    traced = resnet_inspect.summary(model, 64).to_dict()
    real = resnet_inspect.summary(model, 64, device="cpu").to_dict()
    assert real["totals"] == traced["totals"]
    assert [layer["output_shape"] for layer in real["layers"]] == [layer["output_shape"] for layer in traced["layers"]]
    with pytest.raises(ValueError, match="unknown device"):
        resnet_inspect.summary(model, 64, device="no-such-device")
