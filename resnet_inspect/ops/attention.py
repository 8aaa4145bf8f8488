"""Built-in entries for linear layers, matrix products, attention and normalisation: operations
that mix positions they contract, pair or take statistics over."""

from __future__ import annotations

import math
import string
from collections.abc import Sequence
from typing import Any

from resnet_inspect.ops import rules, window_mixing
from resnet_inspect.ops.backward import (
    every_operand_backward,
    mha_backward_macs,
    operand_backward,
    sdpa_backward_macs,
)
from resnet_inspect.ops.common import _ndim, broadcast_shapes, meta_empty
from resnet_inspect.ops.table import Call, OpSpec
from resnet_inspect.records import Geometry, OpKind, OpNode


def describe_linear(call: Call) -> tuple[Geometry, dict[str, Any]]:
    return Geometry(OpKind.LINEAR), {}


def matmul_equation(first: Sequence[int], second: Sequence[int]) -> tuple[tuple[str, str], str]:
    """``torch.matmul``'s contraction as an einsum equation; broadcast batch dimensions share letters."""
    a, b = len(first), len(second)
    if a == 1 and b == 1:
        return ("y", "y"), ""
    letters = string.ascii_uppercase[: max(a, b) - 2]
    first_letters = letters[len(letters) - (a - 2):] + "xy" if a >= 2 else "y"
    second_letters = letters[len(letters) - (b - 2):] + "yz" if b >= 2 else "y"
    return (first_letters, second_letters), letters + ("x" if a >= 2 else "") + ("z" if b >= 2 else "")


def describe_matmul(call: Call) -> tuple[Geometry, dict[str, Any]]:
    shapes = call.input_shapes[-2:]
    operands = call.tensor_nodes[-2:]
    inputs, output = matmul_equation(shapes[0], shapes[1])
    return Geometry(OpKind.MATMUL), {"equation": (inputs, output), "shapes": tuple(shapes),
                                     "operands": tuple(operands)}


def parse_einsum(equation: str, shapes: Sequence[Sequence[int]]) -> tuple[tuple[str, ...], str]:
    """Operand and output letters of an einsum equation, with '...' expanded to letters of its own."""
    equation = equation.replace(" ", "")
    left, _, right = equation.partition("->")
    terms = left.split(",")
    free = [c for c in string.ascii_uppercase[::-1] if c not in equation]
    ellipsis_rank = max((len(shape) - len(term.replace("...", "")) for term, shape in zip(terms, shapes, strict=False)
                         if "..." in term), default=0)
    fill = "".join(free[:ellipsis_rank])
    expanded = []
    for term, shape in zip(terms, shapes, strict=False):
        if "..." in term:
            count = len(shape) - len(term.replace("...", ""))
            term = term.replace("...", fill[ellipsis_rank - count:])
        expanded.append(term)
    if "->" not in equation:
        counts = {c: sum(term.count(c) for term in expanded) for c in "".join(expanded)}
        right = fill + "".join(sorted(c for c, n in counts.items() if n == 1 and c not in fill))
    else:
        right = right.replace("...", fill)
    return tuple(expanded), right


def describe_einsum(call: Call) -> tuple[Geometry, dict[str, Any]]:
    equation = call.args[0] if call.args else call.kwargs.get("equation", "")
    shapes = call.input_shapes
    inputs, output = parse_einsum(str(equation), shapes)
    return Geometry(OpKind.MATMUL), {"equation": (inputs, output), "shapes": tuple(shapes),
                                     "operands": tuple(call.tensor_nodes)}


def describe_addmm(call: Call) -> tuple[Geometry, dict[str, Any]]:
    shapes, operands = call.input_shapes[1:3], call.tensor_nodes[1:3]
    inputs, output = matmul_equation(shapes[0], shapes[1])
    return Geometry(OpKind.MATMUL), {"equation": (inputs, output), "shapes": tuple(shapes),
                                     "operands": tuple(operands)}


def describe_sdpa(call: Call) -> tuple[Geometry, dict[str, Any]]:
    return Geometry(OpKind.ATTENTION), {"shapes": tuple(call.input_shapes[:3]),
                                        "operands": tuple(call.tensor_nodes[:3]), "sequence_dim": -2}


