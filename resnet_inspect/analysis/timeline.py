"""A picture of the step: the bytes a training step holds over time, by kind, module by module through the
forward, the backward and the optimizer step (PyTorch's memory_viz "active memory timeline", MemTracker's
per-module snapshots).

The events are the step's own allocations and releases (one device's, when sharded). Each storage keeps the kind
it had when allocated: an activation made in the forward is an ``activation`` (what the forward leaves alive is
what autograd saved, and the output), one made in the backward or the optimizer step a ``temporary``. Consecutive
events under one phase and one layer form a point; a point records the moment it holds the most (so the
timeline's maximum is the step's peak) and what it holds at its end.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from resnet_inspect.analysis.sharding import DEFAULT_UNITS, GATHERED, REDUCE_SCATTER
from resnet_inspect.analysis.training import device_events, step_memory
from resnet_inspect.records import MemoryEvent, MemoryKind, TrainingCapture

KINDS = ("weights", "input", "optimizer_state", "gradients", "activations", "temporaries", "fsdp")
_FORWARD, _BACKWARD = "forward", "backward"


@dataclass(frozen=True)
class TimelinePoint:
    """One module's stretch of the step: its highest moment by kind, and the total at its end."""

    phase: str
    layer: str
    bytes: dict[str, int]  # kind -> bytes at the stretch's highest moment
    end_bytes: int  # the total when the stretch ends

    @property
    def total(self) -> int:
        return sum(self.bytes.values())

    def to_dict(self) -> dict[str, Any]:
        return {"phase": self.phase, "layer": self.layer, "bytes": dict(self.bytes), "total_bytes": self.total,
                "end_bytes": self.end_bytes}


@dataclass(frozen=True)
class MemoryTimeline:
    """The step's points in order; the peak's point; the totals where the backward starts and ends."""

    points: tuple[TimelinePoint, ...]
    peak_index: int
    backward_start_bytes: int | None  # held just before the backward's first allocation or release
    backward_end_bytes: int | None  # held after its last one

    @property
    def peak(self) -> TimelinePoint:
        return self.points[self.peak_index]

    @property
    def peak_name(self) -> str:
        """'the backward of layer4.2.conv3', 'the optimizer step'."""
        point = self.peak
        if point.phase == "optimizer":
            return "the optimizer step"
        return f"the {point.phase} of {point.layer or 'the model'}"

    def to_dict(self) -> dict[str, Any]:
        return {"kinds": list(KINDS), "peak_index": self.peak_index, "peak_bytes": self.peak.total,
                "peak": self.peak_name, "backward_start_bytes": self.backward_start_bytes,
                "backward_end_bytes": self.backward_end_bytes, "points": [p.to_dict() for p in self.points]}


def _resident(training: TrainingCapture, shard: int, units: str) -> dict[str, int]:
    memory = step_memory(training, shard, units)
    resident = device_events(training, shard, units)[0]
    parts = {"weights": memory.weights_bytes + memory.buffer_bytes, "input": memory.input_bytes,
             "optimizer_state": memory.optimizer_state_bytes}
    return {kind: 0 for kind in KINDS} | parts | {"fsdp": resident - sum(parts.values())}


def _kind_of(event: MemoryEvent, allocated: dict[int, str]) -> str:
    """The timeline kind of an event: a release takes the kind of its allocation."""
    if event.kind == MemoryKind.GRADIENT:
        return "gradients"
    if event.kind in (GATHERED, REDUCE_SCATTER):
        return "fsdp"
    if event.allocation and event.allocation in allocated:
        return allocated[event.allocation]
    kind = "activations" if event.phase == _FORWARD else "temporaries"
    if event.allocation and event.bytes > 0:
        allocated[event.allocation] = kind
    return kind


def memory_timeline(training: TrainingCapture, shard: int = 1, units: str = DEFAULT_UNITS) -> MemoryTimeline | None:
    """The step's memory over time by kind (None when the backward could not run on meta)."""
    if training.backward_error:
        return None
    held = _resident(training, shard, units)
    points = [TimelinePoint(_FORWARD, "", dict(held), sum(held.values()))]
    allocated: dict[int, str] = {}
    start: int | None = None
    end: int | None = None
    current: tuple[str, str] | None = None
    high: dict[str, int] = {}
    for event in device_events(training, shard, units)[1]:
        if (event.phase, event.layer) != current:
            if current is not None:
                points.append(TimelinePoint(*current, high, sum(held.values())))
            current, high = (event.phase, event.layer), dict(held)
            if event.phase == _BACKWARD and start is None:
                start = sum(held.values())
        kind = _kind_of(event, allocated)
        held[kind] += event.bytes
        if sum(held.values()) > sum(high.values()):
            high = dict(held)
        if event.phase == _BACKWARD:
            end = sum(held.values())
    if current is not None:
        points.append(TimelinePoint(*current, high, sum(held.values())))
    peak_index = max(range(len(points)), key=lambda index: points[index].total)
    return MemoryTimeline(tuple(points), peak_index, start, end)


__all__ = ["KINDS", "MemoryTimeline", "TimelinePoint", "memory_timeline"]
