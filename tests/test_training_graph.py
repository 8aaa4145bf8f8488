"""The step autograd really runs: backward MACs, gradients, saved bytes and the peak only for what the loss's graph
reaches. A detached teacher's graph, or a branch thrown away, dies with its outputs, as in torch.

Oracles: FlopCounterMode's backward count, what ``saved_tensors_hooks`` saw that is still alive when the backward
starts (``retained_for_backward``), the gradients a real step leaves, and a measured real CPU step."""

from __future__ import annotations

import pytest
import torch

import resnet_inspect
from tests import oracle_memory
from tests.fixtures import graph_models
from tests.oracle_torch import flop_counter_backward_macs, retained_for_backward

SHAPES = {"detached_teacher": (4, 3, 64, 64), "no_grad_teacher": (4, 3, 64, 64), "unused_branch": (4, 3, 32, 32)}


def _model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return getattr(graph_models, name)()


def _real_gradient_bytes(model: torch.nn.Module, example: torch.Tensor) -> int:
    model.train()
    output = model(example)
    (output if output.dim() == 0 else output.sum()).backward()
    return sum(p.grad.numel() * p.grad.element_size() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_backward_macs_count_only_what_the_loss_reaches(name: str) -> None:
    model, shape = _model(name), SHAPES[name]
    _, backward_macs = flop_counter_backward_macs(model, torch.randn(shape))
    report = resnet_inspect.summary(model, input_size=shape, train=True)
    assert report.total("backward_macs") == backward_macs


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_saved_bytes_are_what_the_graph_still_holds_when_the_backward_starts(name: str) -> None:
    model, shape = _model(name), SHAPES[name]
    retained = retained_for_backward(model, torch.randn(shape))
    report = resnet_inspect.summary(model, input_size=shape, train=True)
    assert report.total("saved_bytes") == retained.activation_bytes


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_gradients_are_those_a_real_backward_leaves(name: str) -> None:
    model, shape = _model(name), SHAPES[name]
    real = _real_gradient_bytes(model, torch.randn(shape))
    report = resnet_inspect.summary(model, input_size=shape, train=True)
    assert report.total("grad_bytes") == real
    layer_grads = {row["name"]: row["grad_bytes"] for row in report.to_dict()["layers"]}
    assert all(value == 0 for layer, value in layer_grads.items() if layer.startswith(("teacher", "probe")))


def test_a_detached_teacher_holds_nothing_at_the_peak() -> None:
    """The pair's peak is the student's peak plus the teacher's weights and its forward's largest moment at most:
    the teacher's activations die with its output."""
    pair = resnet_inspect.training_memory(_model("detached_teacher"), SHAPES["detached_teacher"])
    assert pair.saved_bytes < 1.01 * resnet_inspect.training_memory(
        "resnet18", SHAPES["detached_teacher"]).saved_bytes


@pytest.mark.slow
def test_a_teacher_student_peak_is_within_3_percent_of_a_measured_step() -> None:
    """The detached teacher (the no_grad teacher's graph is never built: its figures are pinned exactly above)."""
    name, shape = "detached_teacher", (8, 3, 96, 96)
    measured = oracle_memory.measure_step(f"tests/fixtures/graph_models.py:{name}", shape, "adamw")
    estimate = resnet_inspect.training_memory(_model(name), shape, optimizer="adamw")
    assert estimate.peak_bytes == pytest.approx(measured.peak_bytes, rel=0.03)
    assert estimate.optimizer_state_bytes == measured.state_bytes
