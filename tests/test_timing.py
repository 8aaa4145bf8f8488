"""The `time` command and the timing library: contracts and errors only, no thresholds (machines are noisy)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import typer
from typer.testing import CliRunner

from resnet_inspect.analysis.timing import (
    LatencyResult,
    check_dtype,
    leaf_modules,
    profile_layers,
    resolve_device,
    time_layers,
    time_model,
)
from resnet_inspect.cli.time_cmd import time_command
from resnet_inspect.errors import BadInputError
from resnet_inspect.models import get_model

FAST = ["-i", "32", "--warmup", "1", "--repeat", "3", "--threads", "1"]


def cli_app() -> typer.Typer:
    """The real application once it registers `time`; until then a local one with the same command."""
    from resnet_inspect.cli.app import app

    if any(command.name == "time" for command in app.registered_commands):
        return app
    local = typer.Typer()
    local.command("time")(time_command)
    local.callback()(lambda: None)
    return local


def invoke(*args: str) -> object:
    return CliRunner().invoke(cli_app(), ["time", *args])


@pytest.fixture(scope="module")
def resnet20() -> torch.nn.Module:
    torch.manual_seed(0)
    return get_model("resnet20")


def test_time_model_reports_median_iqr_and_throughput(resnet20: torch.nn.Module) -> None:
    result = time_model(resnet20, (2, 3, 32, 32), warmup=1, repeat=3, threads=1)
    assert isinstance(result, LatencyResult)
    assert result.batch_size == 2 and result.threads == 1
    assert result.median_ms > 0 and result.iqr_ms >= 0 and result.runs >= 1
    assert result.images_per_s == pytest.approx(2 / (result.median_ms / 1e3))


def test_measured_peak_memory_is_reported_only_on_cuda(resnet20: torch.nn.Module) -> None:
    result = time_model(resnet20, (1, 3, 32, 32), warmup=1, repeat=2)
    assert result.peak_memory_bytes is None  # torch.cuda.max_memory_allocated exists only on CUDA


def test_time_model_restores_the_thread_count(resnet20: torch.nn.Module) -> None:
    before = torch.get_num_threads()
    time_model(resnet20, (1, 3, 32, 32), warmup=0, repeat=1, threads=1)
    assert torch.get_num_threads() == before


def test_time_model_materializes_a_meta_model() -> None:
    with torch.device("meta"):
        meta = get_model("resnet20")
    assert time_model(meta, (1, 3, 32, 32), warmup=0, repeat=1, threads=1).median_ms > 0


def test_layer_times_cover_every_leaf_and_their_shares_add_up(resnet20: torch.nn.Module) -> None:
    layers = time_layers(resnet20, (1, 3, 32, 32), warmup=1, repeat=3, threads=1)
    assert {layer.name for layer in layers} <= {name for name, _ in leaf_modules(resnet20)}
    assert "encoder.gate.conv" in {layer.name for layer in layers}
    assert sum(layer.share for layer in layers) == pytest.approx(1.0)
    assert [layer.median_ms for layer in layers] == sorted((layer.median_ms for layer in layers), reverse=True)


def test_layer_profile_measures_the_hooked_forward(resnet20: torch.nn.Module) -> None:
    profile = profile_layers(resnet20, (1, 3, 32, 32), warmup=0, repeat=2, threads=1)
    assert profile.hooked_model_ms > 0
    assert profile.layers_total_ms == pytest.approx(sum(layer.median_ms for layer in profile.layers))
    assert all(not handle for module in resnet20.modules() for handle in module._forward_hooks.values())


def test_cpu_is_always_available() -> None:
    assert resolve_device(" CPU ") == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_names_the_available_devices() -> None:
    with pytest.raises(BadInputError, match=r"'cuda:1' is not available.*available devices: cpu"):
        resolve_device("cuda:1")


def test_unknown_device_is_refused() -> None:
    with pytest.raises(BadInputError, match="unknown device 'tpu'"):
        resolve_device("tpu")


def test_unknown_dtype_is_refused() -> None:
    with pytest.raises(BadInputError, match="unknown dtype 'int8'"):
        check_dtype("cpu", "int8")


def test_time_command_json_matches_the_contract() -> None:
    result = invoke("resnet18", "--device", "cpu", "-b", "1,2", *FAST, "--format", "json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert {"model", "device", "dtype", "results", "per_layer"} <= set(report)
    assert (report["model"], report["device"], report["dtype"], report["threads"]) == ("resnet18", "cpu", "float32", 1)
    assert report["input_shape"] == [3, 32, 32]
    assert [entry["batch_size"] for entry in report["results"]] == [1, 2]
    for entry in report["results"]:
        assert {"batch_size", "median_ms", "iqr_ms", "images_per_s"} <= set(entry)
        assert entry["images_per_s"] == pytest.approx(entry["batch_size"] * 1e3 / entry["median_ms"])
    assert report["per_layer"] is None


def test_time_command_per_layer_shares_add_up_to_one() -> None:
    result = invoke("resnet20", "--per-layer", *FAST, "--format", "json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    layers = report["per_layer"]
    assert {"name", "type", "median_ms", "share"} <= set(layers[0])
    assert sum(layer["share"] for layer in layers) == pytest.approx(1.0)
    assert report["hook_overhead_ms"] == pytest.approx(report["hooked_model_ms"] - report["results"][0]["median_ms"])


def test_time_command_table_and_output_file(tmp_path: Path) -> None:
    table = invoke("resnet20", *FAST, "--per-layer")
    assert table.exit_code == 0, table.output
    assert "images/s" in table.stdout and "Slowest layers" in table.stdout
    target = tmp_path / "time.json"
    written = invoke("resnet20", *FAST, "-f", "json", "-o", str(target))
    assert written.exit_code == 0 and written.stdout == ""
    assert json.loads(target.read_text())["model"] == "resnet20"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_device_without_cuda_exits_2_with_one_line() -> None:
    result = invoke("resnet18", "--device", "cuda", *FAST)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "cuda" in lines[0] and "available devices: cpu" in lines[0]


@pytest.mark.parametrize("batch_sizes", ["0", "1,0", "-4"])
def test_non_positive_batch_size_exits_2(batch_sizes: str) -> None:
    result = invoke("resnet18", "-b", batch_sizes, *FAST)
    assert result.exit_code == 2
    assert "batch size" in result.stderr


def test_dtype_the_device_cannot_run_exits_2(monkeypatch: pytest.MonkeyPatch) -> None:
    original = torch.nn.functional.conv2d

    def half_unsupported(x: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        if x.dtype is torch.float16:
            raise RuntimeError('"slow_conv2d_cpu" not implemented for \'Half\'')
        return original(x, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "conv2d", half_unsupported)
    result = invoke("resnet18", "--dtype", "float16", *FAST)
    assert result.exit_code == 2
    assert "dtype float16 cannot run on cpu" in result.stderr
