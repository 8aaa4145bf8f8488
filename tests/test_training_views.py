"""Where the training cost shows beyond `summary --train`: `compare --train` and the HTML page's saved-bytes chart."""

from __future__ import annotations

import json
import re

import oracle_memory
import pytest
import torch
from oracle_torch import flop_counter_backward_macs, saved_for_backward
from torch import nn
from typer.testing import CliRunner

from resnet_inspect.cli.app import app
from resnet_inspect.models import get_model
from resnet_inspect.render.html import stage_values

runner = CliRunner()


def run(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.fixture(scope="module")
def compared() -> list[dict]:
    return json.loads(run("compare", "resnet18", "resnet20", "--train", "--optimizer", "momentum", "-b", "4",
                          "-i", "64", "--format", "json"))


def test_compare_train_rows_are_each_models_real_training_step(compared):
    """Each row against torch on a real CPU step: saved bytes as saved_tensors_hooks sees them, backward MACs as
    FlopCounterMode counts them, the peak as a live-storage tracker measures it (within 0.5%: the loop also holds
    the model's output during the backward)."""
    for entry in compared:
        torch.manual_seed(0)
        model, example = get_model(entry["model"]), torch.randn(entry["input_shape"])
        assert entry["saved_bytes"] == saved_for_backward(model, example).activation_bytes
        assert entry["backward_macs"] == flop_counter_backward_macs(model, example)[1]
        measured = oracle_memory.tracked_step(model, example, "momentum")
        assert entry["train_peak_bytes"] == pytest.approx(measured.peak_bytes, rel=0.005)
        assert entry["training"]["optimizer_state_bytes"] == measured.state_bytes
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


def saved_bytes_by_stage(model: nn.Module, example: torch.Tensor, stages: list[str]) -> dict[str, int]:
    """What ``saved_tensors_hooks`` sees each stage save in a real CPU train-mode forward (each storage once, with
    the stage running when it was first saved; weights and the input left out)."""
    running: list[str] = []
    first: dict[int, tuple[str | None, torch.UntypedStorage]] = {}
    held = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers(), example)}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in held:
            first.setdefault(storage.data_ptr(), (running[-1] if running else None, storage))
        return tensor

    def leave(*_args: object) -> None:
        running.pop()

    modules = dict(model.named_modules())
    handles = [handle for name in stages for handle in (
        modules[name].register_forward_pre_hook(lambda *_args, name=name: running.append(name)),
        modules[name].register_forward_hook(leave))]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            model.train()(example)
    finally:
        for handle in handles:
            handle.remove()
    return {stage: sum(storage.nbytes() for owner, storage in first.values() if owner == stage) for stage in stages}


def test_the_page_charts_each_stages_saved_bytes_as_torch_saves_them(trained_page):
    html, report = trained_page
    bars = {name: (int(saved), int(macs)) for name, saved, macs in re.findall(
        r'<g class="saved-bar" data-stage="([^"]+)" data-saved-bytes="(\d+)" data-macs="(\d+)">', html)}
    layers = {layer["name"]: layer for layer in report["layers"]}
    stages = [name for name in report["totals"]["params_by_stage"] if name not in ("stem", "head")]
    assert list(bars) == ["stem", *stages, "head"]
    torch.manual_seed(0)
    real = saved_bytes_by_stage(get_model("resnet18"), torch.randn(report["input_shape"]), stages)
    for stage in stages:
        assert bars[stage] == (real[stage], layers[stage]["macs"])
    assert sum(saved for saved, _ in bars.values()) == report["totals"]["saved_bytes"]
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
