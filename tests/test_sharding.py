"""FSDP as it is wrapped: ``--shard N --shard-units``, per device, against PyTorch's own FSDP2 and FSDPMemTracker.

The shards are checked against ``torch.chunk`` (how FSDP2 cuts a parameter on dim 0: rank 0 holds the first
chunk), the units against the model's own modules, and the step's peak against ``FSDPMemTracker`` measuring a real
FSDP2 step over torch's fake process group on CPU tensors (tests/oracle_fsdp.py).
"""

from __future__ import annotations

import oracle_fsdp
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import resnet_inspect
from resnet_inspect.analysis.sharding import shard_plan
from resnet_inspect.analysis.training import step_memory
from resnet_inspect.api import _training_capture
from resnet_inspect.cli.app import app
from resnet_inspect.models import get_model

runner = CliRunner()
VIT_SMALL = "tests/fixtures/vit_small.py:vit_small_64"


def capture(model: nn.Module | str, shape: tuple[int, ...]):  # -> TrainingCapture
    return _training_capture(model, shape, None, shape[0], "adamw", None, None, 1, "cpu", None, None, None)


def rank0_shard_bytes(parameter: torch.Tensor, devices: int) -> int:
    """What FSDP2 leaves on rank 0: the first of ``torch.chunk(parameter, devices, dim=0)``."""
    return parameter.chunk(devices, dim=0)[0].numel() * parameter.element_size()


def test_each_device_holds_the_first_chunk_of_every_parameter_and_its_adam_moments() -> None:
    model = get_model("resnet18")
    memory = step_memory(capture(model, (2, 3, 32, 32)), shard=8)
    parameters = list(model.parameters())
    shards = sum(rank0_shard_bytes(p, 8) for p in parameters)
    assert memory.weights_bytes == shards
    assert memory.gradient_bytes == shards
    assert memory.optimizer_state_bytes == 2 * shards + 4 * len(parameters)  # AdamW: two moments, a float32 step


def test_default_units_are_the_residual_blocks_and_the_rest_is_the_root_unit() -> None:
    model = get_model("resnet18")
    plan = shard_plan(capture(model, (2, 3, 32, 32)), 8)
    block_type = type(model.encoder.layers[0].blocks[0])
    blocks = [name for name, module in model.named_modules() if isinstance(module, block_type)]
    assert [unit.name for unit in plan.units] == [*blocks, ""]
    in_blocks = {id(p) for name in blocks for p in model.get_submodule(name).parameters()}
    outside = [p for p in model.parameters() if id(p) not in in_blocks]
    assert plan.root is not None
    assert plan.root.gathered_bytes == 8 * sum(rank0_shard_bytes(p, 8) for p in outside)
    assert "each block (8 " in plan.description