def describe_mha(call: Call) -> tuple[Geometry, dict[str, Any]]:
    module = call.module
    batched = len(call.input_shapes[0]) == 3 if call.input_shapes else True
    sequence_dim = (1 if module.batch_first else 0) if batched else 0
    return Geometry(OpKind.ATTENTION), {
        "shapes": tuple(call.input_shapes[:3]), "operands": tuple(call.tensor_nodes[:3]),
        "sequence_dim": sequence_dim, "embed_dim": module.embed_dim, "kdim": module.kdim, "vdim": module.vdim,
        "batch_first": bool(module.batch_first),
    }


def linear_macs(node: OpNode) -> int:
    """prod(leading output dims) * in_features * out_features (bias additions are not counted)."""
    input_shape, output_shape = node.input_shapes[0], node.output_shape
    return math.prod(output_shape[:-1]) * input_shape[-1] * output_shape[-1]


def einsum_macs(node: OpNode) -> int:
    """One MAC per combination of the letters kept in the output or shared by two operands (a contraction)."""
    inputs, output = node.attrs["equation"]
    shapes = node.attrs["shapes"]
    size_of: dict[str, int] = {}
    for letters, shape in zip(inputs, shapes, strict=False):
        for letter, size in zip(letters, shape, strict=False):
            size_of[letter] = max(size_of.get(letter, 1), int(size))
    counted = [letter for letter in size_of if letter in output or sum(letter in term for term in inputs) > 1]
    return math.prod(size_of[letter] for letter in counted) if len(inputs) > 1 else 0


def sdpa_macs(node: OpNode) -> int:
    """``q @ k^T`` and ``softmax(...) @ v``: torch.utils.flop_counter's formula, halved."""
    from torch.utils.flop_counter import sdpa_flop_count

    query, key, value = (tuple(shape) for shape in node.attrs["shapes"])
    if len(query) != 4:  # (L, E) or (N, L, E): one head
        query, key, value = ((1,) * (4 - len(s)) + s for s in (query, key, value))
    return sdpa_flop_count(query, key, value) // 2


def mha_macs(node: OpNode) -> int:
    """nn.MultiheadAttention: the q/k/v and output projections plus both attention products."""
    attrs = node.attrs
    query, key, _value = attrs["shapes"] if len(attrs["shapes"]) == 3 else (attrs["shapes"][0],) * 3
    embed = attrs["embed_dim"]
    seq = 1 if attrs["batch_first"] and len(query) == 3 else 0
    batch = query[0] if attrs["batch_first"] and len(query) == 3 else (query[1] if len(query) == 3 else 1)
    target, source = query[seq], key[seq]
    projections = batch * (target * embed * embed + source * attrs["kdim"] * embed + source * attrs["vdim"] * embed)
    products = 2 * batch * target * source * embed
    return projections + products + batch * target * embed * embed


def shape_linear(call: Call) -> Any:
    x, weight = call.args[0], call.arg(1, "weight")
    if weight.dim() != 2 or x.dim() < 1 or x.shape[-1] != weight.shape[1] or x.dtype != weight.dtype:
        return NotImplemented
    return meta_empty((*x.shape[:-1], weight.shape[0]), x)


def shape_matmul(call: Call) -> Any:
    """Batched matrix product with broadcast batch dimensions (1-D operands left to torch)."""
    first, second = call.args[0], call.arg(1, "other")
    if first.dim() < 2 or second.dim() < 2 or first.shape[-1] != second.shape[-2] or first.dtype != second.dtype:
        return NotImplemented
    if call.name.strip("_") == "bmm" and (first.dim() != 3 or second.dim() != 3 or first.shape[0] != second.shape[0]):
        return NotImplemented
    batch = broadcast_shapes(tuple(first.shape[:-2]), tuple(second.shape[:-2]))
    return meta_empty((*batch, first.shape[-2], second.shape[-1]), first)


def shape_sdpa(call: Call) -> Any:
    query, key, value = call.args[0], call.arg(1, "key"), call.arg(2, "value")
    if query.dim() < 2 or key.shape[-1] != query.shape[-1] or key.shape[-2] != value.shape[-2] or len(
            {query.dtype, key.dtype, value.dtype}) != 1 or call.arg(3, "attn_mask") is not None:
        return NotImplemented
    batch = broadcast_shapes(tuple(query.shape[:-2]), tuple(key.shape[:-2]))
    return meta_empty((*batch, query.shape[-2], value.shape[-1]), query)


