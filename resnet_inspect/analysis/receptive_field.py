"""Receptive fields over the captured dataflow graph (Araujo, Norris & Sim, Distill 2019).

Node by node, the operation table's field rule turns the inputs' states (where the spatial axes are, and their
field) into the output's. Per axis, cumulative from the input: size ``r = sum (k'_l - 1) prod_{i<l} s_i + 1``,
effective stride ``S = prod s_l``, effective padding ``P = sum p_l prod_{i<l} s_i``; output unit ``u`` covers
input positions ``[-P + u S, -P + u S + r - 1]``.

At a merge (``x + residual``) paths with the same stride and centre are aligned and the field is the largest;
the same stride with different centres gives the hull of the intervals (``union``, not aligned); different
strides leave the field undefined. A product with a spatially reduced tensor (a squeeze-and-excitation gate)
keeps the main path's field and marks ``global_context``; token mixing (attention) makes the field the whole
input. Operations without a rule leave the field undefined, with a reason. Pure Python.

The stages: those the model declares (timm's ``feature_info``), else the trunk's children from the first
residual block on, after a stem of the leading children: each stage container (a child that holds residual
blocks) is one stage whatever its resolution; single blocks are grouped by resolution. This is the one stage
model: compare, rf, the summary's ``params_by_stage`` and the HTML chart all read it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from resnet_inspect.names import call_name
from resnet_inspect.ops.fields import FEATURES, Layout, NodeField, Undefined, merge_fields
from resnet_inspect.ops.registry import get_op
from resnet_inspect.ops.spans import fit
from resnet_inspect.ops.table import FieldState
from resnet_inspect.records import Capture, LayerRecord, OpKind, OpNode, Sizes

# The field of a value that depends on no input (it runs on buffers, parameters or constants): not a stride-1
# path, but no field at all; joined to a path, it leaves that path's field as it is.
CONSTANT_FIELD_JSON: dict[str, object] = {"size": None, "stride": None, "padding": None, "global_context": False,
                                          "constant": True}


@dataclass(frozen=True)
class StageField:
    """The field at the output of one stage: the stem, a stage, or the encoder output."""

    name: str
    modules: tuple[str, ...]  # the trunk's children that make up this row
    node: int  # the graph node at the stage output
    output_size: Sizes
    field: NodeField | None
    covers_input: bool | None
    reason: str | None = None  # why the field is undefined (or, for an inexact field, what it is)
    records: tuple[int, ...] = ()  # the module calls (record indices) that make up this row: a module run twice
    # is two rows, each of its own call

    @property
    def size(self) -> tuple[object, ...] | None:
        return self.field.size if self.field else None

    @property
    def stride(self) -> tuple[object, ...] | None:
        return self.field.stride if self.field else None

    @property
    def padding(self) -> tuple[object, ...] | None:
        return self.field.padding if self.field else None


@dataclass(frozen=True)
class ReceptiveFieldResult:
    """Receptive fields of every node of a capture, the per-stage rows and the encoder output."""

    input_size: Sizes
    states: dict[int, FieldState]  # what the rules computed (layouts included), for the defined nodes
    fields: dict[int, NodeField | None]  # the field reported for each node
    undefined: dict[int, str]  # node id -> why its field is undefined
    aligned: bool  # False when some merge joins paths with different stride or centre
    union: bool  # some merge gave the hull of paths with the same stride and different centres
    reasons: tuple[str, ...]  # the distinct root causes of undefined fields, in graph order
    stages: tuple[StageField, ...]
    output: NodeField | None  # at the encoder output: the last feature map before global pooling
    output_node: int | None
    remarks: tuple[str, ...] = ()  # what holds the numbers: inexact fields after upsampling, padding modes
    residual_stages: bool = False  # every stage after the stem is made of residual blocks
    constant: frozenset[int] = frozenset()  # nodes that depend on no model input (they have no field)

    def field(self, node: int | None) -> NodeField | None:
        return None if node is None else self.fields.get(node)

    def field_json(self, node: int | None) -> dict[str, object] | None:
        """The node's field as JSON; a constant node's says ``constant: true`` with no size, stride or padding."""
        if node is not None and node in self.constant:
            return dict(CONSTANT_FIELD_JSON)
        field = self.field(node)
        return field.to_json() if field else None

    def to_json(self) -> dict[str, object] | None:
        """The ``receptive_field`` value of the encoder output (None if undefined)."""
        return self.output.to_json() if self.output else None

    def grid(self, node: int) -> Sizes | None:
        """The spatial size of a node's output, read on its own axes (NHWC and token maps too)."""
        state = self.states.get(node)
        return state.layout.grid if state is not None else None


# --------------------------------------------------------------------------------------------- node fields