class TableNet(nn.Module):
    """The model itself owns a 64 MiB table (as an embedding or a position table is owned): no layer holds it."""

    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.zeros(4096, 4096))
        self.blocks = nn.Sequential(*(nn.Linear(64, 64) for _ in range(2)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x) + self.table[:1, :64]


def test_parameters_of_a_non_leaf_module_are_gathered_with_its_unit() -> None:
    memory = step_memory(capture(TableNet(), (2, 64)), shard=8, units="layer")
    assert memory.largest_unit == "the model itself"
    assert memory.largest_unit_bytes == 4096 * 4096 * 4
    assert memory.gathered_bytes >= 4096 * 4096 * 4  # the root unit is whole from the forward to the backward's end


def test_units_by_type_and_by_name() -> None:
    model = get_model("resnet18")
    captured = capture(model, (2, 3, 32, 32))
    convs = [name for name, module in model.named_modules() if type(module).__name__ == "Conv2dAuto"]
    by_type = shard_plan(captured, 4, "Conv2dAuto")
    assert [unit.name for unit in by_type.units if unit.name] == convs
    by_name = shard_plan(captured, 4, "encoder.layers.0,encoder.layers.1")
    assert [unit.name for unit in by_name.units] == ["encoder.layers.0", "encoder.layers.1", ""]


def test_unknown_unit_is_one_line_and_exit_2() -> None:
    result = runner.invoke(app, ["summary", "resnet18", "-i", "32", "-b", "2", "--train", "--shard", "8",
                                 "--shard-units", "nosuch"])
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0
    assert "--shard-units: no module is named or typed 'nosuch'" in result.output


def test_shard_units_without_shard_is_refused() -> None:
    result = runner.invoke(app, ["summary", "resnet18", "-i", "32", "-b", "2", "--train", "--shard-units", "layer"])
    assert result.exit_code == 2
    assert "add --shard N" in result.output


@pytest.mark.slow
@pytest.mark.parametrize(("model", "units", "oracle_units"), [
    ("resnet50", "block", "ResNetBottleNeckBlock"),
    ("resnet50", "layer", "layer"),
    (VIT_SMALL, "block", "Block"),
    (VIT_SMALL, "layer", "layer"),
])
def test_peak_per_device_matches_fsdp_mem_tracker(model: str, units: str, oracle_units: str) -> None:
    shape = (2, 3, 64, 64)
    measured = oracle_fsdp.measure_sharded(model, shape, 8, oracle_units)
    estimate = step_memory(capture(model, shape), shard=8, units=units)
    assert estimate.peak_bytes == pytest.approx(measured, rel=0.02)


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.lin(x)


def test_fsdp_replay_of_hand_written_events_is_worked_out_by_hand() -> None:
    """Two blocks (each 8x8 + 8 parameters: 288 bytes, the units) and a head (4x8 + 4: 144 bytes, the root unit)
    over 2 devices; the step's events written out, FSDP2's added as worked out in the comments."""
    import dataclasses

    from resnet_inspect.analysis.training import step_timeline
    from resnet_inspect.records import MemoryEvent, MemoryKind, StepPhase

    activation, gradient = MemoryKind.ACTIVATION, MemoryKind.GRADIENT
    forward, backward, optimizer = StepPhase.FORWARD, StepPhase.BACKWARD, StepPhase.OPTIMIZER
    events = (
        MemoryEvent(100, activation, forward, "0.lin"),  # root gathered (288 with its buffer), 0 gathered: 820
        MemoryEvent(100, activation, forward, "1.lin"),  # 0 let go, 1 gathered: 920
        MemoryEvent(10, activation, forward, "2"),  # 1 let go: 642
        MemoryEvent(144, gradient, backward, "2"),  # buffer freed, 1 prefetched: 642; the head's gradient: 786
        MemoryEvent(50, activation, backward, "1.lin"),  # 1 copied out, 0 prefetched: 1074; 1124
        MemoryEvent(288, gradient, backward, "1.lin"),  # 1412
        MemoryEvent(-50, activation, backward, "1.lin"),  # 1362
        MemoryEvent(288, gradient, backward, "0.lin"),  # 1 reduce-scattered (1218), 0 copied out (peak 1506)
        MemoryEvent(-200, activation, backward, "0.lin"),  # 1306
        MemoryEvent(40, activation, optimizer, "the optimizer step"),  # 0 and the root reduce-scattered: 370; 390
        MemoryEvent(-40, activation, optimizer, "the optimizer step"),  # 370
    )
    real = capture(nn.Sequential(Residual(), Residual(), nn.Linear(8, 4)), (2, 8))
    written = dataclasses.replace(real, events=events, state_bytes=0, buffer_bytes=0, input_bytes=0)
    memory = step_memory(written, shard=2)
    shards = 144 // 2 + 2 * 288 // 2
    assert memory.shard_units.startswith("each block (2 Residual)")
    assert memory.weights_bytes == shards and memory.gradient_bytes == shards
    assert memory.peak_bytes == shards + 1506
    assert (memory.peak_phase, memory.peak_layer) == ("backward", "0.lin")
    assert memory.gathered_bytes == 144 + 288 + 288 + 288  # root, 1's reduce-scatter buffer, 0's all-gather and 0
    timeline = step_timeline(written, shard=2)
    assert max(timeline) == shards + 1506
    assert timeline[-1] == shards + 10  # the gradients' shards let go: what the events left (the output)


def test_the_summary_prints_gradients_and_state_per_device_when_sharded() -> None:
    """Beside the per-device optimizer state, the gradients are the device's shard too, not the whole model's."""
    from resnet_inspect.units import bytes_text

    report = resnet_inspect.summary("resnet18", 32, batch_size=2, train=True, shard=8)
    memory = report.training.memory
    line = next(line for line in str(report).splitlines() if line.startswith("saved for backward"))
    assert f"gradients: {bytes_text(memory.gradient_bytes)}" in line
    assert memory.gradient_bytes < report.total("grad_bytes") // 4
    assert line.endswith("(per device of 8)")
