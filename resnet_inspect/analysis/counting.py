"""Multiply-accumulates, parameters and activation memory, counted from a Capture's geometry and shapes.

One multiply-accumulate (MAC) is one multiplication plus one addition; FLOPs = 2 x MACs. Like torchvision's
`_ops` and He et al.'s "multiply-adds", the products that carry weights or mix positions are counted:
convolutions (transposed too), linear layers, matrix products, einsum and attention; each entry of the
operation table says how (the table's entries import torch when it loads; the attention formula is
torch.utils.flop_counter's). BatchNorm, activations, pooling and additions count 0 MACs.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from resnet_inspect.ops.registry import get_op
from resnet_inspect.records import Capture, OpNode

ELEMENT_BYTES = {
    "float64": 8, "float32": 4, "float16": 2, "bfloat16": 2, "int64": 8, "int32": 4, "int16": 2, "int8": 1,
    "uint8": 1, "bool": 1, "complex64": 8, "complex128": 16, "float8_e4m3fn": 1, "float8_e5m2": 1,
}

# Operations whose output shares its input's storage: they allocate nothing (dropout is the identity in eval).
ALIASING_TYPES = frozenset({"Identity", "Dropout", "Dropout2d", "AlphaDropout", "dropout", "detach"})
ALIASING_OPS = frozenset({"reshape", "permute", "transpose", "movedim", "split", "unbind", "expand"})

# A residual stage's module name: ours (`encoder.layers.2`), torchvision's (`layer3`), timm's (`stages.2`).
_STAGE_NAME = re.compile(r"^(?:.*\.)?(?:layers\.\d+|layer\d+|stages\.\d+)$")


def node_macs(node: OpNode) -> int:
    """MACs of one operation, by its operation-table entry (0 for entries without a counting rule)."""
    rule = get_op(node.op).macs
    if rule is None or not node.input_shapes or not node.output_shape:
        return 0
    return rule(node)


def element_bytes(dtype: str) -> int:
    """Bytes per element of a dtype named as in ``torch.float32`` without the prefix."""
    return ELEMENT_BYTES.get(dtype.removeprefix("torch."), 4)


@dataclass(frozen=True)
class Counts:
    """What one forward pass costs. ``macs`` count multiply-accumulates; ``flops`` = 2 x ``macs``.

    ``layer_macs`` are inclusive (a container's MACs are those of everything that ran inside it), so the
    leaves add up to ``macs`` less ``macs_outside_leaves`` (functional convolutions written directly in a
    container's forward; 0 for the registry models). Activation bytes count each tensor's storage once:
    views (flatten, Identity, eval dropout) allocate nothing.
    """

    node_macs: dict[int, int]
    layer_macs: dict[int, int]  # LayerRecord index -> MACs
    layer_activation_bytes: dict[int, int]  # LayerRecord index -> bytes of the call's outputs
    macs: int
    flops: int
    macs_outside_leaves: int
    params: int
    trainable_params: int
    frozen_params: int
    param_bytes: int
    param_bytes_by_dtype: dict[str, int]
    buffer_bytes: int
    stage_params: dict[str, int]  # "stem", each residual stage by module name, "head"
    input_bytes: int
    activation_bytes: int  # every operation's output (the model input excluded), storage counted once
    peak_activation_bytes: int  # the largest set of tensors alive at once (input included)
    peak_memory_bytes: int  # estimate: parameters + buffers + peak_activation_bytes
    uncounted_ops: dict[str, int]  # operations with no counting rule (kind UNKNOWN), by type, with counts


def enclosing_records(capture: Capture) -> dict[int, int | None]:
    """Node id -> index of the innermost module call that ran it (None for the model's own forward).

    Module operations carry their record. A functional operation carries its scope's name; when one module
    runs several times, the call is the latest one with that name that started before the next module
    operation did (records are numbered in the order the calls started).
    """
    by_name: dict[str, list[int]] = {}
    for layer in capture.layers:
        by_name.setdefault(layer.name, []).append(layer.index)
    next_record: list[int | None] = [None] * len(capture.nodes)
    upcoming: int | None = None
    for node in reversed(capture.nodes):
        next_record[node.id] = upcoming
        if node.record is not None:
            upcoming = node.record
    result: dict[int, int | None] = {}
    for node in capture.nodes:
        if node.record is not None:
            result[node.id] = node.record
            continue
        bound = next_record[node.id]
        candidates = [index for index in by_name.get(node.scope, []) if bound is None or index < bound]
        result[node.id] = candidates[-1] if candidates else None
    return result


def _storage_roots(capture: Capture) -> list[int]:
    """For each node, the node whose output storage it uses (itself unless it is a view or in place).

    In-place operations are recognised when the capture marks them (``OpNode.inplace``); otherwise their
    outputs are counted as new tensors, which overestimates memory.
    """
    roots: list[int] = []
    for node in capture.nodes:
        in_place = getattr(node, "inplace", False)
        aliases = node.op in ALIASING_OPS or node.type in ALIASING_TYPES or in_place
        roots.append(roots[node.inputs[0]] if aliases and node.inputs else node.id)
    return roots


def _output_bytes(shape: tuple[int, ...], size: int) -> int:
    return math.prod(shape) * size if shape else 0


def activation_memory(capture: Capture) -> tuple[int, int, int]:
    """(input bytes, activation bytes, peak live bytes) from the dataflow graph.

    Liveness: an output is allocated when its operation runs and freed after the last operation that reads
    it (or a view of it) has run; the model's output stays alive to the end.
    """
    size = element_bytes(capture.dtype)
    roots = _storage_roots(capture)
    nodes = capture.nodes
    last_use = {root: root for root in set(roots)}
    for node in nodes:
        for source in (*node.inputs, node.id):
            root = roots[source]
            last_use[root] = max(last_use[root], node.id)
    if nodes:
        last_use[roots[capture.output_node]] = len(nodes)
    input_bytes = sum(_output_bytes(node.output_shape, size) for node in nodes if node.type == "input")
    activation_bytes = sum(_output_bytes(node.output_shape, size) for node in nodes
                           if roots[node.id] == node.id and node.type != "input")
    frees: dict[int, list[int]] = {}
    for root, step in last_use.items():
        frees.setdefault(step, []).append(root)
    live_bytes = peak_bytes = 0
    for node in nodes:
        if roots[node.id] == node.id:
            live_bytes += _output_bytes(node.output_shape, size)
        peak_bytes = max(peak_bytes, live_bytes)
        live_bytes -= sum(_output_bytes(nodes[root].output_shape, size) for root in frees.get(node.id, ()))
    return input_bytes, activation_bytes, peak_bytes


def stage_params(capture: Capture) -> dict[str, int]:
    """Parameters of the stem (leaves before the first stage), each residual stage, and the head (the rest)."""
    stages = [layer for layer in capture.layers if _STAGE_NAME.match(layer.name)]
    stages = [layer for layer in stages if not any(other.name != layer.name and layer.name.startswith(other.name + ".")
                                                   for other in stages)]
    if not stages:
        return {}
    first = min(layer.index for layer in stages)
    stage_names = tuple(layer.name + "." for layer in stages)
    result: dict[str, int] = {"stem": 0}
    result.update({layer.name: layer.params for layer in stages})
    result["head"] = 0
    seen: set[str] = set()
    for layer in capture.leaves:
        if layer.name in seen or layer.name.startswith(stage_names):
            continue
        seen.add(layer.name)
        result["stem" if layer.index < first else "head"] += layer.params
    return result


def count(capture: Capture) -> Counts:
    """MACs per operation and per layer, parameters, and activation memory of one captured forward pass."""
    macs_by_node = {node.id: node_macs(node) for node in capture.nodes}
    enclosing = enclosing_records(capture)
    layer_macs = {layer.index: 0 for layer in capture.layers}
    outside_leaves = 0
    for node_id, macs in macs_by_node.items():
        record = enclosing[node_id]
        if record is None or not capture.layers[record].is_leaf:
            outside_leaves += macs
        while record is not None:
            layer_macs[record] += macs
            record = capture.layers[record].parent
    size = element_bytes(capture.dtype)
    layer_bytes = {layer.index: sum(_output_bytes(shape, size) for shape in layer.output_shapes)
                   for layer in capture.layers}
    input_bytes, activation_bytes, peak_bytes = activation_memory(capture)
    uncounted: dict[str, int] = {}
    for node in capture.nodes:
        if node.op == "unknown":
            uncounted[node.type] = uncounted.get(node.type, 0) + 1
    total_macs = sum(macs_by_node.values())
    return Counts(
        node_macs=macs_by_node, layer_macs=layer_macs, layer_activation_bytes=layer_bytes,
        macs=total_macs, flops=2 * total_macs, macs_outside_leaves=outside_leaves,
        params=capture.params, trainable_params=capture.trainable_params,
        frozen_params=capture.params - capture.trainable_params, param_bytes=capture.param_bytes,
        param_bytes_by_dtype=dict(capture.param_bytes_by_dtype), buffer_bytes=capture.buffer_bytes,
        stage_params=stage_params(capture), input_bytes=input_bytes, activation_bytes=activation_bytes,
        peak_activation_bytes=peak_bytes,
        peak_memory_bytes=capture.param_bytes + capture.buffer_bytes + peak_bytes, uncounted_ops=uncounted,
    )


__all__ = ["Counts", "count", "node_macs"]
