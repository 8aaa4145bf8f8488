"""Output shapes of a few operations on the meta device, without running their meta kernels.

PyTorch's meta kernels for element-wise ops, batch norm, linear, adaptive pooling and mean are Python
references whose first call imports ``torch._dynamo`` (over a second of start-up); those of convolution,
max pooling, ``empty_like`` and ``broadcast_shapes`` import sympy (about half a second). Their output shapes
follow simple rules, applied here (convolution and pooling by the project's own arithmetic, which the tests
check against torch); every other operation runs its own meta kernel. A rule that meets arguments the real
kernel would reject steps aside, so that kernel raises its own error.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from resnet_inspect.capture.geometry import call_argument, op_name, pair, pool_stride

_BINARY = frozenset({"add", "sub", "mul", "div", "true_divide"})
_IN_PLACE = frozenset({"__iadd__", "__isub__", "__imul__", "__itruediv__", "add_", "sub_", "mul_", "div_"})


def _shape(value: Any) -> tuple[int, ...]:
    return tuple(value.shape) if hasattr(value, "shape") else ()


def meta_empty(shape: Sequence[int], like: Any) -> Any:
    """An empty meta tensor of ``shape`` with ``like``'s dtype (``empty_like`` on meta would import sympy)."""
    import torch

    return torch.empty(tuple(shape), dtype=like.dtype, device="meta")


def _broadcast(first: tuple[int, ...], second: tuple[int, ...]) -> tuple[int, ...]:
    """NumPy broadcasting of two shapes; ValueError where they don't broadcast."""
    width = max(len(first), len(second))
    padded = [(1,) * (width - len(shape)) + shape for shape in (first, second)]
    result = []
    for a, b in zip(*padded, strict=True):
        if a != b and 1 not in (a, b):
            raise ValueError(f"shapes {first} and {second} do not broadcast")
        result.append(b if a == 1 else a)
    return tuple(result)