def _input_state(node: OpNode) -> FieldState | None:
    shape = node.output_shape
    rank = len(shape) - 2
    if rank < 1:
        return None
    grid = tuple(shape[2:])
    return FieldState(Layout.channels_first(len(shape), grid), NodeField((1,) * rank, (1,) * rank, (0,) * rank))


def _all_reduced(node: OpNode, inputs: list[FieldState]) -> FieldState:
    """Any operation on values that already depend on the whole map (a classifier head, a gate's MLP)."""
    fields = [state.field for state in inputs]
    field = fields[0] if len(fields) == 1 else merge_fields(node.name, fields)
    rank = inputs[0].layout.rank
    return FieldState(Layout(((),) * len(node.output_shape), (1,) * rank), field)


def _reported(node: OpNode, state: FieldState) -> tuple[NodeField | None, str | None]:
    """The field to report for a node, or why there is none (positions shifted along a spatial axis)."""
    if state.layout.scrambled and not state.field.position_independent:
        return None, (f"not covered: {node.name} ({node.type}) comes after a concatenation along a spatial axis; "
                      "the positions no longer follow the grid")
    return state.field, None


def node_states(capture: Capture) -> tuple[dict[int, FieldState], dict[int, str], list[str], bool, bool]:
    """Each node's state, the reason for every undefined one, the distinct root causes, alignment and union."""
    states: dict[int, FieldState] = {}
    undefined: dict[int, str] = {}
    causes: list[str] = []
    aligned, union = True, False
    for node in capture.nodes:
        if node.constant:  # depends on no input: no field, and it joins none (its output is not tracked)
            continue
        if not node.inputs:
            state = _input_state(node)
            if state is None:
                undefined[node.id] = "the input has no spatial axes"
            else:
                states[node.id] = state
            continue
        missing = [undefined[i] for i in node.inputs if i in undefined]
        if missing:
            undefined[node.id] = missing[0]
            continue
        inputs = [states[i] for i in node.inputs]
        try:
            if all(state.field.reduced for state in inputs):
                state = _all_reduced(node, inputs)
            else:
                state = get_op(node.op).field(node, inputs)
        except Undefined as exc:
            reason = str(exc)
            undefined[node.id] = reason
            causes.append(reason)
            aligned = aligned and not reason.startswith("unaligned")
            continue
        except Exception as exc:  # a user's rule that breaks: said, not raised
            reason = f"the field rule of {node.op!r} failed at {node.name}: {type(exc).__name__}: {exc}"
            undefined[node.id] = reason.splitlines()[0]
            causes.append(undefined[node.id])
            continue
        if state.field.union and not any(states[i].field.union for i in node.inputs):
            aligned, union = False, True
        if state.field.spans is not None and not state.field.position_independent:
            state = FieldState(state.layout, replace(state.field, spans=fit(state.field.spans, state.layout.grid)))
        states[node.id] = state
    return states, undefined, list(dict.fromkeys(causes)), aligned, union


# ------------------------------------------------------------------------------------------------ stages


def ancestors(capture: Capture, node: int) -> set[int]:
    """``node`` and every node it depends on."""
    seen, stack = set(), [node]
    while stack:
        current = stack.pop()
        if current not in seen:
            seen.add(current)
            stack.extend(capture.nodes[current].inputs)
    return seen


def is_residual_merge(node: OpNode) -> bool:
    """``x + shortcut``: an element-wise addition of two tracked tensors."""
    return node.op == "elementwise" and node.type in ("add", "sub") and len(node.inputs) > 1


def _is_map(capture: Capture, node: int, states: dict[int, FieldState]) -> bool:
    """A feature map: its spatial axes are still there (in any dimensions), not pooled or flattened away."""
    state = states.get(node)
    if state is not None:
        spatial = [axes for axes in state.layout.dims if axes]
        return bool(spatial) and not state.field.reduced and all(FEATURES not in axes for axes in spatial)
    shape, input_shape = capture.nodes[node].output_shape, capture.input_shape
    return len(shape) == len(input_shape) and all(size > 1 for size in shape[2:])


def encoder_output_node(capture: Capture, states: dict[int, FieldState] | None = None) -> int | None:
    """The last feature map on the way to the (first) model output, before global pooling or flattening."""
    states = states if states is not None else node_states(capture)[0]
    candidates = [i for i in ancestors(capture, capture.output_node) if capture.nodes[i].inputs
                  and _is_map(capture, i, states)]
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
                   for i in ancestors(capture, node))

    spanning = [
        layer for layer in capture.layers
        if not layer.is_leaf and layer.output_node == encoder_output and layer.input_nodes
        and all(raw(node) for node in layer.input_nodes) and len(_children(capture, layer)) > 1
    ]
    return max(spanning, key=lambda layer: layer.depth) if spanning else None


