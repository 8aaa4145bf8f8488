"""Output shapes of a few operations on the meta device, without running their meta kernels.

PyTorch's meta kernels for element-wise ops, batch norm, linear, adaptive pooling and mean are Python
references whose first call imports ``torch._dynamo`` (over a second of start-up). Their output shapes
follow simple rules, applied here; every other operation runs its own meta kernel.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from resnet_inspect.capture.geometry import op_name

_BINARY = frozenset({"add", "sub", "mul", "div", "true_divide"})
_IN_PLACE = frozenset({"__iadd__", "__isub__", "__imul__", "__itruediv__", "add_", "sub_", "mul_", "div_"})


def _shape(value: Any) -> tuple[int, ...]:
    return tuple(value.shape) if hasattr(value, "shape") else ()


def _binary(func: Any, args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
    import torch

    first, second = args[0], args[1] if len(args) > 1 else kwargs.get("other")
    tensors = [value for value in (first, second) if isinstance(value, torch.Tensor)]
    if any(t.dtype != tensors[0].dtype for t in tensors):
        return NotImplemented
    shape = torch.broadcast_shapes(_shape(first), _shape(second))
    name = getattr(func, "__name__", "")
    if name in _IN_PLACE:
        if tuple(shape) != _shape(first):
            return NotImplemented  # let the real kernel raise its own error
        return first
    return torch.empty(shape, dtype=tensors[0].dtype, device="meta")


def _batch_norm(func: Any, args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
    import torch

    x = args[0]
    running_mean = args[1] if len(args) > 1 else kwargs.get("running_mean")
    if x.dim() < 2 or (running_mean is not None and running_mean.shape[0] != x.shape[1]):
        return NotImplemented
    return torch.empty_like(x)


def _adaptive_pool(func: Any, args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
    import torch

    x = args[0]
    target = args[1] if len(args) > 1 else kwargs["output_size"]
    target = (target, target) if isinstance(target, int) or target is None else tuple(target)
    if x.dim() not in (3, 4) or len(target) != 2:
        return NotImplemented
    spatial = tuple(x.shape[-2 + axis] if size is None else int(size) for axis, size in enumerate(target))
    return torch.empty((*x.shape[:-2], *spatial), dtype=x.dtype, device="meta")


def _mean(func: Any, args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
    import torch

    x = args[0]
    dims = args[1] if len(args) > 1 else kwargs.get("dim")
    keepdim = args[2] if len(args) > 2 else kwargs.get("keepdim", False)
    if dims is None or kwargs.get("dtype") is not None or not x.dtype.is_floating_point:
        return NotImplemented
    reduced = {d % x.dim() for d in ((dims,) if isinstance(dims, int) else dims)}
    shape = [1 if axis in reduced else size for axis, size in enumerate(x.shape) if keepdim or axis not in reduced]
    return torch.empty(shape, dtype=x.dtype, device="meta")


def _linear(func: Any, args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
    import torch

    x, weight = args[0], args[1] if len(args) > 1 else kwargs["weight"]
    if weight.dim() != 2 or x.dim() < 1 or x.shape[-1] != weight.shape[1] or x.dtype != weight.dtype:
        return NotImplemented  # the real kernel raises its own error
    return torch.empty((*x.shape[:-1], weight.shape[0]), dtype=x.dtype, device="meta")


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
    return x if in_place else torch.empty_like(x)


_RULES: dict[str, Callable[[Any, Sequence[Any], dict[str, Any]], Any]] = {
    **dict.fromkeys(_BINARY, _binary),
    **dict.fromkeys(_UNARY, _unary),
    "batch_norm": _batch_norm,
    "adaptive_avg_pool2d": _adaptive_pool,
    "mean": _mean,
    "linear": _linear,
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