def shape_mha_forward(call: Call) -> Any:
    """F.multi_head_attention_forward, sequence first: (L, N, E) out, and the weights (N, L, S) averaged over the
    heads, (N, heads, L, S) otherwise, or None."""
    query, key = call.args[0], call.arg(1, "key")
    heads = call.arg(4, "num_heads")
    if query.dim() not in (2, 3) or key.dim() != query.dim() or not isinstance(heads, int) or any(
            call.arg(position, name) is not None for position, name in ((7, "bias_k"), (16, "attn_mask"))):
        return NotImplemented
    output = meta_empty(query.shape, query)
    if not call.arg(15, "need_weights", True):
        return output, None
    target, source = query.shape[0], key.shape[0]
    batch = (query.shape[1],) if query.dim() == 3 else ()
    head = () if call.arg(23, "average_attn_weights", True) else (heads,)
    return output, meta_empty((*batch, *head, target, source), query)


def describe_norm_dims(call: Call) -> tuple[Geometry, dict[str, Any]]:
    """Normalisation and softmax: which dimensions the statistics run over."""
    module, ndim = call.module, _ndim(call)
    dims: tuple[int, ...] = ()
    if module is not None:
        from torch import nn

        rms_norm: Any = getattr(nn, "RMSNorm", nn.LayerNorm)  # nn.RMSNorm came with torch 2.4
        if isinstance(module, (nn.LayerNorm, rms_norm)):
            dims = tuple(range(-len(module.normalized_shape), 0))
        elif isinstance(module, nn.GroupNorm):
            dims = tuple(range(1, ndim))
        elif isinstance(module, nn.modules.instancenorm._InstanceNorm):
            dims = () if (module.track_running_stats and not module.training) else tuple(range(2, ndim))
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            uses_running = module.running_mean is not None and not module.training
            dims = () if uses_running else (0, *range(2, ndim))
        elif isinstance(module, (nn.Softmax, nn.LogSoftmax, nn.Softmin)):
            dim = module.dim if module.dim is not None else (0 if ndim in (0, 1, 3) else 1)
            dims = (dim,)
    return Geometry(OpKind.NORM), {"dims": dims}


def _describe_function_norm(kind: str) -> Any:
    def describe(call: Call) -> tuple[Geometry, dict[str, Any]]:
        ndim = _ndim(call)
        dims: tuple[int, ...] = ()
        if kind == "softmax":
            dim = call.arg(1, "dim")
            dims = (int(dim),) if dim is not None else ((0,) if ndim in (0, 1, 3) else (1,))
        elif kind == "layer_norm":
            shape = call.arg(1, "normalized_shape", ())
            count = 1 if isinstance(shape, int) else len(tuple(shape))
            dims = tuple(range(-count, 0))
        elif kind == "group_norm":
            dims = tuple(range(1, ndim))
        elif kind == "instance_norm":
            dims = tuple(range(2, ndim)) if call.arg(5, "use_input_stats", True) else ()
        elif kind == "batch_norm":
            running = call.arg(1, "running_mean")
            dims = (0, *range(2, ndim)) if call.arg(5, "training", False) or running is None else ()
        elif kind == "normalize":
            dims = (int(call.arg(2, "dim", 1)),)
        return Geometry(OpKind.NORM if dims else OpKind.ELEMENTWISE), {"dims": dims}

    return describe


def shape_batch_norm(call: Call) -> Any:
    x, running_mean = call.args[0], call.arg(1, "running_mean")
    if x.dim() < 2 or (running_mean is not None and running_mean.shape[0] != x.shape[1]):
        return NotImplemented
    return meta_empty(x.shape, x)


def shape_same(call: Call) -> Any:
    """Normalisation and softmax keep the input's shape (and dtype)."""
    import torch

    x = call.args[0]
    extra = [a for a in call.args[1:] if isinstance(a, torch.Tensor)] + [
        v for v in call.kwargs.values() if isinstance(v, torch.Tensor)]
    if any(t.dtype != x.dtype for t in extra) or call.kwargs.get("dtype") is not None:
        return NotImplemented
    return meta_empty(x.shape, x)


def shape_layer_norm(call: Call) -> Any:
    x, normalized = call.args[0], call.arg(1, "normalized_shape", ())
    normalized = (normalized,) if isinstance(normalized, int) else tuple(normalized)
    weight = call.arg(2, "weight")
    if tuple(x.shape[x.dim() - len(normalized):]) != normalized or (
            weight is not None and tuple(weight.shape) != normalized):
        return NotImplemented
    return shape_same(call)


