"""Receptive fields over the captured dataflow graph (Araujo, Norris & Sim, Distill 2019).

Per axis, cumulative from the input: size ``r = sum (k'_l - 1) prod_{i<l} s_i + 1`` (``k' = d(k - 1) + 1``),
effective stride ``S = prod s_l``, effective padding ``P = sum p_l prod_{i<l} s_i``. Output unit ``u`` covers
input positions ``[-P + u S, -P + u S + r - 1]``. Node by node, each operation updates its input's field:

    r' = r + (k' - 1) S        S' = S s        P' = P + p S

At a merge (``x + residual``) the paths must be *aligned*: same S and same centre ``(r - 1)/2 - P``; the
merged field is then the largest one. Unaligned paths, transposed convolutions and operations without a rule
leave the field undefined, with a reason, rather than a number that holds only somewhere. Pure Python.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from resnet_inspect.records import Capture, LayerRecord, OpKind, OpNode, Pair

AXES = (0, 1)


@dataclass(frozen=True)
class NodeField:
    """The receptive field of the units of one node's output, per axis (height, width), in input pixels.

    ``reduced`` marks values whose spatial axes were pooled or flattened away: they depend on the whole input.
    """

    size: Pair
    stride: Pair
    padding: Pair
    reduced: bool = False

    @property
    def centre(self) -> tuple[float, float]:
        """Centre of output unit 0 in input coordinates: ``-P + (r - 1) / 2``."""
        return (-self.padding[0] + (self.size[0] - 1) / 2, -self.padding[1] + (self.size[1] - 1) / 2)

    def interval(self, unit: Pair) -> tuple[Pair, Pair]:
        """First and last input position covered by output unit ``unit``: ((top, bottom), (left, right))."""
        starts = [-self.padding[axis] + unit[axis] * self.stride[axis] for axis in AXES]
        return (
            (starts[0], starts[0] + self.size[0] - 1),
            (starts[1], starts[1] + self.size[1] - 1),
        )

    def covers_input(self, input_size: Pair, output_size: Pair) -> bool:
        """Whether every output unit, the border ones included, sees the whole input."""
        if self.reduced:
            return True
        first = self.interval((0, 0))
        last = self.interval((max(output_size[0] - 1, 0), max(output_size[1] - 1, 0)))
        return all(first[axis][1] >= input_size[axis] - 1 and last[axis][0] <= 0 for axis in AXES)

    def to_json(self) -> dict[str, list[int]]:
        return {"size": list(self.size), "stride": list(self.stride), "padding": list(self.padding)}


INPUT_FIELD = NodeField(size=(1, 1), stride=(1, 1), padding=(0, 0))


@dataclass(frozen=True)
class StageField:
    """The field at the output of one stage: the stem, a residual layer, or the encoder output."""

    name: str
    modules: tuple[str, ...]  # the trunk's children that make up this row
    node: int  # the graph node at the stage output
    output_size: Pair
    field: NodeField | None
    covers_input: bool | None
    reason: str | None = None  # why the field is undefined

    @property
    def size(self) -> Pair | None:
        return self.field.size if self.field else None

    @property
    def stride(self) -> Pair | None:
        return self.field.stride if self.field else None

    @property
    def padding(self) -> Pair | None:
        return self.field.padding if self.field else None


@dataclass(frozen=True)
class ReceptiveFieldResult:
    """Receptive fields of every node of a capture, the per-stage rows and the encoder output."""

    input_size: Pair
    fields: dict[int, NodeField | None]
    undefined: dict[int, str]  # node id -> why its field is undefined
    aligned: bool  # False when some merge joins paths with different stride or centre
    reasons: tuple[str, ...]  # the distinct root causes of undefined fields, in graph order
    stages: tuple[StageField, ...]
    output: NodeField | None  # at the encoder output: the last 4-D feature map before global pooling
    output_node: int | None

    def field(self, node: int | None) -> NodeField | None:
        return None if node is None else self.fields.get(node)

    def field_json(self, node: int | None) -> dict[str, list[int]] | None:
        field = self.field(node)
        return field.to_json() if field else None

    def to_json(self) -> dict[str, list[int]] | None:
        """The ``receptive_field: {size, stride, padding}`` value of the encoder output (None if undefined)."""
        return self.output.to_json() if self.output else None


class _Undefined(Exception):
    """A node whose field the analysis cannot give; the message says why."""


# ----------------------------------------------------------------------------------------- node rules


def _window(field: NodeField, kernel: Pair, stride: Pair, padding: Pair, reduced: bool = False) -> NodeField:
    """Distill 2019's recurrence for one layer: r' = r + (k' - 1) S, S' = S s, P' = P + p S."""
    return NodeField(
        size=(field.size[0] + (kernel[0] - 1) * field.stride[0], field.size[1] + (kernel[1] - 1) * field.stride[1]),
        stride=(field.stride[0] * stride[0], field.stride[1] * stride[1]),
        padding=(field.padding[0] + padding[0] * field.stride[0], field.padding[1] + padding[1] * field.stride[1]),
        reduced=reduced,
    )


def _spatial(shape: tuple[int, ...]) -> Pair | None:
    return (shape[2], shape[3]) if len(shape) == 4 else None


def _whole_map(field: NodeField, node: OpNode) -> NodeField:
    """A reduction over the whole map: a window with k = s = the map's size, so the union of all unit fields."""
    size = _spatial(node.input_shapes[0]) if node.input_shapes else None
    if size is None:
        return NodeField(field.size, field.stride, field.padding, reduced=True)
    return _window(field, size, size, (0, 0), reduced=True)


def _windowed(field: NodeField, node: OpNode) -> NodeField:
    geometry = node.geometry
    return _window(field, geometry.effective_kernel, geometry.stride, geometry.padding)


def _adaptive(field: NodeField, node: OpNode) -> NodeField:
    """Adaptive pooling is a plain pool with k = s = i / o when o divides i (o = 1 is global pooling)."""
    size = _spatial(node.input_shapes[0]) if node.input_shapes else None
    target = node.geometry.output_size or (None, None)
    if size is None:
        raise _Undefined(f"not covered: {node.name} ({node.type}) pools a tensor without two spatial axes")
    outputs = tuple(size[axis] if target[axis] is None else target[axis] for axis in AXES)
    if outputs == (1, 1):
        return _whole_map(field, node)
    if any(size[axis] % outputs[axis] for axis in AXES):
        raise _Undefined(
            f"not covered: {node.name} ({node.type}) pools {size[0]}x{size[1]} to {outputs[0]}x{outputs[1]} "
            "with windows of unequal size"
        )
    kernel = (size[0] // outputs[0], size[1] // outputs[1])
    return _window(field, kernel, kernel, (0, 0))


def _position_wise(field: NodeField, node: OpNode) -> NodeField:
    """Element-wise ops (BN, ReLU, addition, channel padding) act as k = 1, s = 1."""
    return field


def _subsample(field: NodeField, node: OpNode) -> NodeField:
    """``x[..., a::s, b::s]``: k = 1, stride s, padding -a (the capture records the start as negative padding)."""
    return _window(field, (1, 1), node.geometry.stride, node.geometry.padding)


def _pad(field: NodeField, node: OpNode) -> NodeField:
    """Explicit zero padding: k = 1, s = 1, leading padding p (the trailing padding moves no unit)."""
    return _window(field, (1, 1), (1, 1), node.geometry.padding)


def _reshape(field: NodeField, node: OpNode) -> NodeField:
    before = _spatial(node.input_shapes[0]) if node.input_shapes else None
    after = _spatial(node.output_shape)
    if before is None or after == before:
        return field
    if after is None:
        return _whole_map(field, node)  # flatten: spatial meaning ends, the value depends on the whole map
    raise _Undefined(f"not covered: {node.name} ({node.type}) rearranges the spatial axes")


def _linear(field: NodeField, node: OpNode) -> NodeField:
    if node.input_shapes and _spatial(node.input_shapes[0]) is not None:
        raise _Undefined(f"not covered: {node.name} ({node.type}) mixes a spatial axis")
    return field


def _not_covered(what: str) -> Callable[[NodeField, OpNode], NodeField]:
    def rule(field: NodeField, node: OpNode) -> NodeField:
        raise _Undefined(f"not covered: {node.name} ({node.type}) is {what}")

    return rule


# One rule per operation kind (fvcore's habit: a table, not an if/elif chain).
RULES: dict[OpKind, Callable[[NodeField, OpNode], NodeField]] = {
    OpKind.CONV: _windowed,
    OpKind.MAX_POOL: _windowed,  # ceil_mode adds a window on the right: r, S and P are unchanged
    OpKind.AVG_POOL: _windowed,
    OpKind.ADAPTIVE_POOL: _adaptive,
    OpKind.ELEMENTWISE: _position_wise,
    OpKind.SUBSAMPLE: _subsample,
    OpKind.PAD: _pad,
    OpKind.GLOBAL: _whole_map,
    OpKind.RESHAPE: _reshape,
    OpKind.LINEAR: _linear,
    OpKind.CONV_TRANSPOSE: _not_covered("a transposed convolution"),
    OpKind.UNKNOWN: _not_covered("an operation without a receptive-field rule"),
}


def _merge(node: OpNode, fields: list[NodeField]) -> NodeField:
    """Several inputs: the largest field over aligned paths (same S, same centre); anything else is undefined."""
    reduced = [field for field in fields if field.reduced]
    if reduced:  # a value that depends on the whole input, broadcast over the map (e.g. x * gate)
        return max(reduced, key=lambda field: field.size[0] * field.size[1])
    first = fields[0]
    strides = {field.stride for field in fields}
    centres = {field.centre for field in fields}
    if len(strides) > 1 or len(centres) > 1:
        paths = "; ".join(
            f"stride {_pair_text(f.stride)}, centre {_pair_text(f.centre)}" for f in dict.fromkeys(fields)
        )
        raise _Undefined(f"unaligned merge at {node.name}: its input paths differ ({paths})")
    size = tuple(max(field.size[axis] for field in fields) for axis in AXES)
    padding = tuple(max(field.padding[axis] for field in fields) for axis in AXES)  # same centre: larger r, larger P
    return NodeField((size[0], size[1]), first.stride, (padding[0], padding[1]))


def _pair_text(values: tuple[Any, Any]) -> str:
    texts = [f"{v:g}" if isinstance(v, float) else str(v) for v in values]
    return texts[0] if texts[0] == texts[1] else "x".join(texts)


def node_fields(capture: Capture) -> tuple[dict[int, NodeField | None], dict[int, str], tuple[str, ...], bool]:
    """Fields of every node, the reason for each undefined one, the distinct root causes, and alignment."""
    fields: dict[int, NodeField | None] = {}
    undefined: dict[int, str] = {}
    causes: list[str] = []
    aligned = True
    for node in capture.nodes:
        if not node.inputs:
            fields[node.id] = INPUT_FIELD
            continue
        missing = [undefined[i] for i in node.inputs if fields.get(i) is None and i in undefined]
        inputs = [fields[i] for i in node.inputs if fields.get(i) is not None]
        if missing and not any(field.reduced for field in inputs):
            fields[node.id], undefined[node.id] = None, missing[0]
            continue
        try:
            merged = _merge(node, inputs) if len(inputs) > 1 else inputs[0]
            fields[node.id] = merged if merged.reduced else RULES[node.geometry.kind](merged, node)
        except _Undefined as exc:
            fields[node.id], undefined[node.id] = None, str(exc)
            causes.append(str(exc))
            aligned = aligned and not str(exc).startswith("unaligned")
    return fields, undefined, tuple(dict.fromkeys(causes)), aligned


# ------------------------------------------------------------------------------------------------ stages


def _ancestors(capture: Capture, node: int) -> set[int]:
    """``node`` and every node it depends on."""
    seen, stack = set(), [node]
    while stack:
        current = stack.pop()
        if current not in seen:
            seen.add(current)
            stack.extend(capture.nodes[current].inputs)
    return seen


def _is_reduced(capture: Capture) -> set[int]:
    """Nodes computed after the spatial axes were pooled or flattened away (independent of defined fields)."""
    reduced: set[int] = set()
    for node in capture.nodes:
        before = _spatial(node.input_shapes[0]) if node.input_shapes else None
        after = _spatial(node.output_shape)
        reduces = before is not None and (after is None or (after == (1, 1) and before != (1, 1) and (
            node.geometry.kind in (OpKind.GLOBAL, OpKind.ADAPTIVE_POOL))))
        if reduces or any(i in reduced for i in node.inputs):
            reduced.add(node.id)
    return reduced


def encoder_output_node(capture: Capture) -> int | None:
    """The last 4-D feature map on the way to the model output before any global pooling or flattening."""
    reduced = _is_reduced(capture)
    candidates = [
        i for i in _ancestors(capture, capture.output_node)
        if len(capture.nodes[i].output_shape) == 4 and i not in reduced
    ]
    return max(candidates) if candidates else None


def _children(capture: Capture, parent: LayerRecord | None) -> list[LayerRecord]:
    index = parent.index if parent else None
    return [layer for layer in capture.layers if layer.parent == index]


def _trunk(capture: Capture, encoder_output: int) -> LayerRecord | None:
    """The innermost module call that runs from the model input to the encoder output through several children.

    Our ResNets have one (``encoder``); a torchvision-layout ResNet does its stages in the model's own forward,
    so the trunk is the model itself (None). The trunk's input is the model input, possibly after position-wise
    preprocessing such as normalisation.
    """
    def raw(node: int) -> bool:
        return all(capture.nodes[i].geometry.kind is OpKind.ELEMENTWISE and len(capture.nodes[i].inputs) <= 1
                   for i in _ancestors(capture, node))

    spanning = [
        layer for layer in capture.layers
        if not layer.is_leaf and layer.output_node == encoder_output and layer.input_nodes
        and all(raw(node) for node in layer.input_nodes) and len(_children(capture, layer)) > 1
    ]
    return max(spanning, key=lambda layer: layer.depth) if spanning else None


def _stage_children(capture: Capture, trunk: LayerRecord | None, encoder_output: int) -> list[tuple[LayerRecord, bool]]:
    """The trunk's children on the way to the encoder output, each with whether it contains a merge."""
    path = _ancestors(capture, encoder_output)
    children = [
        layer for layer in _children(capture, trunk)
        if layer.output_node is not None and layer.output_node in path
    ]
    merges = [node.id for node in capture.nodes if len(node.inputs) > 1]
    result, start = [], 0
    for child in children:
        end = child.output_node if child.output_node is not None else start
        result.append((child, any(start < merge <= end for merge in merges)))  # nodes run in call order
        start = max(start, end)
    return result


def _groups(children: list[tuple[LayerRecord, bool]], prefix: str) -> list[tuple[str, list[LayerRecord]]]:
    """Rows: the leading children without a residual merge form the stem; every later container is a stage.

    A network without merges (a plain CNN) gets a stem of its leading leaves and one row per container; a flat
    one gets one row per run of layers ending before the next change of resolution. Stages are named relative
    to the trunk (``layers.0`` inside ``encoder``, ``layer1`` in a torchvision ResNet).
    """
    if not children:
        return []
    with_merges = [i for i, (_, merges) in enumerate(children) if merges]
    containers = [i for i, (child, _) in enumerate(children) if not child.is_leaf]
    boundary = with_merges[0] if with_merges else (containers[0] if containers else None)
    if boundary is not None:
        groups: list[tuple[str, list[LayerRecord]]] = []
        if boundary:
            groups.append(("stem", [child for child, _ in children[:boundary]]))
        groups += [(child.name.removeprefix(prefix), [child]) for child, merges in children[boundary:]
                   if merges or not child.is_leaf]
        return groups
    return _resolution_runs([child for child, _ in children])


def _resolution_runs(children: list[LayerRecord]) -> list[tuple[str, list[LayerRecord]]]:
    runs: list[list[LayerRecord]] = [[]]
    for position, child in enumerate(children):
        runs[-1].append(child)
        following = children[position + 1] if position + 1 < len(children) else None
        if following is not None and following.output_shape[2:] != child.output_shape[2:]:
            runs.append([])
    return [(f"stage{number}", run) for number, run in enumerate(runs, start=1) if run]


def _stage(capture: Capture, name: str, modules: tuple[str, ...], node: int,
           fields: dict[int, NodeField | None], undefined: dict[int, str]) -> StageField:
    input_size = _spatial(capture.input_shape) or (1, 1)
    output_size = _spatial(capture.nodes[node].output_shape) or (1, 1)
    field = fields.get(node)
    covers = field.covers_input(input_size, output_size) if field else None
    return StageField(name, modules, node, output_size, field, covers, undefined.get(node))


def analyze_receptive_field(capture: Capture) -> ReceptiveFieldResult:
    """Receptive fields of every node of ``capture``, one row per stage and the encoder output's field."""
    fields, undefined, reasons, aligned = node_fields(capture)
    encoder_output = encoder_output_node(capture)
    stages: list[StageField] = []
    if encoder_output is not None:
        trunk = _trunk(capture, encoder_output)
        prefix = f"{trunk.name}." if trunk else ""
        for name, members in _groups(_stage_children(capture, trunk, encoder_output), prefix):
            node = members[-1].output_node
            if node is not None:
                stages.append(_stage(capture, name, tuple(m.name for m in members), node, fields, undefined))
        stages.append(_stage(capture, "output", (), encoder_output, fields, undefined))
    return ReceptiveFieldResult(
        input_size=_spatial(capture.input_shape) or (1, 1), fields=fields, undefined=undefined, aligned=aligned,
        reasons=reasons, stages=tuple(stages), output=fields.get(encoder_output) if encoder_output is not None
        else None, output_node=encoder_output,
    )


def layer_fields(capture: Capture, result: ReceptiveFieldResult) -> dict[int, dict[str, list[int]] | None]:
    """Record index -> the field at that module call's output as ``{size, stride, padding}``, or None."""
    return {layer.index: result.field_json(layer.output_node) for layer in capture.layers}


__all__ = [
    "INPUT_FIELD",
    "RULES",
    "NodeField",
    "ReceptiveFieldResult",
    "StageField",
    "analyze_receptive_field",
    "encoder_output_node",
    "layer_fields",
    "node_fields",
]
