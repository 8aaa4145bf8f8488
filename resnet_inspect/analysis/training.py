"""What one training step costs, from a TrainingCapture: backward MACs, saved bytes, gradients, and step memory.

Backward MACs come from the operation table (``OpSpec.backward_macs``), one rule per operation, given which of the
operation's inputs and weights take part in the backward (``OpNode.grads``): the first convolution of a network
computes only its weight gradient, a frozen layer only its input gradient, a layer under ``torch.no_grad()`` none.

The step's memory is read off the allocations and releases the step really made on the meta device:

    peak = weights + buffers + optimizer state + input        (resident before the step starts)
           + max over the step of (live activations and temporaries + gradients allocated so far)

Sharded over N devices (PyTorch FSDP2), the step is replayed per device with ``fully_shard`` applied to units
(each block by default): padded shards, each unit gathered while it runs, the prefetched next unit, the
reduce-scatter buffer, the per-device batch's activations, the optimizer step's temporaries (the foreach kernels'
on a GPU) divided by N (analysis/sharding.py). Without the parameters' records the older bound stands: weights,
gradients, state and the optimizer's temporaries divided by N, ``+ 2 x largest layer's weights``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from resnet_inspect.analysis.counting import enclosing_records, node_macs
from resnet_inspect.analysis.sharding import (
    DEFAULT_UNITS,
    ShardPlan,
    shard_plan,
    sharded_events,
    sharded_resident_bytes,
)
from resnet_inspect.ops.registry import get_op
from resnet_inspect.records import Capture, MemoryEvent, MemoryKind, OpNode, StepPhase, TrainingCapture


def node_backward_macs(node: OpNode) -> int:
    """MACs of one operation's backward, by its operation-table entry (0 when nothing it takes needs a gradient,
    or the entry has no backward rule)."""
    rule = get_op(node.op).backward_macs
    if rule is None or not any(node.grads) or not node.input_shapes or not node.output_shape:
        return 0
    return rule(node)


def _ceil_div(value: int, parts: int) -> int:
    return -(-value // parts)


@dataclass(frozen=True)
class StepMemory:
    """The memory of one training step (bytes), its breakdown and where its peak falls.

    ``peak_bytes`` is None when the backward could not run on the meta device (``note`` says why).
    With ``shard`` > 1, every figure is per device.
    """

    peak_bytes: int | None
    weights_bytes: int  # parameters (divided over the shards)
    buffer_bytes: int  # batch-norm statistics and other buffers
    gradient_bytes: int  # the parameters' gradients after the backward (divided over the shards)
    optimizer_state_bytes: int  # (divided over the shards)
    input_bytes: int  # the batch
    saved_bytes: int  # activations kept for the backward at the end of the forward
    gathered_bytes: int  # sharded: FSDP's gathered parameters and all-gather / reduce-scatter buffers at the peak
    peak_phase: StepPhase
    peak_layer: str  # the layer running at the peak (whose backward, in the backward phase)
    optimizer: str
    dtype: str
    amp: str | None
    shard: int = 1
    note: str | None = None
    shard_units: str = ""  # sharded: the units fully_shard is applied to, as chosen
    largest_unit: str = ""  # sharded: the unit with the most parameter bytes ("the model itself": the root unit)
    largest_unit_bytes: int = 0  # its parameters whole, padded as FSDP2 pads them
    loss: str | None = "sum"  # what the built-in step backpropagated (None: the user's own step)
    accumulate: int = 1  # micro-batches per optimizer step

    @property
    def loop(self) -> str:
        """'loss sum', 'loss cross-entropy, 4 micro-batches', 'your own step'."""
        if self.loss is None:
            return "your own step"
        return f"loss {self.loss}" + (f", {self.accumulate} micro-batches" if self.accumulate > 1 else "")

    @property
    def where(self) -> str:
        """'the backward of layer1.0.conv1', 'the forward of fc', 'the optimizer step'."""
        if self.peak_bytes is None:
            return "unknown"
        if self.peak_phase == StepPhase.OPTIMIZER:
            return "the optimizer step"
        return f"the {self.peak_phase} of {self.peak_layer or 'the model'}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "peak_bytes": self.peak_bytes, "peak_phase": self.peak_phase, "peak_layer": self.peak_layer,
            "weights_bytes": self.weights_bytes, "buffer_bytes": self.buffer_bytes,
            "gradient_bytes": self.gradient_bytes, "optimizer_state_bytes": self.optimizer_state_bytes,
            "input_bytes": self.input_bytes, "saved_bytes": self.saved_bytes, "gathered_bytes": self.gathered_bytes,
            "optimizer": self.optimizer, "dtype": self.dtype, "amp": self.amp, "shard": self.shard,
            "note": self.note, "shard_units": self.shard_units, "largest_unit": self.largest_unit,
            "largest_unit_bytes": self.largest_unit_bytes, "loss": self.loss, "accumulate": self.accumulate,
            "step": "built-in" if self.loss is not None else "own",
        }


def _step_events(training: TrainingCapture) -> list[MemoryEvent]:
    """The events that change what the step holds (the optimizer's state is resident from the start of a step
    once the optimizer has run once)."""
    return [event for event in training.events if event.kind != MemoryKind.STATE]


def _plan(training: TrainingCapture, shard: int, units: str) -> ShardPlan | None:
    """FSDP2's units when sharded and the parameters are known (else the older whole-model approximation)."""
    return shard_plan(training, shard, units) if shard > 1 and training.parameters else None