@dataclass(frozen=True)
class _Child:
    layer: LayerRecord
    merges: int  # residual merges that ran inside it
    weighted: bool  # it runs a convolution or linear layer
    grid: Sizes | None
    holds_blocks: bool = False  # a stage container: its residual merges ran inside its own children (blocks)


def _stage_children(capture: Capture, trunk: LayerRecord | None, encoder_output: int,
                    states: dict[int, FieldState]) -> list[_Child]:
    """The trunk's children on the way to the encoder output, with their residual merges and resolution."""
    path = ancestors(capture, encoder_output)
    merges = [node for node in capture.nodes if is_residual_merge(node)]
    children = [layer for layer in _stage_level(capture, _children(capture, trunk), merges)
                if layer.output_node is not None and layer.output_node in path]
    result, start = [], 0
    for child in children:
        end = child.output_node if child.output_node is not None else start
        inside = [node for node in capture.nodes if start < node.id <= end]  # nodes run in call order
        state = states.get(end)
        grid = state.layout.grid if state is not None else tuple(capture.nodes[end].output_shape[2:])
        merges = [node for node in inside if is_residual_merge(node)]
        result.append(_Child(child, len(merges), any(node.geometry.kind.is_weighted for node in inside), grid,
                             any(node.scope.startswith(f"{child.name}.") for node in merges)))
        start = max(start, end)
    return result


def _holds_blocks(layer: LayerRecord, merges: list[OpNode]) -> bool:
    """A stage container: a module whose residual merges ran inside its own children (its blocks)."""
    return not layer.is_leaf and any(node.scope.startswith(f"{layer.name}.") for node in merges)


def _stage_level(capture: Capture, children: list[LayerRecord], merges: list[OpNode]) -> list[LayerRecord]:
    """The children, with every module that holds several stage containers replaced by its own children,
    recursively.

    A backbone wrapper (torchvision's ``IntermediateLayerGetter`` in DeepLabV3 and FCN) holds the stem and the
    stages: its stages are the rows, and the outputs it returns are not its end. A module around one stage
    container (a stage that keeps its blocks in a ``blocks`` list) is that stage."""
    result: list[LayerRecord] = []
    for child in children:
        grandchildren = _children(capture, child)
        if sum(_holds_blocks(grandchild, merges) for grandchild in grandchildren) > 1:
            result += _stage_level(capture, grandchildren, merges)
        else:
            result.append(child)
    return result


def _groups(children: list[_Child], prefix: str) -> tuple[list[tuple[str, list[LayerRecord]]], bool]:
    """Rows, and whether the stages are made of residual blocks.

    The leading children without a residual merge form the stem. A stage container (a child whose residual merges
    ran inside its own children: a ResNet's ``layer3``) is one stage whatever its resolution, so a dilated ResNet
    keeps its four stages; single blocks at one resolution make one stage (a MobileNet's). A network
    without merges gets a stem of its leading leaves and one row per container, or one row per resolution.
    When the children are single blocks, some without a residual merge (a strided MobileNet block), the stages
    are not "made of residual blocks" and blocks per stage mean nothing.
    """
    if not children:
        return [], False
    with_merges = [i for i, child in enumerate(children) if child.merges]
    containers = [i for i, child in enumerate(children) if not child.layer.is_leaf]
    boundary = with_merges[0] if with_merges else (containers[0] if containers else None)
    if boundary is None:
        return _resolution_runs(children), False
    groups: list[tuple[str, list[_Child]]] = []
    if boundary:
        groups.append(("stem", children[:boundary]))
    rest = [child for child in children[boundary:] if child.merges or not child.layer.is_leaf]
    runs: list[list[_Child]] = []
    for child in rest:  # single residual blocks at one resolution make one stage; containers are one each
        previous = runs[-1][-1] if runs else None
        if (with_merges and previous is not None and previous.grid == child.grid
                and not previous.holds_blocks and not child.holds_blocks):
            runs[-1].append(child)
        else:
            runs.append([child])
    for run in runs:
        first, last = run[0].layer.name.removeprefix(prefix), run[-1].layer.name.removeprefix(prefix)
        groups.append((first if len(run) == 1 else f"{first}..{last}", run))
    residual = bool(with_merges) and all(child.merges or not child.weighted for child in rest) and all(
        any(child.merges for child in run) for run in runs)
    return [(name, [child.layer for child in members]) for name, members in groups], residual


def _resolution_runs(children: list[_Child]) -> list[tuple[str, list[LayerRecord]]]:
    runs: list[list[LayerRecord]] = [[]]
    for position, child in enumerate(children):
        runs[-1].append(child.layer)
        following = children[position + 1] if position + 1 < len(children) else None
        if following is not None and following.grid != child.grid:
            runs.append([])
    return [(f"stage{number}", run) for number, run in enumerate(runs, start=1) if run]


