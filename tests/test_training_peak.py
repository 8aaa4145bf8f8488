"""How the peak of a training step is assembled, pinned two ways: by hand-written events, whose peak is worked out
here by hand, and against real CPU steps whose live storages are counted by an independent tracker
(tests/oracle_memory.py's ``LiveStorages``), on models where the input and the gradients are each a large share of
the peak (leaving either out of the estimate fails these tests)."""

from __future__ import annotations

import dataclasses

import oracle_memory
import pytest
import torch
from torch import nn

import resnet_inspect
from resnet_inspect.analysis.training import step_memory, step_timeline
from resnet_inspect.api import _training_capture
from resnet_inspect.models import get_model
from resnet_inspect.records import MemoryEvent, MemoryKind, StepPhase, TrainingCapture

A, G, S = MemoryKind.ACTIVATION, MemoryKind.GRADIENT, MemoryKind.STATE
F, B, OPT = StepPhase.FORWARD, StepPhase.BACKWARD, StepPhase.OPTIMIZER

# One step written out: two activations in the forward, a temporary and two gradients in the backward, the
# optimizer's state and a temporary in the optimizer step.
EVENTS = (
    MemoryEvent(100, A, F, "a"),  # live 100
    MemoryEvent(50, A, F, "b"),  # 150
    MemoryEvent(300, A, B, "b"),  # 450: b's backward takes a temporary
    MemoryEvent(200, G, B, "b"),  # 650: b's weight gradient (the peak)
    MemoryEvent(-300, A, B, "b"),  # 350
    MemoryEvent(-50, A, B, "a"),  # 300
    MemoryEvent(80, G, B, "a"),  # 380
    MemoryEvent(-100, A, B, "a"),  # 280
    MemoryEvent(2000, S, OPT, "the optimizer step"),  # the state: resident from the second step on, not an event
    MemoryEvent(300, A, OPT, "the optimizer step"),  # 580
    MemoryEvent(-300, A, OPT, "the optimizer step"),  # 280
)


@pytest.fixture(scope="module")
def hand_written() -> TrainingCapture:
    """A real TrainingCapture whose byte counts and events are replaced by the hand-written ones."""
    captured = _training_capture(nn.Linear(2, 2), (1, 2), None, 1, "adamw", None, None, 1, "cpu", None, None, None)
    return dataclasses.replace(captured, weight_bytes=1000, state_bytes=2000, buffer_bytes=30, input_bytes=400,
                               gradient_bytes=280, largest_layer_bytes=60, events=EVENTS, backward_error=None)


def test_peak_is_resident_bytes_plus_the_highest_live_bytes(hand_written: TrainingCapture) -> None:
    memory = step_memory(hand_written)
    resident = 1000 + 2000 + 30 + 400  # weights, optimizer state, buffers, input
    assert memory.peak_bytes == resident + 650
    assert (memory.peak_phase, memory.peak_layer, memory.where) == ("backward", "b", "the backward of b")


def test_timeline_is_every_moment_of_the_step(hand_written: TrainingCapture) -> None:
    resident = 3430
    live = [0, 100, 150, 450, 650, 350, 300, 380, 280, 580, 280]
    assert step_timeline(hand_written) == [resident + value for value in live]


def test_sharded_peak_divides_model_states_and_gradients_and_gathers_the_largest_layer(
        hand_written: TrainingCapture) -> None:
    memory = step_memory(hand_written, shard=2)
    resident = 500 + 1000 + 30 + 400 + 2 * 60  # halved weights and state, buffers, input, the gathered layer
    assert memory.peak_bytes == resident + 100 + 50 + 300 + 100  # the gradient of b halved
    assert memory.gathered_bytes == 120
    # each device steps its shard of the parameters: the optimizer's temporary of 300 is 150 per device
    assert step_timeline(hand_written, shard=2)[-3:] == [resident + 140, resident + 290, resident + 140]


def test_a_step_without_a_backward_has_no_peak(hand_written: TrainingCapture) -> None:
    failed = dataclasses.replace(hand_written, backward_error="the backward pass cannot run on the meta device")
    assert step_memory(failed).peak_bytes is None and step_timeline(failed) == []


# ------------------------------------------------------------------------- against a real step, storage by storage


def wide_input_mlp() -> nn.Module:
    """The input (256 x 4096 floats, 4 MiB) is about 40% of the step's peak, the gradients about 10%."""
    return nn.Sequential(nn.Linear(4096, 64), nn.ReLU(), nn.Linear(64, 10))


TRACKED = [
    ("wide_input_mlp", wide_input_mlp, (256, 4096)),
    ("resnet20", lambda: get_model("resnet20"), (4, 3, 32, 32)),
]


@pytest.mark.parametrize("optimizer", ["momentum", "adamw"])
@pytest.mark.parametrize(("build", "shape"), [case[1:] for case in TRACKED], ids=[case[0] for case in TRACKED])
def test_peak_equals_the_live_storages_of_a_real_cpu_step(build, shape: tuple[int, ...], optimizer: str) -> None:
    """To the byte: the input, the output the loop holds to the end of the step, the gradients, the optimizer's
    temporaries."""
    torch.manual_seed(0)
    model, example = build(), torch.randn(shape)
    estimate = resnet_inspect.training_memory(model, input_data=example, optimizer=optimizer)
    real = oracle_memory.tracked_step(model, example, optimizer)
    assert estimate.peak_bytes == real.peak_bytes
    assert estimate.optimizer_state_bytes == real.state_bytes
    assert estimate.input_bytes == example.numel() * example.element_size()
