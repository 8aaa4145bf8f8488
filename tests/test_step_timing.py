"""`time --train`: one training step (forward, backward, optimizer step) timed as `time` times a forward pass.

Contracts and behaviour only, no thresholds on seconds (machines are noisy).
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from resnet_inspect.analysis import timing
from resnet_inspect.analysis.step_timing import output_loss, time_training_step, training_step
from resnet_inspect.cli.app import app
from resnet_inspect.errors import BadInputError

FAST = ["-i", "16", "--warmup", "1", "--repeat", "2", "--threads", "1"]


def tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))


def invoke(*args: str):
    return CliRunner().invoke(app, ["time", *args])


def test_a_step_updates_the_weights_and_clears_the_gradients():
    model = tiny_cnn().train()
    before = [parameter.detach().clone() for parameter in model.parameters()]
    step = training_step(model, torch.randn(2, 3, 8, 8), "momentum")
    step()
    assert all(not torch.equal(old, new) for old, new in zip(before, model.parameters(), strict=True))
    assert all(parameter.grad is None for parameter in model.parameters())  # zero_grad(set_to_none=True)
    assert model[1].num_batches_tracked.item() == 1  # batch norm ran in train mode


def test_without_an_optimizer_the_step_is_forward_and_backward_only():
    model = tiny_cnn().train()
    before = [parameter.detach().clone() for parameter in model.parameters()]
    seen: list[torch.Tensor] = []
    model[0].weight.register_hook(seen.append)  # called when the backward pass reaches the first weight
    training_step(model, torch.randn(2, 3, 8, 8), "none")()
    assert len(seen) == 1
    assert all(torch.equal(old, new) for old, new in zip(before, model.parameters(), strict=True))


def test_frozen_parameters_are_left_out_of_the_step():
    model = tiny_cnn().train()
    for parameter in model[0].parameters():
        parameter.requires_grad_(False)
    frozen = model[0].weight.detach().clone()
    training_step(model, torch.randn(2, 3, 8, 8), "adamw")()
    assert torch.equal(frozen, model[0].weight)


def test_a_model_with_nothing_to_train_is_refused_in_one_line():
    model = tiny_cnn().requires_grad_(False)
    with pytest.raises(BadInputError, match="no trainable parameters"):
        training_step(model, torch.randn(2, 3, 8, 8))


def test_the_loss_reaches_every_floating_output_of_a_nested_output():
    weight = torch.ones(3, requires_grad=True)
    output = {"logits": weight * 2, "aux": (weight * 3, torch.zeros(2, dtype=torch.long))}
    output_loss(output).backward()
    assert torch.allclose(weight.grad, torch.full((3,), 2 / 3 + 3 / 3))  # d/dw of mean(2w) + mean(3w)


def test_the_callers_model_keeps_its_weights_and_modes():
    model = tiny_cnn().eval()
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    result = time_training_step(model, (2, 3, 8, 8), optimizer="adam", warmup=1, repeat=2, threads=1)
    assert result.batch_size == 2 and result.median_ms > 0 and result.runs >= 1
    assert result.images_per_s == pytest.approx(2 / (result.median_ms / 1e3))
    assert all(torch.equal(before[name], tensor) for name, tensor in model.state_dict().items())
    assert not any(module.training for module in model.modules())


def test_mixed_precision_step_runs_under_autocast():
    model = tiny_cnn().train()
    dtypes: list[torch.dtype] = []
    model[0].register_forward_hook(lambda module, args, output: dtypes.append(output.dtype))
    training_step(model, torch.randn(2, 3, 8, 8), "sgd", amp="bf16")()
    assert dtypes == [torch.bfloat16] and model[0].weight.dtype == torch.float32


def test_on_cuda_the_timer_waits_for_the_device_and_reports_its_peak(monkeypatch: pytest.MonkeyPatch):
    """The CUDA path's logic, run on the CPU: every timed block synchronises the device, the peak is read."""
    calls = {"synchronize": 0, "reset": 0}

    def synchronize(device: object = None) -> None:
        calls["synchronize"] += 1

    def reset(device: object = None) -> None:
        calls["reset"] += 1

    monkeypatch.setattr(torch.cuda, "synchronize", synchronize)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", reset)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: 123_456)
    ran: list[int] = []
    result = timing.measure_callable(lambda: ran.append(1), 4, "cuda:0", warmup=2, repeat=3, threads=1)
    assert calls["reset"] == 1 and result.peak_memory_bytes == 123_456
    assert calls["synchronize"] >= 2 + 2  # after each warm-up call, then at both ends of a timed block
    assert result.batch_size == 4 and 1 <= result.runs <= len(ran) - 2  # timed calls come after the warm-up


def test_time_train_json_says_what_was_timed():
    result = invoke("resnet20", "--train", "--optimizer", "momentum", "-b", "1,2", *FAST, "--format", "json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["train"], report["optimizer"], report["amp"]) == (True, "momentum", None)
    assert [entry["batch_size"] for entry in report["results"]] == [1, 2]
    for entry in report["results"]:
        assert entry["images_per_s"] == pytest.approx(entry["batch_size"] * 1e3 / entry["median_ms"])


def test_time_without_train_says_so_in_json():
    result = invoke("resnet20", *FAST, "--format", "json")
    assert result.exit_code == 0, result.output
    assert (json.loads(result.stdout)["train"], json.loads(result.stdout)["optimizer"]) == (False, None)


def test_time_train_table_names_the_step():
    result = invoke("resnet20", "--train", "--amp", "bf16", *FAST)
    assert result.exit_code == 0, result.output
    assert "amp bf16" in result.stdout and "training step (forward, backward, adamw step)" in result.stdout


@pytest.mark.parametrize(("args", "message"), [
    (["--train", "--optimizer", "lion"], "unknown optimizer 'lion'"),
    (["--train", "--amp", "fp16", "--dtype", "float16"], "cannot be combined with --dtype float16"),
    (["--train", "--amp", "fp8"], "unknown --amp 'fp8'"),
    (["--train", "--per-layer"], "--per-layer times forward passes"),
    (["--optimizer", "sgd"], "--optimizer applies to a training step: add --train"),
    (["--amp", "bf16"], "--amp applies to a training step: add --train"),
])
def test_bad_training_options_exit_2_with_one_line(args: list[str], message: str):
    result = invoke("resnet20", *args, *FAST)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]
