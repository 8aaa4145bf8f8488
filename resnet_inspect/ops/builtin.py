"""The built-in entries of the operation table: convolutions, pooling, element-wise and layout operations,
normalisation, attention and upsampling. torch is imported inside the function that builds them.

Each entry is registered through the same path as a user's (:func:`resnet_inspect.ops.register_op`).
"""

from __future__ import annotations

import math
import string
from collections.abc import Sequence
from typing import Any

from resnet_inspect.ops import rules, windows
from resnet_inspect.ops.fields import Undefined
from resnet_inspect.ops.table import Call, FieldState, OpSpec
from resnet_inspect.records import Geometry, OpKind, OpNode

# ------------------------------------------------------------------------------------------------ geometry


def sizes(value: Any, rank: int, strict: bool = False) -> tuple[int, ...]:
    """One int per spatial axis from an int or a sequence (of one value, or one per axis).

    ``strict`` raises TypeError on anything else (the fast shape rules then step aside for torch's kernel).
    """
    if isinstance(value, int):
        return (value,) * rank
    values = tuple(value)
    if strict and (len(values) not in (1, rank) or not all(isinstance(v, int) for v in values)):
        raise TypeError(f"not a size: {value!r}")
    values = tuple(int(v) for v in values)
    return values * rank if len(values) == 1 else values


