"""Built-in entries for element-wise and layout operations: activations, arithmetic, padding,
reductions, reshapes, permutations, concatenation and indexing."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from resnet_inspect.ops import rules
from resnet_inspect.ops.common import _ndim, broadcast_shapes, meta_empty
from resnet_inspect.ops.fields import Undefined
from resnet_inspect.ops.table import Call, FieldState, OpSpec
from resnet_inspect.records import Geometry, OpKind, OpNode


def _dim(value: Any) -> int | None:
    return int(value) if isinstance(value, int) else None


def describe_dim(position: int, name: str = "dim", default: Any = 0, removes_dim: bool = False
                 ) -> Any:
    def describe(call: Call) -> tuple[Geometry, dict[str, Any]]:
        dim = _dim(call.arg(position, name, default))
        return Geometry(OpKind.RESHAPE), {"dim": dim, "removes_dim": removes_dim}

    return describe


def describe_cat(call: Call) -> tuple[Geometry, dict[str, Any]]:
    return Geometry(OpKind.RESHAPE), {"dim": _dim(call.arg(1, "dim", 0))}


def describe_stack(call: Call) -> tuple[Geometry, dict[str, Any]]:
    return Geometry(OpKind.RESHAPE), {"dim": _dim(call.arg(1, "dim", 0)), "stack": True}


def describe_permute(call: Call) -> tuple[Geometry, dict[str, Any]]:
    ndim = _ndim(call)
    dims = call.arg(1, "dims")
    if isinstance(dims, int):
        dims = call.args[1:]
    order = tuple(int(d) % ndim for d in dims) if dims is not None and ndim else None
    return Geometry(OpKind.RESHAPE), {"order": order}


def describe_transpose(call: Call) -> tuple[Geometry, dict[str, Any]]:
    ndim = _ndim(call)
    order = list(range(ndim))
    if ndim >= 2:
        first, second = call.arg(1, "dim0", 0), call.arg(2, "dim1", 1)
        first, second = int(first) % ndim, int(second) % ndim
        order[first], order[second] = order[second], order[first]
    return Geometry(OpKind.RESHAPE), {"order": tuple(order)}


def describe_movedim(call: Call) -> tuple[Geometry, dict[str, Any]]:
    ndim = _ndim(call)
    source, destination = call.arg(1, "source"), call.arg(2, "destination")
    source = [source] if isinstance(source, int) else list(source)
    destination = [destination] if isinstance(destination, int) else list(destination)
    source, destination = [s % ndim for s in source], [d % ndim for d in destination]
    rest = [d for d in range(ndim) if d not in source]
    order: list[int | None] = [None] * ndim
    for s, d in zip(source, destination, strict=True):
        order[d] = s
    filler = iter(rest)
    return Geometry(OpKind.RESHAPE), {"order": tuple(o if o is not None else next(filler) for o in order)}


def _index_item(item: Any) -> Any:
    import torch

    if item is None:
        return "new"
    if item is Ellipsis:
        return "ellipsis"
    if isinstance(item, bool):
        return "tensor"
    if isinstance(item, int):
        return "int"
    if isinstance(item, slice):
        if item == slice(None):
            return "all"
        if any(not (v is None or isinstance(v, int)) for v in (item.start, item.stop, item.step)):
            return "tensor"
        return (item.start, item.stop, item.step)
    if isinstance(item, torch.Tensor) and item.dim() == 0 and not item.dtype.is_floating_point:
        return "int" if item.dtype != torch.bool else "tensor"
    return "tensor"


def describe_getitem(call: Call) -> tuple[Geometry, dict[str, Any]]:
    index = call.arg(1, "index")
    items = index if isinstance(index, tuple) else (index,)
    return Geometry(OpKind.RESHAPE), {"index": tuple(_index_item(item) for item in items)}


def describe_reduce(call: Call) -> tuple[Geometry, dict[str, Any]]:
    import torch

    position = 2 if call.name.strip("_") == "norm" else 1
    dims = call.arg(position, "dim")
    if isinstance(dims, torch.Tensor):  # max(x, y): element-wise
        return Geometry(OpKind.ELEMENTWISE), {"elementwise": True}
    if isinstance(dims, int):
        dims = (dims,)
    elif dims is not None:
        dims = tuple(int(d) for d in dims)
    keepdim = bool(call.arg(position + 1, "keepdim", False))
    ndim = _ndim(call)
    spatial_all = dims is None or (ndim and len({d % ndim for d in dims}) == ndim)
    kind = OpKind.GLOBAL if spatial_all else OpKind.ELEMENTWISE
    return Geometry(kind), {"dims": dims, "keepdim": keepdim}


def describe_pad_function(call: Call) -> tuple[Geometry, dict[str, Any]]:
    return Geometry(OpKind.PAD), {"pads": tuple(int(p) for p in call.arg(1, "pad", ())),
                                  "mode": str(call.arg(2, "mode", "constant"))}


def describe_pad_module(call: Call) -> tuple[Geometry, dict[str, Any]]:
    module = call.module
    name = type(module).__name__
    mode = "reflect" if "Reflection" in name else "replicate" if "Replication" in name else (
        "circular" if "Circular" in name else "constant")
    return Geometry(OpKind.PAD), {"pads": tuple(int(p) for p in module.padding), "mode": mode}


_IN_PLACE = frozenset({"__iadd__", "__isub__", "__imul__", "__itruediv__", "add_", "sub_", "mul_", "div_"})


def shape_binary(call: Call) -> Any:
    import torch

    first, second = call.args[0], call.args[1] if len(call.args) > 1 else call.kwargs.get("other")
    tensors = [value for value in (first, second) if isinstance(value, torch.Tensor)]
    if any(t.dtype != tensors[0].dtype for t in tensors) or set(call.kwargs) - {"other"}:
        return NotImplemented
    shape = broadcast_shapes(tuple(getattr(first, "shape", ())), tuple(getattr(second, "shape", ())))
    if call.name in _IN_PLACE:
        return first if tuple(shape) == tuple(first.shape) else NotImplemented
    return meta_empty(shape, tensors[0])


_INPLACE_FLAG_OPS = frozenset({"relu", "relu6", "hardtanh", "silu", "mish", "elu", "selu", "celu", "leaky_relu",
                               "hardswish", "hardsigmoid", "dropout", "dropout2d", "rrelu", "threshold"})


def shape_unary(call: Call) -> Any:
    """Activations and dropout keep the shape; the in-place forms return their input."""
    import torch

    x = call.args[0]
    name = call.name
    in_place = name.endswith("_") or call.kwargs.get("inplace") is True or (
        len(call.args) > 1 and call.args[-1] is True and name.strip("_") in _INPLACE_FLAG_OPS)
    if any(isinstance(a, torch.Tensor) for a in call.args[1:]) or any(
            isinstance(v, torch.Tensor) for v in call.kwargs.values()):
        return NotImplemented
    return x if in_place else meta_empty(x.shape, x)


def shape_mean(call: Call) -> Any:
    x = call.args[0]
    dims, keepdim = call.arg(1, "dim"), call.arg(2, "keepdim", False)
    if dims is None or call.kwargs.get("dtype") is not None or not x.dtype.is_floating_point:
        return NotImplemented
    reduced_dims = {d % x.dim() for d in ((dims,) if isinstance(dims, int) else dims)}
    shape = [1 if axis in reduced_dims else size for axis, size in enumerate(x.shape)
             if keepdim or axis not in reduced_dims]
    return meta_empty(shape, x)


def expanded(node: OpNode, inputs: Sequence[FieldState]) -> FieldState:
    """expand, repeat, broadcast_to: position-wise while the spatial sizes stay; tiling a map is not covered."""
    state = rules.merged(node, inputs)
    if state.layout.grid != inputs[0].layout.grid:
        raise Undefined(f"not covered: {rules.describe_op(node)} tiles a spatial axis")
    return state


def reduce_or_elementwise(node: OpNode, inputs: Sequence[FieldState]) -> FieldState:
    if node.attrs.get("elementwise"):
        return rules.position_wise(node, inputs)
    return rules.reduced(node, inputs)


ELEMENTWISE_FUNCTIONS = (
    "add", "sub", "mul", "div", "true_divide", "neg", "abs", "sign", "relu", "relu6", "leaky_relu", "prelu", "rrelu",
    "elu", "selu", "celu", "gelu", "silu", "mish", "sigmoid", "tanh", "hardswish", "hardsigmoid", "hardtanh",
    "softplus", "softsign", "logsigmoid", "tanhshrink", "threshold", "hardshrink", "softshrink", "dropout",
    "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout", "contiguous", "clone",
    "detach", "to", "float", "half", "double", "bfloat16", "type", "type_as", "clamp", "clamp_min", "clamp_max",
    "clip", "exp", "log", "log1p", "expm1", "sqrt", "rsqrt", "pow", "square", "reciprocal", "maximum", "minimum",
    "where", "addcmul", "addcdiv", "lerp", "masked_fill", "erf", "sin", "cos", "floor", "ceil", "round", "trunc",
    "gt", "lt", "ge", "le", "eq", "ne", "logical_not", "logical_and", "logical_or", "bitwise_and", "fmod",
    "remainder", "nan_to_num", "local_response_norm", "channel_shuffle", "native_channel_shuffle", "cpu", "cuda",
    "requires_grad_", "mul_add",
)


_SHAPE_BINARY = ("add", "sub", "mul", "div", "true_divide")


_SHAPE_UNARY = ("relu", "relu6", "leaky_relu", "gelu", "silu", "mish", "sigmoid", "tanh", "hardtanh", "hardswish",
                "hardsigmoid", "elu", "selu", "celu", "softplus", "dropout", "dropout2d")


CONSTANT_FUNCTIONS = ("zeros_like", "ones_like", "empty_like", "full_like", "rand_like", "randn_like",
                      "randint_like", "new_zeros", "new_ones", "new_empty", "new_full", "new_tensor")


def _shape_dispatch(call: Call) -> Any:
    name = call.name.strip("_")
    base = name.rstrip("_")
    if base in _SHAPE_BINARY or name in ("iadd", "isub", "imul", "itruediv", "radd", "rsub", "rmul", "truediv",
                                         "rtruediv"):
        return shape_binary(call)
    if base in _SHAPE_UNARY:
        return shape_unary(call)
    return NotImplemented


def elementwise_ops() -> list[OpSpec]:
    """Padding, position-wise operations, reductions and layout changes."""
    from torch import nn
    from torch.nn.modules import dropout, padding

    elementwise_modules = (
        nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
        nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Softplus, nn.Softsign, nn.LogSigmoid,
        nn.Tanhshrink, nn.Threshold, nn.Hardshrink, nn.Softshrink, nn.Identity, dropout._DropoutNd,
        nn.LocalResponseNorm, nn.ChannelShuffle,
    )
    return [
        OpSpec("pad", OpKind.PAD, rules.padded,
               modules=(padding._ConstantPadNd, padding._ReflectionPadNd, padding._ReplicationPadNd,
                        *((padding._CircularPadNd,) if hasattr(padding, "_CircularPadNd") else ())),
               functions=("pad",), replay=rules.replay_pad,
               describe=lambda call: describe_pad_module(call) if call.module is not None
               else describe_pad_function(call), doc="explicit padding (zeros, reflect, replicate, circular)"),
        OpSpec("elementwise", OpKind.ELEMENTWISE, rules.position_wise, modules=elementwise_modules,
               functions=ELEMENTWISE_FUNCTIONS, shape=_shape_dispatch, replay=rules.replay_identity,
               shape_donors=("type_as",),
               doc="acts position by position: k = 1, s = 1"),
        OpSpec("reduce", OpKind.GLOBAL, reduce_or_elementwise,
               functions=("mean", "sum", "amax", "amin", "max", "min", "std", "var", "logsumexp", "prod", "norm",
                          "nanmean", "nansum"),
               describe=describe_reduce, shape=lambda call: shape_mean(call) if call.name == "mean" else NotImplemented,
               replay=rules.replay_as_analysed, doc="reductions: over every spatial axis a global pooling"),
        OpSpec("reshape", OpKind.RESHAPE, rules.reshaped, modules=(nn.Flatten, nn.Unflatten),
               functions=("view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "view_as",
                          "reshape_as", "ravel"), shape_donors=("view_as", "reshape_as"),
               replay=rules.replay_identity, doc="view, reshape, flatten: the axes follow their dimensions"),
        OpSpec("permute", OpKind.RESHAPE, rules.permuted, functions=("permute",), describe=describe_permute,
               replay=rules.replay_identity, doc="permute: the axes move with their dimensions"),
        OpSpec("transpose", OpKind.RESHAPE, rules.permuted, functions=("transpose", "swapaxes", "swapdims", "t"),
               describe=describe_transpose, replay=rules.replay_identity, doc="transpose two dimensions"),
        OpSpec("movedim", OpKind.RESHAPE, rules.permuted, functions=("movedim", "moveaxis"),
               describe=describe_movedim, replay=rules.replay_identity, doc="movedim"),
        OpSpec("split", OpKind.RESHAPE, rules.along_dim, functions=("chunk", "split", "tensor_split",
                                                                    "split_with_sizes"),
               describe=describe_dim(2, "dim", 0), replay=rules.replay_identity,
               doc="chunk and split: position-wise along channels"),
        OpSpec("unbind", OpKind.RESHAPE, rules.along_dim, functions=("unbind",),
               describe=describe_dim(1, "dim", 0, removes_dim=True), replay=rules.replay_identity,
               doc="unbind: removes a non-spatial dimension"),
        OpSpec("glu", OpKind.ELEMENTWISE, rules.along_dim, functions=("glu",), describe=describe_dim(1, "dim", -1),
               replay=rules.replay_identity, doc="gated linear unit: halves a channel dimension"),
        OpSpec("expand", OpKind.ELEMENTWISE, expanded,
               functions=("expand", "expand_as", "repeat", "broadcast_to", "tile", "repeat_interleave"),
               shape_donors=("expand_as",),
               replay=rules.replay_identity, doc="expand and repeat: position-wise while the spatial sizes stay"),
        OpSpec("cat", OpKind.RESHAPE, rules.concatenated, functions=("cat", "concat", "concatenate"),
               describe=describe_cat, replay=rules.replay_identity,
               doc="concatenation: a merge along channels; along a spatial axis positions shift"),
        OpSpec("stack", OpKind.RESHAPE, rules.concatenated, functions=("stack",), describe=describe_stack,
               replay=rules.replay_identity, doc="stack: a merge in a new dimension"),
        OpSpec("getitem", OpKind.SUBSAMPLE, rules.indexed, functions=("getitem",), describe=describe_getitem,
               replay=rules.replay_subsample, doc="indexing: strided slices subsample a spatial axis"),
        OpSpec("constant", OpKind.ELEMENTWISE, rules.position_wise, functions=CONSTANT_FUNCTIONS, constant=True,
               doc="zeros_like and friends: values that do not depend on the input"),
    ]