def shape_group_norm(call: Call) -> Any:
    x, groups = call.args[0], call.arg(1, "num_groups")
    if x.dim() < 2 or not isinstance(groups, int) or groups < 1 or x.shape[1] % groups:
        return NotImplemented
    return shape_same(call)


def attention_ops() -> list[OpSpec]:
    """Linear, attention and matrix products, then normalisation and softmax."""
    from torch import nn
    from torch.nn.modules import batchnorm, instancenorm

    return [
        OpSpec("linear", OpKind.LINEAR, rules.linear, modules=(nn.Linear,), functions=("linear",),
               describe=describe_linear, shape=shape_linear, macs=linear_macs,
               backward_macs=operand_backward(linear_macs, (0, 1)), replay=rules.replay_as_analysed,
               doc="linear layer on the last dimension"),
        OpSpec("multihead_attention", OpKind.ATTENTION, window_mixing.attention, modules=(nn.MultiheadAttention,),
               functions=("multi_head_attention_forward",), shape=shape_mha_forward, describe=describe_mha,
               macs=mha_macs, backward_macs=mha_backward_macs, replay=window_mixing.replay_mixing,
               doc="nn.MultiheadAttention: projections and attention over the sequence"),
        OpSpec("attention", OpKind.ATTENTION, window_mixing.attention, functions=("scaled_dot_product_attention",),
               describe=describe_sdpa, shape=shape_sdpa, macs=sdpa_macs, backward_macs=sdpa_backward_macs,
               replay=window_mixing.replay_mixing, doc="scaled dot-product attention over dimension -2"),
        OpSpec("matmul", OpKind.MATMUL, window_mixing.einsum_like, functions=("matmul", "mm", "bmm"),
               describe=describe_matmul, shape=shape_matmul, macs=einsum_macs,
               backward_macs=operand_backward(einsum_macs, (0, 1)), replay=window_mixing.replay_mixing,
               doc="matrix product: mixes positions it contracts or pairs"),
        OpSpec("addmm", OpKind.MATMUL, window_mixing.einsum_like, functions=("addmm", "baddbmm", "addbmm"),
               describe=describe_addmm, macs=einsum_macs, backward_macs=operand_backward(einsum_macs, (1, 2)),
               replay=window_mixing.replay_mixing, doc="matrix product plus a tensor"),
        OpSpec("einsum", OpKind.MATMUL, window_mixing.einsum_like, functions=("einsum",), describe=describe_einsum,
               macs=einsum_macs, backward_macs=every_operand_backward(einsum_macs), replay=window_mixing.replay_mixing,
               doc="einsum: mixes positions it contracts or pairs"),
        OpSpec("norm", OpKind.NORM, rules.normalised,
               modules=(batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, instancenorm._InstanceNorm,
                        *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()), nn.Softmax, nn.LogSoftmax, nn.Softmin),
               describe=describe_norm_dims, replay=rules.replay_identity,
               doc="normalisation modules: statistics over spatial axes add global context"),
        OpSpec("batch_norm", OpKind.NORM, rules.normalised, functions=("batch_norm",),
               describe=_describe_function_norm("batch_norm"), shape=shape_batch_norm,
               replay=rules.replay_identity, doc="batch norm: position-wise with running statistics"),
        OpSpec("layer_norm", OpKind.NORM, rules.normalised, functions=("layer_norm", "rms_norm"),
               describe=_describe_function_norm("layer_norm"), shape=shape_layer_norm, replay=rules.replay_identity,
               doc="layer norm over the trailing dimensions"),
        OpSpec("group_norm", OpKind.NORM, rules.normalised, functions=("group_norm",),
               describe=_describe_function_norm("group_norm"), shape=shape_group_norm, replay=rules.replay_identity,
               doc="group norm: statistics over channels and positions"),
        OpSpec("instance_norm", OpKind.NORM, rules.normalised, functions=("instance_norm",),
               describe=_describe_function_norm("instance_norm"), replay=rules.replay_identity,
               doc="instance norm: statistics over positions"),
        OpSpec("softmax", OpKind.NORM, rules.normalised, functions=("softmax", "log_softmax", "softmin"),
               describe=_describe_function_norm("softmax"), shape=shape_same, replay=rules.replay_identity,
               doc="softmax over one dimension"),
        OpSpec("normalize", OpKind.NORM, rules.normalised, functions=("normalize",),
               describe=_describe_function_norm("normalize"), shape=shape_same, replay=rules.replay_identity,
               doc="F.normalize over one dimension"),
    ]