def _resident_bytes(training: TrainingCapture, shard: int) -> int:
    """Held throughout the step without units: weights, optimizer state, buffers, the input; sharded, the largest
    layer gathered with its gradient."""
    gathered = 2 * training.largest_layer_bytes if shard > 1 else 0
    return (_ceil_div(training.weight_bytes, shard) + _ceil_div(training.state_bytes, shard) + training.buffer_bytes
            + training.input_bytes + gathered)


def _sharded(event: MemoryEvent) -> bool:
    """Each device holds its shard of every gradient, and its optimizer step (the foreach or fused kernels'
    temporaries included) runs over its shard of the parameters."""
    return event.kind == MemoryKind.GRADIENT or event.phase == StepPhase.OPTIMIZER


def device_events(training: TrainingCapture, shard: int = 1, units: str = DEFAULT_UNITS
                  ) -> tuple[int, list[MemoryEvent]]:
    """What one device holds before the step, and its allocations and releases over the step: the meta step's own
    on one device; sharded, FSDP2's replay over its units (analysis/sharding.py)."""
    plan = _plan(training, shard, units)
    if plan is not None:
        return sharded_resident_bytes(training, plan), sharded_events(training, plan)
    events = []
    for event in _step_events(training):
        if _sharded(event) and shard > 1:
            size = _ceil_div(event.bytes, shard) if event.bytes > 0 else -_ceil_div(-event.bytes, shard)
            event = MemoryEvent(size, event.kind, event.phase, event.layer, event.allocation)
        events.append(event)
    return _resident_bytes(training, shard), events


def live_bytes(training: TrainingCapture, shard: int = 1, units: str = DEFAULT_UNITS) -> list[int]:
    """What the step has allocated beyond the resident bytes after each of its events."""
    live, timeline = 0, []
    for event in device_events(training, shard, units)[1]:
        live += event.bytes
        timeline.append(live)
    return timeline


def step_timeline(training: TrainingCapture, shard: int = 1, units: str = DEFAULT_UNITS) -> list[int]:
    """The bytes the step holds at each of its moments (before the first event, then after each); the peak is the
    largest. Empty when the backward could not run on meta."""
    if training.backward_error:
        return []
    resident, events = device_events(training, shard, units)
    timeline = [resident]
    for event in events:
        timeline.append(timeline[-1] + event.bytes)
    return timeline


def step_memory(training: TrainingCapture, shard: int = 1, units: str = DEFAULT_UNITS) -> StepMemory:
    """The step's peak and breakdown, on one device or per device of ``shard`` with ``fully_shard`` applied to
    ``units`` (see the module docstring and analysis/sharding.py)."""
    if shard < 1:
        raise ValueError(f"shard must be at least 1, got {shard}")
    plan = _plan(training, shard, units)
    resident, events = device_events(training, shard, units)
    highest, live, fsdp_live, fsdp_at_peak = 0, 0, 0, 0
    phase, layer = StepPhase.FORWARD, ""
    for event in events:
        live += event.bytes
        if event.kind in (MemoryKind.GATHERED, MemoryKind.REDUCE_SCATTER):
            fsdp_live += event.bytes
        if live > highest:
            highest, phase, layer, fsdp_at_peak = live, event.phase, event.layer, fsdp_live
    peak = None if training.backward_error else resident + highest
    weights, gradients, state = _model_states(training, shard, plan)
    largest = plan.largest if plan is not None else None
    return StepMemory(
        peak_bytes=peak, weights_bytes=weights, buffer_bytes=training.buffer_bytes, gradient_bytes=gradients,
        optimizer_state_bytes=state, input_bytes=training.input_bytes, saved_bytes=training.saved_bytes,
        gathered_bytes=fsdp_at_peak if plan is not None else 2 * training.largest_layer_bytes if shard > 1 else 0,
        peak_phase=phase, peak_layer=layer, optimizer=training.optimizer, dtype=training.dtype, amp=training.amp,
        shard=shard, note=training.backward_error, shard_units=plan.description if plan else "",
        largest_unit=(largest.name or "the model itself") if largest else "",
        largest_unit_bytes=largest.gathered_bytes if largest else 0, loss=training.loss,
        accumulate=training.accumulate,
    )