def _conv2d(func: Any, args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
    from resnet_inspect.analysis.arithmetic import conv_output

    x, weight = args[0], call_argument(args, kwargs, 1, "weight", None)
    bias = call_argument(args, kwargs, 2, "bias", None)
    stride, dilation = (
        pair(call_argument(args, kwargs, 3, "stride", 1), strict=True),
        pair(call_argument(args, kwargs, 5, "dilation", 1), strict=True),
    )
    padding, groups = call_argument(args, kwargs, 4, "padding", 0), call_argument(args, kwargs, 6, "groups", 1)
    if isinstance(padding, str) or x.dim() != 4 or weight is None or weight.dim() != 4 or x.dtype != weight.dtype:
        return NotImplemented
    if (
        x.shape[1] != weight.shape[1] * groups
        or weight.shape[0] % groups
        or (bias is not None and (bias.dim() != 1 or bias.shape[0] != weight.shape[0]))
    ):
        return NotImplemented
    padding = pair(padding, strict=True)
    sizes = [
        conv_output(x.shape[2 + axis], weight.shape[2 + axis], stride[axis], padding[axis], dilation[axis]).output
        for axis in (0, 1)
    ]
    if min(sizes) < 1:
        return NotImplemented
    return meta_empty((x.shape[0], weight.shape[0], *sizes), x)


def _max_pool2d(func: Any, args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
    from resnet_inspect.analysis.arithmetic import pool_output

    x = args[0]
    kernel = pair(call_argument(args, kwargs, 1, "kernel_size", None), strict=True)
    stride = pool_stride(kernel, call_argument(args, kwargs, 2, "stride", None), strict=True)
    padding = pair(call_argument(args, kwargs, 3, "padding", 0), strict=True)
    dilation = pair(call_argument(args, kwargs, 4, "dilation", 1), strict=True)
    ceil_mode = bool(call_argument(args, kwargs, 5, "ceil_mode", False))
    if x.dim() != 4 or call_argument(args, kwargs, 6, "return_indices", False) or 0 in x.shape[:2]:
        return NotImplemented
    if any(2 * padding[axis] > kernel[axis] for axis in (0, 1)):
        return NotImplemented  # PyTorch: padding at most half the kernel size
    sizes = [
        pool_output(x.shape[2 + axis], kernel[axis], stride[axis], padding[axis], dilation[axis], ceil_mode).output
        for axis in (0, 1)
    ]
    if min(sizes) < 1:
        return NotImplemented
    return meta_empty((*x.shape[:2], *sizes), x)


def _binary(func: Any, args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
    import torch

    first, second = args[0], args[1] if len(args) > 1 else kwargs.get("other")
    tensors = [value for value in (first, second) if isinstance(value, torch.Tensor)]
    if any(t.dtype != tensors[0].dtype for t in tensors):
        return NotImplemented
    shape = _broadcast(_shape(first), _shape(second))
    name = getattr(func, "__name__", "")
    if name in _IN_PLACE:
        if tuple(shape) != _shape(first):
            return NotImplemented  # let the real kernel raise its own error
        return first
    return meta_empty(shape, tensors[0])


def _batch_norm(func: Any, args: Sequence[Any], kwargs: dict[str, Any]) -> Any:

    x = args[0]
    running_mean = args[1] if len(args) > 1 else kwargs.get("running_mean")
    if x.dim() < 2 or (running_mean is not None and running_mean.shape[0] != x.shape[1]):
        return NotImplemented
    return meta_empty(x.shape, x)


def _adaptive_pool(func: Any, args: Sequence[Any], kwargs: dict[str, Any]) -> Any:

    x = args[0]
    target = args[1] if len(args) > 1 else kwargs["output_size"]
    target = (target, target) if isinstance(target, int) or target is None else tuple(target)
    if x.dim() not in (3, 4) or len(target) != 2:
        return NotImplemented
    spatial = tuple(x.shape[-2 + axis] if size is None else int(size) for axis, size in enumerate(target))
    return meta_empty((*x.shape[:-2], *spatial), x)


def _mean(func: Any, args: Sequence[Any], kwargs: dict[str, Any]) -> Any:

    x = args[0]
    dims = args[1] if len(args) > 1 else kwargs.get("dim")
    keepdim = args[2] if len(args) > 2 else kwargs.get("keepdim", False)
    if dims is None or kwargs.get("dtype") is not None or not x.dtype.is_floating_point:
        return NotImplemented
    reduced = {d % x.dim() for d in ((dims,) if isinstance(dims, int) else dims)}
    shape = [1 if axis in reduced else size for axis, size in enumerate(x.shape) if keepdim or axis not in reduced]
    return meta_empty(shape, x)


def _linear(func: Any, args: Sequence[Any], kwargs: dict[str, Any]) -> Any:

    x, weight = args[0], args[1] if len(args) > 1 else kwargs["weight"]
    if weight.dim() != 2 or x.dim() < 1 or x.shape[-1] != weight.shape[1] or x.dtype != weight.dtype:
        return NotImplemented  # the real kernel raises its own error
    return meta_empty((*x.shape[:-1], weight.shape[0]), x)


_UNARY = frozenset(
    [
        "relu",
        "relu6",
        "leaky_relu",
        "gelu",
        "silu",
        "mish",
        "sigmoid",
        "tanh",
        "hardtanh",
        "hardswish",
        "hardsigmoid",
        "elu",
        "selu",
        "celu",
        "softplus",
        "dropout",
        "dropout2d",
    ]
)


def _unary(func: Any, args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
    """Activations and dropout keep the shape; the in-place forms return their input."""
    import torch

    x = args[0]
    in_place = (
        getattr(func, "__name__", "").endswith("_")
        or kwargs.get("inplace") is True
        or (len(args) > 1 and args[-1] is True and op_name(func) in ("relu", "relu6", "hardtanh", "silu", "mish"))
    )
    if any(isinstance(a, torch.Tensor) for a in args[1:]) or any(isinstance(v, torch.Tensor) for v in kwargs.values()):
        return NotImplemented
    return x if in_place else meta_empty(x.shape, x)


_RULES: dict[str, Callable[[Any, Sequence[Any], dict[str, Any]], Any]] = {
    **dict.fromkeys(_BINARY, _binary),
    **dict.fromkeys(_UNARY, _unary),
    "batch_norm": _batch_norm,
    "adaptive_avg_pool2d": _adaptive_pool,
    "mean": _mean,
    "linear": _linear,
    "conv2d": _conv2d,
    "max_pool2d": _max_pool2d,
}


def meta_result(func: Any, args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
    """The result of ``func`` on meta tensors by shape rule, or NotImplemented to run it for real."""
    import torch

    rule = _RULES.get(op_name(func))
    if rule is None or not args or not isinstance(args[0], torch.Tensor) or not args[0].is_meta:
        return NotImplemented
    if any(isinstance(a, torch.Tensor) and not a.is_meta for a in args):
        return NotImplemented
    try:
        return rule(func, args, kwargs)
    except (RuntimeError, TypeError, ValueError, IndexError, KeyError):
        return NotImplemented
