"""FSDP as it is wrapped: the per-device memory of a training step when PyTorch's ``fully_shard`` (FSDP2) is applied
to chosen units and then to the model itself.

Each parameter belongs to the innermost unit whose module owns it or encloses its owner; what no unit encloses
(the parameters of the model itself, its stem and head when units are blocks) forms the root unit. FSDP2 shards
every parameter on dim 0, padded to a multiple of N, so a device holds ``ceil(dim0 / N)`` rows of each. The step's
own allocations and releases (from the meta step) are replayed in order, and FSDP2's are added where FSDP2 makes
them (``torch/distributed/fsdp/_fully_shard/_fsdp_param_group.py``):

- forward, a unit's pre-forward: its all-gather buffer (the unit whole, padded), the previous unit's buffer freed,
  the unit's parameters copied out whole; post-forward: those parameters freed (the root keeps its own until the
  end of the backward);
- backward, a unit's pre-backward: its parameters gathered again (or copied out of the prefetched buffer), then the
  next unit's all-gather issued (the prefetch); post-backward: its parameters freed, the previous reduce-scatter
  buffer freed, its gradients copied into a reduce-scatter buffer (padded) and freed, its gradient shard kept;
- the optimizer steps on the shards: its temporaries are divided by N, its state is the state of the shards.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from resnet_inspect.analysis.counting import enclosing_records
from resnet_inspect.analysis.receptive_field import is_residual_merge
from resnet_inspect.errors import BadInputError
from resnet_inspect.records import MemoryEvent, MemoryKind, ParameterRecord, StepPhase, TrainingCapture

BLOCK, LAYER = "block", "layer"
DEFAULT_UNITS = BLOCK
GATHERED, REDUCE_SCATTER = MemoryKind.GATHERED, MemoryKind.REDUCE_SCATTER  # the kinds FSDP adds
_FORWARD, _BACKWARD, _OPTIMIZER = StepPhase.FORWARD, StepPhase.BACKWARD, StepPhase.OPTIMIZER


def _ceil_div(value: int, parts: int) -> int:
    return -(-value // parts)


def padded_shard_bytes(parameter: ParameterRecord, devices: int) -> int:
    """One device's shard of a parameter as FSDP2 keeps it: ``ceil(dim0 / N)`` rows (dim 0 padded to a multiple
    of N)."""
    shape = parameter.shape or (1,)
    rows = shape[0]
    row_elements = 1
    for size in shape[1:]:
        row_elements *= size
    return _ceil_div(rows, devices) * row_elements * parameter.itemsize


@dataclass(frozen=True)
class ShardUnit:
    """One ``fully_shard`` unit: its module's name ("" for the root unit) and its parameters' bytes, padded."""

    name: str
    gathered_bytes: int  # the unit's parameters whole, each padded (FSDP2's all-gather output)
    reduce_bytes: int  # its trainable parameters' gradients, padded (the reduce-scatter input)
    devices: int

    @property
    def sharded_bytes(self) -> int:
        return self.gathered_bytes // self.devices

    @property
    def sharded_grad_bytes(self) -> int:
        return self.reduce_bytes // self.devices


@dataclass(frozen=True)
class ShardPlan:
    """The units of a sharded step, in the order their modules first run, the root unit last."""

    devices: int
    units: tuple[ShardUnit, ...]
    description: str  # how the units were chosen, for the output: "each block (16 ResNetBottleNeckBlock)"

    @property
    def root(self) -> ShardUnit | None:
        return next((unit for unit in self.units if unit.name == ""), None)

    @property
    def largest(self) -> ShardUnit | None:
        return max(self.units, key=lambda unit: unit.gathered_bytes, default=None)

    def to_dict(self) -> dict[str, object]:
        return {"devices": self.devices, "description": self.description,
                "units": [{"name": unit.name, "gathered_bytes": unit.gathered_bytes,
                           "reduce_scatter_bytes": unit.reduce_bytes} for unit in self.units]}


def _block_names(training: TrainingCapture) -> list[str]:
    """The modules that add a residual shortcut (x + shortcut) themselves: the blocks."""
    capture = training.capture
    enclosing = enclosing_records(capture)
    names: dict[str, None] = {}
    for node in capture.nodes:
        record = enclosing[node.id]
        if record is not None and is_residual_merge(node):
            names[capture.layers[record].name] = None
    return list(names)


def _owners(training: TrainingCapture) -> set[str]:
    return {parameter.module for parameter in training.parameters}


def _encloses(unit: str, module: str) -> bool:
    return unit == "" or module == unit or module.startswith(unit + ".")


def _resolve_token(training: TrainingCapture, token: str) -> tuple[list[str], str]:
    layers = training.capture.layers
    owners = _owners(training)
    if token == BLOCK:
        blocks = _block_names(training)
        if blocks:
            types = sorted({layer.type for layer in layers if layer.name in blocks})
            return blocks, f"each block ({len(blocks)} {', '.join(types)})"
        token = LAYER
        fallback = "no residual blocks: "
    else:
        fallback = ""
    if token == LAYER:
        leaves = [layer.name for layer in layers if layer.is_leaf and layer.name in owners]
        return leaves, f"{fallback}each layer with parameters ({len(leaves)})"
    typed = [layer.name for layer in layers if layer.type == token]
    if typed:
        return typed, f"each {token} ({len(dict.fromkeys(typed))})"
    if any(layer.name == token for layer in layers) or token in owners:
        return [token], token
    raise BadInputError(f"--shard-units: no module is named or typed {token!r} (use block, layer, a module type "
                        "such as Bottleneck, or a module name; see `resnet-inspect summary MODEL`)")


def _unit_of(names: list[str], module: str) -> str:
    """The innermost unit that encloses ``module`` ("" : the root unit)."""
    return max((name for name in names if _encloses(name, module)), key=len, default="")


def shard_plan(training: TrainingCapture, devices: int, units: str = DEFAULT_UNITS) -> ShardPlan:
    """The ``fully_shard`` units ``units`` names ("block", "layer", module types or names, comma-separated), each
    with the padded bytes of the parameters it owns (a unit with none is no unit: FSDP2 gives it no group)."""
    if devices < 1:
        raise ValueError(f"devices must be at least 1, got {devices}")
    chosen: dict[str, None] = {}
    descriptions = []
    for token in (part.strip() for part in units.split(",")):
        if not token:
            raise BadInputError(f"--shard-units: an empty unit in {units!r}")
        names, description = _resolve_token(training, token)
        chosen.update(dict.fromkeys(name for name in names if name))
        descriptions.append(description)
    names = list(chosen)
    gathered: dict[str, int] = {}
    reduced: dict[str, int] = {}
    for parameter in training.parameters:
        unit = _unit_of(names, parameter.module)
        padded = padded_shard_bytes(parameter, devices) * devices
        gathered[unit] = gathered.get(unit, 0) + padded
        reduced[unit] = reduced.get(unit, 0) + (padded if parameter.trainable else 0)
    order = [name for name in dict.fromkeys(layer.name for layer in training.capture.layers) if name in gathered]
    order += [name for name in names if name in gathered and name not in order]
    if "" in gathered:
        order.append("")
    root = ", then the model itself (its own parameters: the root unit)" if "" in gathered else ""
    return ShardPlan(devices, tuple(ShardUnit(name, gathered[name], reduced[name], devices) for name in order),
                     "; ".join(descriptions) + root)


def sharded_resident_bytes(training: TrainingCapture, plan: ShardPlan) -> int:
    """Held by a device before the step: the parameter shards, the optimizer state of the shards (each state
    tensor shaped like a parameter becomes shard-shaped; per-parameter scalars stay whole), buffers, the input."""
    shards = sum(unit.sharded_bytes for unit in plan.units)
    trainable_whole = sum(_whole_bytes(p) for p in training.parameters if p.trainable)
    trainable_shards = sum(unit.sharded_grad_bytes for unit in plan.units)
    copies = training.state_bytes // trainable_whole if trainable_whole else 0
    state = copies * trainable_shards + training.state_bytes - copies * trainable_whole
    return shards + state + training.buffer_bytes + training.input_bytes


def _whole_bytes(parameter: ParameterRecord) -> int:
    elements = 1
    for size in parameter.shape:
        elements *= size
    return elements * parameter.itemsize


@dataclass
class _Replay:
    """FSDP2's allocations added to the meta step's, in order (see the module docstring)."""

    plan: ShardPlan
    events: list[MemoryEvent] = field(default_factory=list)
    chain: list[str] = field(default_factory=list)  # the units enclosing the layer now running, outer first
    unsharded: set[str] = field(default_factory=set)
    prefetched: set[str] = field(default_factory=set)
    forward_buffer: int = 0  # the last forward all-gather buffer, freed by the next unit's copy-out
    reduce_buffers: list[int] = field(default_factory=list)
    unsharded_grads: dict[str, int] = field(default_factory=dict)
    sharded_grads: int = 0
    post_forward_order: list[str] = field(default_factory=list)
    phase: StepPhase = _FORWARD
    layer: str = ""

    def __post_init__(self) -> None:
        self.units = {unit.name: unit for unit in self.plan.units}
        self.names = [unit.name for unit in self.plan.units if unit.name]

    def emit(self, size: int, kind: MemoryKind, allocation: int = 0) -> None:
        if size:
            self.events.append(MemoryEvent(size, kind, self.phase, self.layer, allocation))

    def gather(self, name: str) -> None:
        """unshard (the all-gather buffer) and wait_for_unshard (the copy-out) of one unit."""
        size = self.units[name].gathered_bytes
        if name in self.unsharded:
            return
        if name not in self.prefetched:
            self.emit(size, GATHERED)
        self.prefetched.discard(name)
        if self.phase == _FORWARD:  # the previous forward buffer is freed before the copy-out; this one kept
            self.emit(-self.forward_buffer, GATHERED)
            self.emit(size, GATHERED)
            self.forward_buffer = size
        else:
            self.emit(size, GATHERED)
            self.emit(-size, GATHERED)
        self.unsharded.add(name)

    def reshard(self, name: str) -> None:
        if name in self.unsharded:
            self.unsharded.discard(name)
            self.emit(-self.units[name].gathered_bytes, GATHERED)

    def post_forward(self, name: str) -> None:
        if name:
            self.reshard(name)
        self.post_forward_order.append(name)

    def pre_backward(self, name: str) -> None:
        self.gather(name)
        if name not in self.post_forward_order:
            return
        index = len(self.post_forward_order) - 1 - self.post_forward_order[::-1].index(name)
        self.post_forward_order[index] = "\0"  # popped: each forward call is prefetched once
        target = self.post_forward_order[index - 1] if index > 0 else "\0"
        if target in self.units and target not in self.unsharded and target not in self.prefetched:
            self.prefetched.add(target)
            self.emit(self.units[target].gathered_bytes, GATHERED)

    def post_backward(self, name: str) -> None:
        self.reshard(name)
        while self.reduce_buffers:
            self.emit(-self.reduce_buffers.pop(0), REDUCE_SCATTER)
        grads = self.unsharded_grads.pop(name, 0)
        if grads:
            unit = self.units[name]
            self.emit(unit.reduce_bytes, REDUCE_SCATTER)
            self.emit(-grads, MemoryKind.GRADIENT)
            self.emit(unit.sharded_grad_bytes, MemoryKind.GRADIENT)
            self.reduce_buffers.append(unit.reduce_bytes)
            self.sharded_grads += unit.sharded_grad_bytes

    def move_to(self, layer: str) -> None:
        """The layer running changes: units left end (inner first), units entered start (outer first)."""
        chain = sorted((name for name in self.names if _encloses(name, layer) and layer), key=len)
        for name in reversed([name for name in self.chain if name not in chain]):
            (self.post_forward if self.phase == _FORWARD else self.post_backward)(name)
        for name in (name for name in chain if name not in self.chain):
            (self.gather if self.phase == _FORWARD else self.pre_backward)(name)
        self.chain = chain

    def end_forward(self) -> None:
        self.move_to("")
        if "" in self.units:
            self.post_forward("")
        self.emit(-self.forward_buffer, GATHERED)
        self.forward_buffer = 0
        self.phase = _BACKWARD
        if "" in self.units:
            self.pre_backward("")

    def end_backward(self) -> None:
        self.move_to("")
        if "" in self.units:
            self.post_backward("")
        while self.reduce_buffers:
            self.emit(-self.reduce_buffers.pop(0), REDUCE_SCATTER)
        self.phase = _OPTIMIZER

    def replay(self, event: MemoryEvent) -> None:
        if event.phase != self.phase:
            self.layer = event.layer
            if self.phase == _FORWARD:
                self.end_forward()
            if self.phase == _BACKWARD and event.phase == _OPTIMIZER:
                self.end_backward()
        self.layer = event.layer
        if self.phase != _OPTIMIZER:
            self.move_to(event.layer)
        size = event.bytes
        if event.kind == MemoryKind.GRADIENT:
            if size < 0:  # the shards' gradients are let go at the end instead
                return
            unit = _unit_of(self.names, event.layer)
            self.unsharded_grads[unit] = self.unsharded_grads.get(unit, 0) + size
        elif self.phase == _OPTIMIZER:  # the optimizer works on the shards
            size = _ceil_div(size, self.plan.devices) if size > 0 else -_ceil_div(-size, self.plan.devices)
        self.emit(size, event.kind, event.allocation)


def sharded_events(training: TrainingCapture, plan: ShardPlan) -> list[MemoryEvent]:
    """One device's allocations and releases over the step (beyond ``sharded_resident_bytes``): the meta step's,
    with FSDP2's all-gather and reduce-scatter buffers and the gradients' shards (see the module docstring)."""
    replay = _Replay(plan)
    if "" in replay.units:
        replay.gather("")
    for event in training.events:
        if event.kind != MemoryKind.STATE:
            replay.replay(event)
    if replay.phase == _FORWARD:
        replay.end_forward()
    if replay.phase == _BACKWARD:
        replay.layer = "the optimizer step"
        replay.end_backward()
    replay.emit(-replay.sharded_grads, MemoryKind.GRADIENT)  # zero_grad(set_to_none=True)
    return replay.events


__all__ = [
    "BLOCK", "DEFAULT_UNITS", "GATHERED", "LAYER", "REDUCE_SCATTER", "ShardPlan", "ShardUnit", "padded_shard_bytes",
    "shard_plan", "sharded_events", "sharded_resident_bytes",
]
