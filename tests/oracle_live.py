"""A live-storage tracker on a real CPU training step: the bytes held where the backward starts and where it ends,
an oracle that never uses resnet-inspect's estimator.

The live bytes are those of ``oracle_memory.LiveStorages``: every aten operation's outputs seen through a dispatch
mode, each storage counted until nothing holds it (a weak-reference finaliser), so they are torch's own. Held
before the step, and added to every reading: the parameters, buffers, the optimizer's state (after a warm-up
step, its gradients set to None as ``zero_grad`` does) and the input. The step is a training loop's:
``output = model(x)``, ``loss = output.sum()``, ``loss.backward()`` (the output and the loss held through it),
``optimizer.step()``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from oracle_memory import LiveStorages, make_optimizer, state_tensors, tensor_bytes
from torch import nn


@dataclass(frozen=True)
class BackwardBounds:
    backward_start_bytes: int  # held when loss.backward() is called
    backward_end_bytes: int  # held once it has returned (the loop still holds the output and the loss)


def backward_bounds(model: nn.Module, example: torch.Tensor, optimizer_name: str = "adamw") -> BackwardBounds:
    model.train()
    optimizer = make_optimizer(optimizer_name, model.parameters())
    model(example).sum().backward()
    if optimizer is not None:
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    held = [*model.parameters(), *model.buffers(), *state_tensors(optimizer), example]
    resident = tensor_bytes(held)
    tracker = LiveStorages(held)
    with tracker.mode():
        output = model(example)
        loss = output.sum()
        start = resident + tracker.current
        loss.backward()
        end = resident + tracker.current
        del output, loss
        if optimizer is not None:
            optimizer.step()
    return BackwardBounds(start, end)


def live_step_peak(model: nn.Module, example: torch.Tensor, optimizer_name: str, step) -> int:
    """The most a real CPU step holds at once, by the live-storage tracker: ``step(model, optimizer, example)``
    run once to warm up (the optimizer's state), then again under the tracker. Held before it and added: the
    parameters, buffers, the optimizer's state, the input, and the tensors the warm-up left the step holding
    (a loss's target kept in a closure, as a data loader's batch is)."""
    model.train()
    optimizer = make_optimizer(optimizer_name, model.parameters())
    step(model, optimizer, example)
    held = [*model.parameters(), *model.buffers(), *state_tensors(optimizer), example]
    tracker = LiveStorages(held)
    with tracker.mode():
        step(model, optimizer, example)
    return tensor_bytes(held) + tracker.peak_bytes
