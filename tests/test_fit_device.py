"""`fit` plans for the device it is told (a CUDA device without CUDA present) and starts where a step can run."""

from __future__ import annotations

import json

import oracle_memory
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from resnet_inspect.analysis.training import step_timeline
from resnet_inspect.cli.app import app
from resnet_inspect.models import get_model
from resnet_inspect.pipeline.build import training_capture
from resnet_inspect.pipeline.fit import fit_report
from resnet_inspect.records import StepPhase

runner = CliRunner()
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")


def pooled_batch_norm() -> nn.Module:
    """BatchNorm1d on globally pooled features: in training, batch 1 has one value per channel and cannot run."""
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.BatchNorm1d(8),
                         nn.Linear(8, 2))


@pytest.mark.parametrize(("build", "size"), [(pooled_batch_norm, 32), (lambda: get_model("resnet18"), 32)],
                         ids=["pooled_batch_norm1d", "resnet18-i32"])
def test_fit_train_starts_at_batch_two_where_batch_one_cannot_train(build, size: int) -> None:
    with pytest.raises(ValueError, match="more than 1 value per channel"):  # torch itself, on the CPU
        build().train()(torch.randn(1, 3, size, size))
    build().train()(torch.randn(2, 3, size, size))
    report = fit_report(build(), 1 << 30, size, train=True)
    assert report.search.first_batch == 2 and report.batch_size >= 2
    assert report.to_dict()["search"]["first_batch"] == 2
    assert "cannot run at batch size 1" in report.to_dict()["search"]["first_batch_note"]
    assert "the search starts at batch size 2" in str(report)


def test_fit_starts_at_batch_one_where_it_can() -> None:
    report = fit_report("resnet20", 1 << 30, 32, train=True)
    assert report.search.first_batch == 1 and report.to_dict()["search"]["first_batch_note"] is None


@NO_CUDA
def test_fit_plans_for_a_cuda_device_without_cuda_given_memory() -> None:
    result = runner.invoke(app, ["fit", "resnet18", "--train", "--device", "cuda:1", "--memory", "80GiB",
                                 "--format", "json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["device"], report["memory_source"]) == ("cuda:1", "--memory")
    assert report["peak_bytes"] <= report["budget_bytes"] < report["next_peak_bytes"]


@NO_CUDA
def test_fit_for_a_cuda_device_without_cuda_needs_memory() -> None:
    result = runner.invoke(app, ["fit", "resnet18", "--train", "--device", "cuda"])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        "error: fit --device cuda on a machine without CUDA needs --memory (for example --memory 80GiB): the "
        "device's memory cannot be read here"]


def optimizer_temporaries(timeline: list[int], phases: list[StepPhase]) -> int:
    """The most the optimizer step held above what it started with."""
    moments = [value for value, phase in zip(timeline[1:], phases, strict=True) if phase == StepPhase.OPTIMIZER]
    start = timeline[phases.index(StepPhase.OPTIMIZER)]
    return max(moments) - start


def test_cuda_models_foreach_adamw_and_sharding_divides_its_temporaries() -> None:
    """On a GPU torch's AdamW takes the foreach path, whose temporaries are the size of all the gradients; the
    live-storage tracker measures that path on the CPU (foreach=True); sharded over N, each device steps its
    shard."""
    torch.manual_seed(0)
    model = get_model("resnet20")
    step = training_capture(model, (32, 32), 2, 3, options=_options("cuda"))
    phases = [event.phase for event in step.events if event.kind != "state"]
    ours = optimizer_temporaries(step_timeline(step), phases)
    parameters = [p for p in model.parameters() if p.requires_grad]
    real = _foreach_adamw_temporaries(parameters)
    assert ours == real
    sharded = optimizer_temporaries(step_timeline(step, 8), phases)
    assert sharded == pytest.approx(real / 8, abs=len(step.events))


def _options(device: str):  # -> TrainOptions
    from resnet_inspect.capture.training import TrainOptions

    return TrainOptions("adamw", None, None, device)


def _foreach_adamw_temporaries(parameters: list[torch.Tensor]) -> int:
    """The live bytes a second foreach AdamW step allocates at its highest (real CPU tensors)."""
    for parameter in parameters:
        parameter.grad = torch.randn_like(parameter)
    optimizer = torch.optim.AdamW(parameters, lr=1e-3, foreach=True)
    optimizer.step()  # the state
    held = [*parameters, *(p.grad for p in parameters),
            *(value for state in optimizer.state.values() for value in state.values())]
    tracker = oracle_memory.LiveStorages(held)
    with tracker.mode():
        optimizer.step()
    return tracker.peak_bytes
