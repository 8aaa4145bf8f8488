"""A picture of the step: the memory timeline by kind, against the step's peak and a live-storage tracker on a
real CPU step (tests/oracle_live.py)."""

from __future__ import annotations

import pytest
import torch
from oracle_live import backward_bounds

from resnet_inspect.analysis.timeline import KINDS, memory_timeline
from resnet_inspect.analysis.training import step_memory
from resnet_inspect.api import _training_capture
from resnet_inspect.models import get_model


def capture(model, shape: tuple[int, ...]):
    return _training_capture(model, shape, None, shape[0], "adamw", None, None, 1, "cpu", None, None, None)


@pytest.fixture(scope="module")
def resnet50_step():
    torch.manual_seed(0)
    model = get_model("resnet50")
    return model, capture(model, (8, 3, 64, 64))


def test_timeline_maximum_is_the_reported_peak(resnet50_step) -> None:
    _model, captured = resnet50_step
    timeline = memory_timeline(captured)
    memory = step_memory(captured)
    assert max(point.total for point in timeline.points) == memory.peak_bytes
    assert timeline.peak_name == memory.where
    assert all(set(point.bytes) == set(KINDS) for point in timeline.points)
    assert {point.phase for point in timeline.points} == {"forward", "backward", "optimizer"}


def test_backward_start_and_end_equal_a_live_storage_tracker_on_a_real_step(resnet50_step) -> None:
    model, captured = resnet50_step
    timeline = memory_timeline(captured)
    measured = backward_bounds(model, torch.randn(8, 3, 64, 64))
    assert timeline.backward_start_bytes == measured.backward_start_bytes
    assert timeline.backward_end_bytes == measured.backward_end_bytes


def test_sharded_timeline_reaches_the_sharded_peak(resnet50_step) -> None:
    _model, captured = resnet50_step
    timeline = memory_timeline(captured, shard=8)
    assert timeline.peak.total == step_memory(captured, shard=8).peak_bytes
    assert timeline.peak.bytes["fsdp"] > 0


def test_summary_json_plot_and_html_carry_the_timeline(tmp_path) -> None:
    import json
    import re
    import xml.dom.minidom

    from typer.testing import CliRunner

    from resnet_inspect.cli.app import app

    runner = CliRunner()
    args = ["summary", "resnet18", "-i", "32", "-b", "2", "--train"]
    picture = tmp_path / "step.svg"
    result = runner.invoke(app, [*args, "--format", "json", "--plot", str(picture)])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    timeline = summary["memory_timeline"]
    assert timeline["peak_bytes"] == summary["training"]["peak_bytes"]
    assert max(point["total_bytes"] for point in timeline["points"]) == timeline["peak_bytes"]
    assert f"in {timeline['peak']}" in picture.read_text()  # the peak named on the picture
    page = tmp_path / "report.html"
    assert runner.invoke(app, [*args, "--format", "html", "-o", str(page)]).exit_code == 0
    svg = re.findall(r"<svg.*?</svg>", page.read_text(), re.S)[-1]
    xml.dom.minidom.parseString(svg)
    assert "peak" in svg and "Memory of the step" in page.read_text()


def test_plot_without_train_is_one_line_and_exit_2(tmp_path) -> None:
    from typer.testing import CliRunner

    from resnet_inspect.cli.app import app

    result = CliRunner().invoke(app, ["summary", "resnet18", "--plot", str(tmp_path / "step.png")])
    assert result.exit_code == 2
    assert result.output.strip() == "error: --plot draws the memory of a training step: add --train"
