"""`resnet-inspect fit` and `fit_report`: the largest batch that fits, its breakdown, and every refusal."""

from __future__ import annotations

import json
import runpy

import pytest
import torch
from typer.testing import CliRunner

from resnet_inspect.analysis.counting import count
from resnet_inspect.capture import trace
from resnet_inspect.cli.app import app
from resnet_inspect.models import get_model
from resnet_inspect.pipeline.fit import GPU_RESERVE_FIXED_BYTES, default_reserve_bytes, fit_report

MIB = 1 << 20
BRANCHING = '''
import torch
from torch import nn


class WiderAboveEight(nn.Module):
    """Takes another path for batches above 8 that keeps four times the channels: memory is not one line."""

    def __init__(self):
        super().__init__()
        self.narrow, self.wide = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 32, 3, padding=1)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        if x.shape[0] > 8:
            y = self.wide(x)[:, :8]
        else:
            y = self.narrow(x)
        return self.head(torch.relu(y).mean((2, 3)))


def branching():
    return WiderAboveEight()
'''


def fit(*args: str):
    return CliRunner().invoke(app, ["fit", *args])


def inference_peak(model: torch.nn.Module, batch_size: int, input_size: int) -> int:
    """The inference estimate at one batch, as `summary` reports it (one capture of its own)."""
    return count(trace.capture(model, input_size, batch_size)).peak_memory_bytes


def test_inference_fit_is_the_largest_batch_within_the_budget():
    result = fit("resnet20", "--memory", "64MiB", "--reserve", "0", "--format", "json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    batch, budget = report["batch_size"], 64 * MIB
    with torch.device("meta"):
        model = get_model("resnet20")
    assert report["peak_bytes"] == inference_peak(model, batch, 32) <= budget < inference_peak(model, batch + 1, 32)
    assert report["next_peak_bytes"] == inference_peak(model, batch + 1, 32)
    assert sum(report["breakdown"].values()) == report["peak_bytes"]
    assert (report["train"], report["reserve_bytes"], report["memory_source"]) == (False, 0, "--memory")


def test_fit_takes_three_meta_passes(monkeypatch: pytest.MonkeyPatch):
    """Two passes give the line, a third confirms it at the answer; the breakdown reuses that third pass."""
    batches: list[int] = []
    original = trace.capture_inputs  # the capture layer's one entry point (meta first, real tensors if needed)

    def counted(model, inputs, *args, **kwargs):
        batches.append(inputs.shapes[0][0])
        return original(model, inputs, *args, **kwargs)

    monkeypatch.setattr(trace, "capture_inputs", counted)
    report = fit_report("resnet18", 2 << 30, 224)
    assert batches == [1, 2, report.batch_size] and report.search.passes == 3
    assert report.search.affine is True


def test_a_batch_dependent_branch_is_named_and_searched(tmp_path):
    (tmp_path / "branching.py").write_text(BRANCHING)
    result = fit(f"{tmp_path / 'branching.py'}:branching", "-i", "32", "--memory", "2MiB", "--reserve", "0",
                 "--format", "json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["search"]["method"] == "bisection" and report["search"]["affine"] is False
    model = runpy.run_path(str(tmp_path / "branching.py"))["branching"]()
    batch = report["batch_size"]
    assert inference_peak(model, batch, 32) <= 2 * MIB < inference_peak(model, batch + 1, 32)
    table = fit(f"{tmp_path / 'branching.py'}:branching", "-i", "32", "--memory", "2MiB")
    assert "not affine" in table.stdout and "bisection" in table.stdout


def test_even_batch_one_over_the_budget_exits_3_with_one_line():
    result = fit("resnet18", "--memory", "10MiB")
    assert result.exit_code == 3
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: resnet18 does not fit: an inference pass at batch size 1")
    assert "9.5 MiB (--memory 10.0 MiB less 512.0 KiB reserve)" in lines[0] and result.stdout == ""


@pytest.mark.parametrize(("args", "message"), [
    (["--memory", "abc"], "--memory must look like 24GiB"),
    (["--memory", "-1"], "--memory must look like 24GiB"),
    (["--memory", "0"], "--memory must be more than 0 bytes"),
    (["--memory", "1GiB", "--train", "--optimizer", "lion"], "unknown optimizer 'lion'"),
    (["--memory", "1GiB", "--train", "--amp", "bf16", "--dtype", "float16"], "cannot be combined with --dtype float16"),
    (["--memory", "1GiB", "--amp", "bf16"], "--amp applies to a training step: add --train"),
    (["--memory", "1GiB", "--shard", "8"], "--shard applies to a training step: add --train"),
    (["--memory", "1GiB", "--reserve", "2GiB"], "leaves nothing"),
    (["--memory", "1GiB", "--reserve", "lots"], "--reserve must look like"),
    ([], "fit needs --memory on cpu"),
])
def test_bad_input_exits_2_with_one_line(args: list[str], message: str):
    result = fit("resnet18", *args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]


def test_the_reserve_is_a_share_of_the_memory_and_on_a_gpu_the_context_too():
    assert default_reserve_bytes("cpu", 20 << 30) == 1 << 30
    assert default_reserve_bytes("cuda:0", 20 << 30) == GPU_RESERVE_FIXED_BYTES + (1 << 30)


def test_on_a_cuda_device_the_budget_defaults_to_its_free_memory(monkeypatch: pytest.MonkeyPatch):
    """The CUDA path's logic, run on the CPU: the device is listed, its free memory read, the reserve taken off."""
    from resnet_inspect.analysis import timing

    free = 3 << 30
    monkeypatch.setattr(timing, "available_devices", lambda: ["cpu", "cuda:0"])
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free, 80 << 30))
    report = fit_report("resnet20", None, 32, device="cuda:0")
    assert (report.memory_bytes, report.memory_source) == (free, "free memory of cuda:0")
    assert report.reserve_bytes == default_reserve_bytes("cuda:0", free)
    assert report.search.peak_bytes <= free - report.reserve_bytes < report.search.next_peak_bytes
    assert report.to_dict()["budget_bytes"] == free - report.reserve_bytes


def test_fit_train_takes_three_training_passes(monkeypatch: pytest.MonkeyPatch):
    """The training step's timeline gives per-moment lines from batch 1 and 2 (its peak moves from the optimizer
    step at batch 1 to the backward later); the third pass confirms them at the answer."""
    from resnet_inspect.capture import training

    batches: list[int] = []
    original = training.run_training_pass

    def counted(model, inputs, *args, **kwargs):
        batches.append(inputs.args[0].shape[0])
        return original(model, inputs, *args, **kwargs)

    monkeypatch.setattr(training, "run_training_pass", counted)
    report = fit_report("resnet18", 2 << 30, 224, train=True)
    assert batches == [1, 2, report.batch_size] and report.search.passes == 3
    assert report.search.affine is True and report.search.method.value == "line"
    assert report.peak_at is not None and report.peak_at.startswith("the backward of")
    assert sum(report.to_dict()["breakdown"].values()) == report.search.peak_bytes == report.step["peak_bytes"]