_Row = tuple[str, tuple[str, ...], int, tuple[int, ...]]  # name, modules, output node, module calls


def _declared_stages(capture: Capture) -> list[_Row]:
    """The model's own stages (timm's ``feature_info``): name, modules, output node and last call of each."""
    stages: list[_Row] = []
    for name in capture.feature_modules:
        calls = [(layer.index, layer.output_node) for layer in capture.layers
                 if layer.name == name and layer.output_node is not None]
        if calls:
            index, node = calls[-1]
            stages.append((name, (name,), node, (index,)))
    return stages


def _distinct_names(rows: list[_Row]) -> list[_Row]:
    """A stage module called again gives another row, named for its call: ``stage (call 2)``."""
    seen: dict[str, int] = {}
    result = []
    for name, modules, node, records in rows:
        seen[name] = seen.get(name, 0) + 1
        result.append((call_name(name, seen[name]), modules, node, records))
    return result


def _stage(capture: Capture, row: _Row, fields: dict[int, NodeField | None], undefined: dict[int, str],
           states: dict[int, FieldState]) -> StageField:
    name, modules, node, records = row
    input_size = tuple(capture.input_shape[2:]) or (1,)
    state = states.get(node)
    output_size = state.layout.grid if state is not None else tuple(capture.nodes[node].output_shape[2:])
    field = fields.get(node)
    covers = field.covers_input(input_size, output_size) if field else None
    reason = undefined.get(node)
    if field is not None and field.spans is not None:
        reason = ("after windowed attention or a roll the field changes from unit to unit: size and padding are those "
                  "of the centre unit; the JSON's spans give every unit's first and last input position")
    if field is not None and not field.exact:
        reason = ("after upsampling the field varies from pixel to pixel: size, stride and padding (with a rational "
                  "stride) give an interval that holds every pixel's field, up to about one input stride wider")
    return StageField(name, modules, node, output_size, field, covers, reason, records)


def _remarks(capture: Capture, fields: dict[int, NodeField | None]) -> tuple[str, ...]:
    remarks = []
    for node in capture.nodes:
        field = fields.get(node.id)
        if field is not None and field.padding_mode != "zeros" and not any(
                (fields.get(i) or field).padding_mode == field.padding_mode for i in node.inputs):
            remarks.append(f"{node.name} pads with '{field.padding_mode}': from here on, the intervals of units near "
                           "the border hold other input pixels than the formula's")
    return tuple(remarks)


def analyze_receptive_field(capture: Capture) -> ReceptiveFieldResult:
    """Receptive fields of every node of ``capture``, one row per stage and the encoder output's field."""
    states, undefined, reasons, aligned, union = node_states(capture)
    fields: dict[int, NodeField | None] = {}
    for node in capture.nodes:
        state = states.get(node.id)
        if state is None:
            fields[node.id] = None
            continue
        fields[node.id], why = _reported(node, state)
        if why is not None:
            undefined[node.id] = why
    encoder_output = encoder_output_node(capture, states)
    stages: list[StageField] = []
    residual = False
    if encoder_output is not None:
        declared = _declared_stages(capture)
        if declared:
            rows = declared
        else:
            trunk = _trunk(capture, encoder_output)
            prefix = f"{trunk.name}." if trunk else ""
            groups, residual = _groups(_stage_children(capture, trunk, encoder_output, states), prefix)
            rows = [(name, tuple(m.name for m in members), members[-1].output_node, tuple(m.index for m in members))
                    for name, members in groups if members[-1].output_node is not None]
        stages = [_stage(capture, row, fields, undefined, states) for row in _distinct_names(rows)]
        stages.append(_stage(capture, ("output", (), encoder_output, ()), fields, undefined, states))
    input_size = tuple(capture.input_shape[2:]) or (1,)
    return ReceptiveFieldResult(
        input_size=input_size, states=states, fields=fields, undefined=undefined, aligned=aligned, union=union,
        reasons=tuple(reasons), stages=tuple(stages),
        output=fields.get(encoder_output) if encoder_output is not None else None, output_node=encoder_output,
        remarks=_remarks(capture, fields), residual_stages=residual,
        constant=frozenset(node.id for node in capture.nodes if node.constant),
    )


def layer_fields(capture: Capture, result: ReceptiveFieldResult) -> dict[int, dict[str, object] | None]:
    """Record index -> the field at that module call's output as ``{size, stride, padding, ...}``, or None."""
    return {layer.index: result.field_json(layer.output_node) for layer in capture.layers}


__all__ = [
    "NodeField",
    "ReceptiveFieldResult",
    "StageField",
    "analyze_receptive_field",
    "ancestors",
    "encoder_output_node",
    "is_residual_merge",
    "layer_fields",
    "node_states",
]