def _resolve_padding(padding: Any, kernel: tuple[int, ...], dilation: tuple[int, ...]
                     ) -> tuple[tuple[int, ...], tuple[int, ...], str]:
    """Leading padding, trailing padding and mode name; resolves PyTorch's 'same' (the odd one on the right) and
    'valid'."""
    rank = len(kernel)
    if padding == "valid":
        return (0,) * rank, (0,) * rank, "valid"
    if padding == "same":
        totals = [d * (k - 1) for k, d in zip(kernel, dilation, strict=True)]
        before = tuple(total // 2 for total in totals)
        return before, tuple(t - b for t, b in zip(totals, before, strict=True)), "same"
    symmetric = sizes(padding, rank)
    return symmetric, symmetric, "zeros"


def conv_geometry(kernel: Sequence[int], stride: Any, padding: Any, dilation: Any, groups: int,
                  padding_mode: str = "zeros") -> Geometry:
    rank = len(kernel)
    kernel_sizes, dilation_sizes = tuple(int(k) for k in kernel), sizes(dilation, rank)
    before, after, mode = _resolve_padding(padding, kernel_sizes, dilation_sizes)
    return Geometry(OpKind.CONV, kernel=kernel_sizes, stride=sizes(stride, rank), padding=before, padding_end=after,
                    dilation=dilation_sizes, groups=int(groups),
                    padding_mode=mode if padding_mode == "zeros" else padding_mode)


def pool_stride(kernel: tuple[int, ...], stride: Any, strict: bool = False) -> tuple[int, ...]:
    """PyTorch pooling's stride: the kernel size when none is given."""
    if stride is None or (isinstance(stride, (tuple, list)) and len(stride) == 0):
        return kernel
    return sizes(stride, len(kernel), strict)


def pool_geometry(kind: OpKind, rank: int, kernel: Any, stride: Any, padding: Any, dilation: Any,
                  ceil_mode: Any) -> Geometry:
    kernel_sizes = sizes(kernel, rank)
    padding_sizes = sizes(padding, rank)
    return Geometry(kind, kernel=kernel_sizes, stride=pool_stride(kernel_sizes, stride), padding=padding_sizes,
                    padding_end=padding_sizes, dilation=sizes(dilation, rank), ceil_mode=bool(ceil_mode))


def adaptive_geometry(output_size: Any, rank: int) -> Geometry:
    if output_size is None or isinstance(output_size, int):
        target = (output_size,) * rank
    else:
        values = tuple(output_size)
        target = values * rank if len(values) == 1 else values
    return Geometry(OpKind.ADAPTIVE_POOL, kernel=(1,) * rank, stride=(1,) * rank, padding=(0,) * rank,
                    padding_end=(0,) * rank, dilation=(1,) * rank, output_padding=(0,) * rank,
                    output_size=tuple(None if v is None else int(v) for v in target))


def _rank_from_name(name: str, default: int = 2) -> int:
    for rank in (1, 2, 3):
        if f"{rank}d" in name:
            return rank
    return default


def _module_rank(module: Any) -> int:
    """1, 2 or 3 from the torch class in the module's MRO (``MaxPool3d`` -> 3)."""
    for cls in type(module).__mro__:
        if cls.__module__.startswith("torch.nn."):
            return _rank_from_name(cls.__name__)
    return 2


def _input_rank(call: Call, default: int) -> int:
    return max(len(call.input_shapes[0]) - 2, 1) if call.input_shapes else default


# --------------------------------------------------------------------------------------------- describe


def describe_conv(call: Call) -> tuple[Geometry, dict[str, Any]]:
    module = call.module
    if module is not None:
        return conv_geometry(module.kernel_size, module.stride, module.padding, module.dilation, module.groups,
                             module.padding_mode), {}
    weight = call.arg(1, "weight")
    return conv_geometry(tuple(weight.shape[2:]), call.arg(3, "stride", 1), call.arg(4, "padding", 0),
                         call.arg(5, "dilation", 1), call.arg(6, "groups", 1)), {}


def describe_conv_transpose(call: Call) -> tuple[Geometry, dict[str, Any]]:
    module = call.module
    if module is not None:
        rank = len(module.kernel_size)
        kernel, stride, padding = tuple(module.kernel_size), module.stride, module.padding
        output_padding, groups, dilation = module.output_padding, module.groups, module.dilation
    else:
        weight = call.arg(1, "weight")
        rank = weight.dim() - 2
        kernel = tuple(weight.shape[2:])
        stride, padding = call.arg(3, "stride", 1), call.arg(4, "padding", 0)
        output_padding, groups, dilation = call.arg(5, "output_padding", 0), call.arg(6, "groups", 1), call.arg(
            7, "dilation", 1)
    padding_sizes = sizes(padding, rank)
    return Geometry(OpKind.CONV_TRANSPOSE, kernel=tuple(int(k) for k in kernel), stride=sizes(stride, rank),
                    padding=padding_sizes, padding_end=padding_sizes, dilation=sizes(dilation, rank),
                    groups=int(groups), output_padding=sizes(output_padding, rank)), {}


def describe_max_pool(call: Call) -> tuple[Geometry, dict[str, Any]]:
    module = call.module
    if module is not None:
        return pool_geometry(OpKind.MAX_POOL, _module_rank(module), module.kernel_size, module.stride,
                             module.padding, module.dilation, module.ceil_mode), {}
    rank = _input_rank(call, 2)
    return pool_geometry(OpKind.MAX_POOL, rank, call.arg(1, "kernel_size", 1), call.arg(2, "stride"),
                         call.arg(3, "padding", 0), call.arg(4, "dilation", 1), call.arg(5, "ceil_mode", False)), {}


def describe_avg_pool(call: Call) -> tuple[Geometry, dict[str, Any]]:
    module = call.module
    if module is not None:
        return pool_geometry(OpKind.AVG_POOL, _module_rank(module), module.kernel_size, module.stride,
                             module.padding, 1, module.ceil_mode), {}
    rank = _input_rank(call, 2)
    return pool_geometry(OpKind.AVG_POOL, rank, call.arg(1, "kernel_size", 1), call.arg(2, "stride"),
                         call.arg(3, "padding", 0), 1, call.arg(4, "ceil_mode", False)), {}


def describe_adaptive(call: Call) -> tuple[Geometry, dict[str, Any]]:
    module = call.module
    if module is not None:
        return adaptive_geometry(module.output_size, _module_rank(module)), {}
    return adaptive_geometry(call.arg(1, "output_size", 1), _input_rank(call, 2)), {}


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


def _ndim(call: Call) -> int:
    return len(call.input_shapes[0]) if call.input_shapes else 0


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


def describe_norm_dims(call: Call) -> tuple[Geometry, dict[str, Any]]:
    """Normalisation and softmax: which dimensions the statistics run over."""
    module, ndim = call.module, _ndim(call)
    dims: tuple[int, ...] = ()
    if module is not None:
        from torch import nn

        if isinstance(module, (nn.LayerNorm, getattr(nn, "RMSNorm", nn.LayerNorm))):
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


def describe_pad_function(call: Call) -> tuple[Geometry, dict[str, Any]]:
    return Geometry(OpKind.PAD), {"pads": tuple(int(p) for p in call.arg(1, "pad", ())),
                                  "mode": str(call.arg(2, "mode", "constant"))}


def describe_pad_module(call: Call) -> tuple[Geometry, dict[str, Any]]:
    module = call.module
    name = type(module).__name__
    mode = "reflect" if "Reflection" in name else "replicate" if "Replication" in name else (
        "circular" if "Circular" in name else "constant")
    return Geometry(OpKind.PAD), {"pads": tuple(int(p) for p in module.padding), "mode": mode}


def describe_interpolate(call: Call) -> tuple[Geometry, dict[str, Any]]:
    module = call.module
    if module is not None:
        mode = getattr(module, "mode", "nearest")
        return Geometry(OpKind.UPSAMPLE), {"mode": mode, "align_corners": getattr(module, "align_corners", None)}
    return Geometry(OpKind.UPSAMPLE), {"mode": call.arg(3, "mode", "nearest"),
                                       "align_corners": call.arg(4, "align_corners")}


def describe_upsample_bilinear(call: Call) -> tuple[Geometry, dict[str, Any]]:
    return Geometry(OpKind.UPSAMPLE), {"mode": "bilinear", "align_corners": True}


def describe_pixel_shuffle(call: Call) -> tuple[Geometry, dict[str, Any]]:
    return Geometry(OpKind.UPSAMPLE), {"mode": "nearest"}


def describe_pixel_unshuffle(call: Call) -> tuple[Geometry, dict[str, Any]]:
    module = call.module
    factor = module.downscale_factor if module is not None else call.arg(1, "downscale_factor", 1)
    return Geometry(OpKind.UPSAMPLE), {"factor": int(factor)}


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


def describe_linear(call: Call) -> tuple[Geometry, dict[str, Any]]:
    return Geometry(OpKind.LINEAR), {}


# ------------------------------------------------------------------------------------------------- MACs


def conv_macs(node: OpNode) -> int:
    """N * C_out * (C_in / groups) * prod(k) * prod(output spatial): one MAC per weight per output position."""
    rank = node.geometry.rank
    input_shape, output_shape = node.input_shapes[0], node.output_shape
    batch = math.prod(output_shape[:-rank - 1])
    channels_in = input_shape[-rank - 1]
    return (batch * output_shape[-rank - 1] * (channels_in // node.geometry.groups) * math.prod(node.geometry.kernel)
            * math.prod(output_shape[-rank:]))


def conv_transpose_macs(node: OpNode) -> int:
    """N * C_in * (C_out / groups) * prod(k) * prod(input spatial): each input scattered through the kernel."""
    rank = node.geometry.rank
    input_shape, output_shape = node.input_shapes[0], node.output_shape
    batch = math.prod(input_shape[:-rank - 1])
    return (batch * input_shape[-rank - 1] * (output_shape[-rank - 1] // node.geometry.groups)
            * math.prod(node.geometry.kernel) * math.prod(input_shape[-rank:]))


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


# ------------------------------------------------------------------------------------------ shape rules
# PyTorch's meta kernels for element-wise ops, batch norm, linear, adaptive pooling and mean import
# torch._dynamo on first use (over a second of start-up); convolution and max pooling import sympy. These
# rules give the same shapes (tests check them against torch's kernels); a rule meeting arguments the real
# kernel would reject steps aside, so that kernel raises its own error.


def meta_empty(shape: Sequence[int], like: Any) -> Any:
    """An empty meta tensor of ``shape`` with ``like``'s dtype (``empty_like`` on meta would import sympy)."""
    import torch

    return torch.empty(tuple(shape), dtype=like.dtype, device="meta")


def broadcast_shapes(first: Sequence[int], second: Sequence[int]) -> tuple[int, ...]:
    """NumPy broadcasting of two shapes; ValueError where they don't broadcast."""
    width = max(len(first), len(second))
    padded = [(1,) * (width - len(shape)) + tuple(shape) for shape in (first, second)]
    result = []
    for a, b in zip(*padded, strict=True):
        if a != b and 1 not in (a, b):
            raise ValueError(f"shapes {tuple(first)} and {tuple(second)} do not broadcast")
        result.append(b if a == 1 else a)
    return tuple(result)


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


def shape_batch_norm(call: Call) -> Any:
    x, running_mean = call.args[0], call.arg(1, "running_mean")
    if x.dim() < 2 or (running_mean is not None and running_mean.shape[0] != x.shape[1]):
        return NotImplemented
    return meta_empty(x.shape, x)


def shape_adaptive(call: Call) -> Any:
    """Adaptive pooling keeps the leading dims and takes the target size on the trailing ``rank`` axes."""
    x = call.args[0]
    rank = _rank_from_name(call.name, default=0)
    target = call.arg(1, "output_size")
    target = (target,) * rank if isinstance(target, int) or target is None else tuple(target)
    if not rank or len(target) != rank or x.dim() not in (rank + 1, rank + 2) or "max" in call.name:
        return NotImplemented
    spatial = tuple(x.shape[x.dim() - rank + axis] if size is None else int(size) for axis, size in enumerate(target))
    return meta_empty((*x.shape[:x.dim() - rank], *spatial), x)


def shape_mean(call: Call) -> Any:
    x = call.args[0]
    dims, keepdim = call.arg(1, "dim"), call.arg(2, "keepdim", False)
    if dims is None or call.kwargs.get("dtype") is not None or not x.dtype.is_floating_point:
        return NotImplemented
    reduced_dims = {d % x.dim() for d in ((dims,) if isinstance(dims, int) else dims)}
    shape = [1 if axis in reduced_dims else size for axis, size in enumerate(x.shape)
             if keepdim or axis not in reduced_dims]
    return meta_empty(shape, x)


def shape_linear(call: Call) -> Any:
    x, weight = call.args[0], call.arg(1, "weight")
    if weight.dim() != 2 or x.dim() < 1 or x.shape[-1] != weight.shape[1] or x.dtype != weight.dtype:
        return NotImplemented
    return meta_empty((*x.shape[:-1], weight.shape[0]), x)


def _window_output(i: int, k: int, s: int, p: int, p_end: int, d: int, ceil_mode: bool = False) -> int:
    """floor((i + p + p_end - d(k - 1) - 1) / s) + 1, or PyTorch's ceil_mode rule for pooling."""
    span = i + p + p_end - d * (k - 1) - 1
    if not ceil_mode:
        return span // s + 1
    output = -(-span // s) + 1
    return output - 1 if (output - 1) * s >= i + p else output


def shape_conv(call: Call) -> Any:
    x, weight, bias = call.args[0], call.arg(1, "weight"), call.arg(2, "bias")
    padding, groups = call.arg(4, "padding", 0), call.arg(6, "groups", 1)
    rank = x.dim() - 2
    if rank not in (1, 2, 3) or isinstance(padding, str) or weight is None or weight.dim() != rank + 2:
        return NotImplemented
    stride, dilation = sizes(call.arg(3, "stride", 1), rank, True), sizes(call.arg(5, "dilation", 1), rank, True)
    padding = sizes(padding, rank, True)
    if x.dtype != weight.dtype or x.shape[1] != weight.shape[1] * groups or weight.shape[0] % groups or (
            bias is not None and (bias.dim() != 1 or bias.shape[0] != weight.shape[0])):
        return NotImplemented
    output = [_window_output(x.shape[2 + a], weight.shape[2 + a], stride[a], padding[a], padding[a], dilation[a])
              for a in range(rank)]
    if min(output) < 1:
        return NotImplemented
    return meta_empty((x.shape[0], weight.shape[0], *output), x)


def shape_max_pool(call: Call) -> Any:
    x = call.args[0]
    rank = x.dim() - 2
    if rank not in (1, 2, 3) or call.arg(6, "return_indices", False) or 0 in x.shape[:2]:
        return NotImplemented
    kernel = sizes(call.arg(1, "kernel_size"), rank, True)
    stride = pool_stride(kernel, call.arg(2, "stride"), strict=True)
    padding, dilation = sizes(call.arg(3, "padding", 0), rank, True), sizes(call.arg(4, "dilation", 1), rank, True)
    if any(2 * padding[a] > kernel[a] for a in range(rank)):
        return NotImplemented  # PyTorch: padding at most half the kernel size
    ceil_mode = bool(call.arg(5, "ceil_mode", False))
    output = [_window_output(x.shape[2 + a], kernel[a], stride[a], padding[a], padding[a], dilation[a], ceil_mode)
              for a in range(rank)]
    if min(output) < 1:
        return NotImplemented
    return meta_empty((*x.shape[:2], *output), x)


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


def shape_matmul(call: Call) -> Any:
    """Batched matrix product with broadcast batch dimensions (1-D operands left to torch)."""
    first, second = call.args[0], call.args[1] if len(call.args) > 1 else call.kwargs.get("other")
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


# -------------------------------------------------------------------------------------------- field rules


def unknown_field(node: OpNode, inputs: Sequence[FieldState]) -> FieldState:
    raise Undefined(f"not covered: {rules.describe_op(node)} is an operation without a receptive-field rule")


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


# ------------------------------------------------------------------------------------------------- table

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


UNKNOWN_OP = OpSpec("unknown", OpKind.UNKNOWN, unknown_field, doc="an operation without rules")


def builtin_ops() -> list[OpSpec]:
    """Every built-in entry, most specific module classes first."""
    from torch import nn
    from torch.nn.modules import batchnorm, conv, dropout, instancenorm, padding, pooling

    elementwise_modules = (
        nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
        nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Softplus, nn.Softsign, nn.LogSigmoid,
        nn.Tanhshrink, nn.Threshold, nn.Hardshrink, nn.Softshrink, nn.Identity, dropout._DropoutNd,
        nn.LocalResponseNorm, nn.ChannelShuffle,
    )
    return [
        OpSpec("conv_transpose", OpKind.CONV_TRANSPOSE, rules.transposed, modules=(conv._ConvTransposeNd,),
               functions=("conv_transpose1d", "conv_transpose2d", "conv_transpose3d"),
               describe=describe_conv_transpose, macs=conv_transpose_macs, replay=rules.replay_transposed,
               doc="transposed convolution: relations 8-13, rational stride"),
        OpSpec("conv", OpKind.CONV, rules.windowed, modules=(conv._ConvNd,),
               functions=("conv1d", "conv2d", "conv3d"), describe=describe_conv, shape=shape_conv, macs=conv_macs,
               replay=rules.replay_ones_window, doc="convolution: relations 1-6 and 15"),
        OpSpec("max_pool", OpKind.MAX_POOL, rules.windowed, modules=(pooling._MaxPoolNd,),
               functions=("max_pool1d", "max_pool2d", "max_pool3d", "max_pool1d_with_indices",
                          "max_pool2d_with_indices", "max_pool3d_with_indices"),
               describe=describe_max_pool, shape=shape_max_pool, replay=rules.replay_ones_window,
               doc="max pooling: relation 7"),
        OpSpec("avg_pool", OpKind.AVG_POOL, rules.windowed, modules=(pooling._AvgPoolNd,),
               functions=("avg_pool1d", "avg_pool2d", "avg_pool3d"), describe=describe_avg_pool,
               replay=rules.replay_ones_window, doc="average pooling: relation 7"),
        OpSpec("adaptive_pool", OpKind.ADAPTIVE_POOL, rules.adaptive,
               modules=(pooling._AdaptiveAvgPoolNd, pooling._AdaptiveMaxPoolNd),
               functions=("adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d",
                          "adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d",
                          "adaptive_max_pool1d_with_indices", "adaptive_max_pool2d_with_indices",
                          "adaptive_max_pool3d_with_indices"),
               describe=describe_adaptive, shape=shape_adaptive, replay=rules.replay_adaptive,
               doc="adaptive pooling: the target size; global pooling at 1"),
        OpSpec("linear", OpKind.LINEAR, rules.linear, modules=(nn.Linear,), functions=("linear",),
               describe=describe_linear, shape=shape_linear, macs=linear_macs, replay=rules.replay_as_analysed,
               doc="linear layer on the last dimension"),
        OpSpec("multihead_attention", OpKind.ATTENTION, windows.attention, modules=(nn.MultiheadAttention,),
               functions=("multi_head_attention_forward",), shape=shape_mha_forward, describe=describe_mha,
               macs=mha_macs, replay=windows.replay_mixing,
               doc="nn.MultiheadAttention: projections and attention over the sequence"),
        OpSpec("attention", OpKind.ATTENTION, windows.attention, functions=("scaled_dot_product_attention",),
               describe=describe_sdpa, shape=shape_sdpa, macs=sdpa_macs, replay=windows.replay_mixing,
               doc="scaled dot-product attention over dimension -2"),
        OpSpec("matmul", OpKind.MATMUL, windows.einsum_like, functions=("matmul", "mm", "bmm"),
               describe=describe_matmul, shape=shape_matmul, macs=einsum_macs, replay=windows.replay_mixing,
               doc="matrix product: mixes positions it contracts or pairs"),
        OpSpec("addmm", OpKind.MATMUL, windows.einsum_like, functions=("addmm", "baddbmm", "addbmm"),
               describe=describe_addmm, macs=einsum_macs, replay=windows.replay_mixing,
               doc="matrix product plus a tensor"),
        OpSpec("einsum", OpKind.MATMUL, windows.einsum_like, functions=("einsum",), describe=describe_einsum,
               macs=einsum_macs, replay=windows.replay_mixing, doc="einsum: mixes positions it contracts or pairs"),
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
        OpSpec("upsample", OpKind.UPSAMPLE, rules.upsampled, modules=(nn.Upsample,),
               functions=("interpolate", "upsample", "upsample_nearest"), describe=describe_interpolate,
               replay=rules.replay_upsample, doc="interpolation: rational stride"),
        OpSpec("upsample_bilinear", OpKind.UPSAMPLE, rules.upsampled, functions=("upsample_bilinear",),
               describe=describe_upsample_bilinear, replay=rules.replay_upsample,
               doc="F.upsample_bilinear (align_corners=True)"),
        OpSpec("pixel_shuffle", OpKind.UPSAMPLE, rules.upsampled, modules=(nn.PixelShuffle,),
               functions=("pixel_shuffle",), describe=describe_pixel_shuffle, replay=rules.replay_upsample,
               doc="pixel shuffle: channels to positions, a nearest upsampling of the grid"),
        OpSpec("pixel_unshuffle", OpKind.UPSAMPLE, rules.unshuffled, modules=(nn.PixelUnshuffle,),
               functions=("pixel_unshuffle",), describe=describe_pixel_unshuffle, replay=rules.replay_unshuffle,
               doc="pixel unshuffle: r x r blocks to channels, a window k = s = r"),
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
        OpSpec("reshape", OpKind.RESHAPE, windows.reshaped, modules=(nn.Flatten, nn.Unflatten),
               functions=("view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "view_as",
                          "reshape_as", "ravel"), shape_donors=("view_as", "reshape_as"),
               replay=windows.replay_reshaped, doc="view, reshape, flatten: the axes follow their dimensions"),
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
               describe=describe_cat, shape=windows.shape_cat, replay=rules.replay_identity,
               doc="concatenation: a merge along channels; along a spatial axis positions shift"),
        OpSpec("stack", OpKind.RESHAPE, rules.concatenated, functions=("stack",), describe=describe_stack,
               replay=rules.replay_identity, doc="stack: a merge in a new dimension"),
        OpSpec("getitem", OpKind.SUBSAMPLE, rules.indexed, functions=("getitem",), describe=describe_getitem,
               shape=windows.shape_getitem, replay=rules.replay_subsample,
               doc="indexing: strided slices subsample a spatial axis"),
        OpSpec("constant", OpKind.ELEMENTWISE, rules.position_wise, functions=CONSTANT_FUNCTIONS, constant=True,
               doc="zeros_like and friends: values that do not depend on the input"),
        *windows.window_ops(),
    ]


__all__ = [
    "UNKNOWN_OP",
    "adaptive_geometry",
    "broadcast_shapes",
    "builtin_ops",
    "conv_geometry",
    "conv_macs",
    "conv_transpose_macs",
    "einsum_macs",
    "linear_macs",
    "matmul_equation",
    "meta_empty",
    "parse_einsum",
    "pool_geometry",
    "sizes",
]