def _model_states(training: TrainingCapture, shard: int, plan: ShardPlan | None) -> tuple[int, int, int]:
    """One device's weights, gradients and optimizer state (padded shards under FSDP2's units)."""
    if plan is None:
        return (_ceil_div(training.weight_bytes, shard), _ceil_div(training.gradient_bytes, shard),
                _ceil_div(training.state_bytes, shard))
    weights = sum(unit.sharded_bytes for unit in plan.units)
    state = sharded_resident_bytes(training, plan) - weights - training.buffer_bytes - training.input_bytes
    return weights, sum(unit.sharded_grad_bytes for unit in plan.units), state


@dataclass(frozen=True)
class TrainingCounts:
    """Per layer (inclusive, like MACs) and in total: backward MACs, bytes saved for backward, gradient bytes."""

    node_backward_macs: dict[int, int]
    layer_backward_macs: dict[int, int]  # LayerRecord index of the training capture -> MACs
    layer_recompute_macs: dict[int, int]  # the forward MACs activation checkpointing runs again in the backward
    layer_saved_bytes: dict[int, int]
    layer_grad_bytes: dict[int, int]
    backward_macs: int
    backward_flops: int
    saved_bytes: int
    saved_tensors: int
    grad_bytes: int
    memory: StepMemory
    recompute_macs: int = 0  # forward operations run again in the backward (activation checkpointing)


def _inclusive(capture: Capture, own: dict[int, int]) -> dict[int, int]:
    """Each layer's own figure plus those of every call inside it."""
    totals = {layer.index: 0 for layer in capture.layers}
    for index, value in own.items():
        record: int | None = index
        while record is not None:
            totals[record] += value
            record = capture.layers[record].parent
    return totals


def training_counts(training: TrainingCapture, shard: int = 1, units: str = DEFAULT_UNITS) -> TrainingCounts:
    """Backward MACs per operation and per layer, saved and gradient bytes per layer, and the step's memory."""
    capture = training.capture
    macs_by_node = {node.id: node_backward_macs(node) for node in capture.nodes}
    enclosing = enclosing_records(capture)
    own_macs: dict[int, int] = {}
    for node_id, macs in macs_by_node.items():
        record = enclosing[node_id]
        if record is not None:
            own_macs[record] = own_macs.get(record, 0) + macs
    total = sum(macs_by_node.values())
    own_recompute: dict[int, int] = {}
    recompute_total = 0
    for node_id in training.recomputed_nodes:  # a checkpointed region's operations, once per recomputation
        macs = node_macs(capture.nodes[node_id])
        recompute_total += macs
        record = enclosing[node_id]
        if record is not None:
            own_recompute[record] = own_recompute.get(record, 0) + macs
    return TrainingCounts(
        node_backward_macs=macs_by_node, layer_backward_macs=_inclusive(capture, own_macs),
        layer_recompute_macs=_inclusive(capture, own_recompute), recompute_macs=recompute_total,
        layer_saved_bytes=_inclusive(capture, training.layer_saved_bytes),
        layer_grad_bytes=dict(training.layer_grad_bytes), backward_macs=total, backward_flops=2 * total,
        saved_bytes=training.saved_bytes, saved_tensors=training.saved_tensors,
        grad_bytes=training.gradient_bytes,
        memory=step_memory(training, shard, units),
    )


__all__ = [
    "StepMemory", "TrainingCounts", "device_events", "live_bytes", "node_backward_macs", "step_memory", "step_timeline",
    "training_counts",
]
