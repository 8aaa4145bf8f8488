"""Rules that turn a module or a functional call into its spatial `Geometry`.

Two tables, keyed by module type and by function name (fvcore's habit: a table, not an if/elif chain).
A module type missing from the table is not treated as one operation: the capture looks inside it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from resnet_inspect.records import Geometry, OpKind, Pair


def pair(value: Any, strict: bool = False) -> Pair:
    """(h, w) from an int or a sequence of one or two ints; ``strict`` raises TypeError on anything else."""
    if isinstance(value, int):
        return (value, value)
    values = tuple(value)
    if strict and (len(values) not in (1, 2) or not all(isinstance(v, int) for v in values)):
        raise TypeError(f"not a size: {value!r}")
    values = tuple(int(v) for v in values)
    return (values[0], values[0]) if len(values) == 1 else (values[0], values[1])


def pool_stride(kernel: Pair, stride: Any, strict: bool = False) -> Pair:
    """PyTorch pooling's stride: the kernel size when none is given."""
    return kernel if stride is None or stride == () or stride == [] else pair(stride, strict)


def _padding(padding: Any, kernel: Pair, dilation: Pair) -> tuple[Pair, Pair, str]:
    """Leading padding, trailing padding and mode name; resolves PyTorch's 'same' and 'valid'."""
    if padding == "valid":
        return (0, 0), (0, 0), "valid"
    if padding == "same":
        totals = [dilation[axis] * (kernel[axis] - 1) for axis in range(2)]
        before = (totals[0] // 2, totals[1] // 2)
        after = (totals[0] - before[0], totals[1] - before[1])
        return before, after, "same"
    symmetric = pair(padding)
    return symmetric, symmetric, "zeros"


def conv_geometry(kernel: Any, stride: Any, padding: Any, dilation: Any, groups: int) -> Geometry:
    kernel_hw, dilation_hw = pair(kernel), pair(dilation)
    before, after, mode = _padding(padding, kernel_hw, dilation_hw)
    return Geometry(
        OpKind.CONV,
        kernel=kernel_hw,
        stride=pair(stride),
        padding=before,
        padding_end=after,
        dilation=dilation_hw,
        groups=int(groups),
        padding_mode=mode,
    )


def pool_geometry(kind: OpKind, kernel: Any, stride: Any, padding: Any, dilation: Any, ceil_mode: bool) -> Geometry:
    kernel_hw = pair(kernel)
    stride_hw = pool_stride(kernel_hw, stride)
    padding_hw = pair(padding)
    return Geometry(
        kind,
        kernel=kernel_hw,
        stride=stride_hw,
        padding=padding_hw,
        padding_end=padding_hw,
        dilation=pair(dilation),
        ceil_mode=bool(ceil_mode),
    )


def adaptive_geometry(output_size: Any) -> Geometry:
    if output_size is None or isinstance(output_size, int):
        target = (output_size, output_size)
    else:
        sizes = tuple(output_size)
        target = (sizes[0], sizes[-1])
    return Geometry(OpKind.ADAPTIVE_POOL, output_size=(target[0], target[1]))


ELEMENTWISE = Geometry(OpKind.ELEMENTWISE)
LINEAR = Geometry(OpKind.LINEAR)
RESHAPE = Geometry(OpKind.RESHAPE)
GLOBAL = Geometry(OpKind.GLOBAL)
UNKNOWN = Geometry(OpKind.UNKNOWN)


# ---------------------------------------------------------------------------------------------- modules


def module_rules() -> list[tuple[type, Callable[[Any], Geometry]]]:
    """(module type, geometry rule) pairs, most specific first. Imports torch, so built on first use."""
    from torch import nn

    def conv(m: Any) -> Geometry:
        return conv_geometry(m.kernel_size, m.stride, m.padding, m.dilation, m.groups)

    def conv_transpose(m: Any) -> Geometry:
        kernel, dilation, padding = pair(m.kernel_size), pair(m.dilation), pair(m.padding)
        return Geometry(
            OpKind.CONV_TRANSPOSE,
            kernel=kernel,
            stride=pair(m.stride),
            padding=padding,
            padding_end=padding,
            dilation=dilation,
            groups=m.groups,
            output_padding=pair(m.output_padding),
        )

    def max_pool(m: Any) -> Geometry:
        return pool_geometry(OpKind.MAX_POOL, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode)

    def avg_pool(m: Any) -> Geometry:
        return pool_geometry(OpKind.AVG_POOL, m.kernel_size, m.stride, m.padding, 1, m.ceil_mode)

    elementwise_types = (
        nn.BatchNorm2d,
        nn.BatchNorm1d,
        nn.SyncBatchNorm,
        nn.ReLU,
        nn.ReLU6,
        nn.LeakyReLU,
        nn.PReLU,
        nn.ELU,
        nn.SELU,
        nn.CELU,
        nn.GELU,
        nn.SiLU,
        nn.Mish,
        nn.Sigmoid,
        nn.Tanh,
        nn.Hardswish,
        nn.Hardsigmoid,
        nn.Hardtanh,
        nn.Softplus,
        nn.Dropout,
        nn.Dropout2d,
        nn.AlphaDropout,
        nn.Identity,
    )
    return [
        (nn.Conv2d, conv),
        (nn.ConvTranspose2d, conv_transpose),
        (nn.MaxPool2d, max_pool),
        (nn.AvgPool2d, avg_pool),
        ((nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d), lambda m: adaptive_geometry(m.output_size)),
        (nn.Linear, lambda m: LINEAR),
        (nn.Flatten, lambda m: RESHAPE),
        (elementwise_types, lambda m: ELEMENTWISE),
    ]


_MODULE_RULES: list[tuple[Any, Callable[[Any], Geometry]]] | None = None


def module_geometry(module: Any) -> Geometry | None:
    """The geometry of a module the capture treats as one operation, or None to look inside it."""
    global _MODULE_RULES
    if _MODULE_RULES is None:
        _MODULE_RULES = module_rules()
    for types, rule in _MODULE_RULES:
        if isinstance(module, types):
            return rule(module)
    return None


# -------------------------------------------------------------------------------------------- functions

_ELEMENTWISE_OPS = frozenset(
    [
        "add",
        "sub",
        "mul",
        "div",
        "true_divide",
        "neg",
        "abs",
        "relu",
        "relu6",
        "leaky_relu",
        "prelu",
        "elu",
        "selu",
        "celu",
        "gelu",
        "silu",
        "mish",
        "sigmoid",
        "tanh",
        "hardswish",
        "hardsigmoid",
        "hardtanh",
        "softplus",
        "dropout",
        "dropout2d",
        "alpha_dropout",
        "batch_norm",
        "contiguous",
        "clone",
        "detach",
        "to",
        "float",
        "half",
        "double",
        "bfloat16",
        "type",
        "type_as",
        "clamp",
        "clip",
        "exp",
        "log",
        "sqrt",
        "rsqrt",
        "pow",
        "square",
        "maximum",
        "minimum",
        "where",
        "mul_add",
        "addcmul",
        "addcdiv",
    ]
)
_RESHAPE_OPS = frozenset(["flatten", "view", "reshape", "squeeze", "unsqueeze", "permute", "transpose"])
_REDUCE_OPS = frozenset(["mean", "sum", "amax", "amin", "max", "min"])
_DUNDER_ALIASES = {
    "radd": "add",
    "iadd": "add",
    "rsub": "sub",
    "isub": "sub",
    "rmul": "mul",
    "imul": "mul",
    "truediv": "div",
    "rtruediv": "div",
    "itruediv": "div",
}


def op_name(func: Any) -> str:
    """Normalised operation name: `Tensor.__iadd__` -> "add", `relu_` -> "relu"."""
    name = getattr(func, "__name__", None) or str(func)
    name = name.strip("_")
    return _DUNDER_ALIASES.get(name, name)


def call_argument(args: Sequence[Any], kwargs: dict[str, Any], position: int, name: str, default: Any) -> Any:
    """A functional call's argument, passed by keyword or by position."""
    if name in kwargs:
        return kwargs[name]
    return args[position] if len(args) > position else default


def _spatial_dims(dims: Any, ndim: int) -> set[int]:
    if dims is None:
        return set(range(ndim))
    dims = (dims,) if isinstance(dims, int) else tuple(dims)
    return {d % ndim for d in dims}


def _getitem_geometry(args: Sequence[Any], input_shape: tuple[int, ...]) -> Geometry:
    """`x[:, :, a::s, b::s]` keeps every s-th position from a: kernel 1, stride s, padding -a."""
    index = args[1] if len(args) > 1 else None
    index = index if isinstance(index, tuple) else (index,)
    if len(input_shape) != 4 or any(i is Ellipsis or i is None or not isinstance(i, slice) for i in index):
        return UNKNOWN
    slices = list(index) + [slice(None)] * (4 - len(index))
    stride, padding = [1, 1], [0, 0]
    for axis in (0, 1):
        rule = slices[2 + axis]
        start, _, step = rule.indices(input_shape[2 + axis])
        stride[axis], padding[axis] = step, -start
    if slices[0] != slice(None):
        return UNKNOWN
    return Geometry(OpKind.SUBSAMPLE, stride=pair(stride), padding=pair(padding), padding_end=pair(padding))


def _pad_geometry(args: Sequence[Any], kwargs: dict[str, Any], input_shape: tuple[int, ...]) -> Geometry:
    pads = tuple(call_argument(args, kwargs, 1, "pad", ()))
    mode = call_argument(args, kwargs, 2, "mode", "constant")
    pads = pads + (0,) * (8 - len(pads))
    left, right, top, bottom = pads[0], pads[1], pads[2], pads[3]
    if len(input_shape) != 4:
        return UNKNOWN
    if (left, right, top, bottom) == (0, 0, 0, 0):
        return ELEMENTWISE  # pads only channels or batch: position-wise
    return Geometry(OpKind.PAD, padding=(top, left), padding_end=(bottom, right), padding_mode=str(mode))


def function_geometry(
    func: Any, args: Sequence[Any], kwargs: dict[str, Any], input_shape: tuple[int, ...]
) -> tuple[str, Geometry]:
    """(operation name, geometry) of a functional call seen outside any known layer."""
    name = op_name(func)
    ndim = len(input_shape)
    if name in _ELEMENTWISE_OPS:
        return name, ELEMENTWISE
    if name in ("cat", "concat", "concatenate", "stack"):
        dim = call_argument(args, kwargs, 1, "dim", 0)
        return name, ELEMENTWISE if name != "stack" and ndim == 4 and dim % 4 == 1 else UNKNOWN
    if name in _RESHAPE_OPS:
        return name, RESHAPE
    if name in _REDUCE_OPS:
        dims = _spatial_dims(call_argument(args, kwargs, 1, "dim", None), ndim) if ndim == 4 else set()
        if {2, 3} <= dims:
            return name, GLOBAL
        return name, UNKNOWN
    if name == "getitem":
        return name, _getitem_geometry(args, input_shape)
    if name == "pad":
        return name, _pad_geometry(args, kwargs, input_shape)
    if name == "conv2d":
        weight = call_argument(args, kwargs, 1, "weight", None)
        kernel = tuple(weight.shape[-2:]) if weight is not None else (1, 1)
        return name, conv_geometry(
            kernel,
            call_argument(args, kwargs, 3, "stride", 1),
            call_argument(args, kwargs, 4, "padding", 0),
            call_argument(args, kwargs, 5, "dilation", 1),
            call_argument(args, kwargs, 6, "groups", 1),
        )
    if name in ("max_pool2d", "max_pool2d_with_indices"):
        return name, pool_geometry(
            OpKind.MAX_POOL,
            call_argument(args, kwargs, 1, "kernel_size", 1),
            call_argument(args, kwargs, 2, "stride", None),
            call_argument(args, kwargs, 3, "padding", 0),
            call_argument(args, kwargs, 4, "dilation", 1),
            call_argument(args, kwargs, 5, "ceil_mode", False),
        )
    if name == "avg_pool2d":
        return name, pool_geometry(
            OpKind.AVG_POOL,
            call_argument(args, kwargs, 1, "kernel_size", 1),
            call_argument(args, kwargs, 2, "stride", None),
            call_argument(args, kwargs, 3, "padding", 0),
            1,
            call_argument(args, kwargs, 4, "ceil_mode", False),
        )
    if name in ("adaptive_avg_pool2d", "adaptive_max_pool2d"):
        return name, adaptive_geometry(call_argument(args, kwargs, 1, "output_size", 1))
    if name == "linear":
        return name, LINEAR
    return name, UNKNOWN
