"""Meta kernels in Python for the aten operations a vision network's step calls most (torch's own meta kernels for
them are Python decompositions that import torch._dynamo, seconds of start-up), and the pointwise shortcut.

Each gives the output's shape, strides and dtype as torch's kernel would (tests/test_training.py compares them with
the CPU kernels); anything outside what a rule handles returns NotImplemented, and torch's own meta kernel decides.
"""

from __future__ import annotations

from typing import Any


def meta_like(tensor: Any, dtype: Any = None) -> Any:
    """An empty meta tensor with ``tensor``'s shape and strides (``empty_like`` on meta goes through Python)."""
    import torch

    return torch.empty_strided(tuple(tensor.shape), tuple(tensor.stride()), dtype=dtype or tensor.dtype,
                               device="meta")


def _batch_norm(device: str) -> Any:
    """native_batch_norm: the output like the input; the saved mean and inverse deviation per channel (none
    in eval), in the input's dtype on the CPU (its kernel's rule), else in float32 for 16-bit inputs."""
    import torch

    def rule(input: Any, weight: Any, bias: Any, running_mean: Any, running_var: Any, training: bool,
             *_args: Any) -> Any:
        low = input.dtype in (torch.float16, torch.bfloat16)
        mixed = low and weight is not None and weight.dtype == torch.float32  # the CPU kernel then keeps float32
        statistics = input.dtype if (device.startswith("cpu") and not mixed) or not low else torch.float32
        kept = training or running_mean is None or not device.startswith("cpu")  # the CPU keeps none in eval
        size = (input.shape[1],) if kept else (0,)
        return (meta_like(input), torch.empty(size, dtype=statistics, device="meta"),
                torch.empty(size, dtype=statistics, device="meta"))

    return rule


def _batch_norm_backward(grad_out: Any, input: Any, weight: Any, *args: Any) -> Any:
    """native_batch_norm_backward: the input's gradient like the input, the weight's and bias's like the weight."""
    mask = args[-1]
    return (meta_like(input) if mask[0] else None, meta_like(weight) if mask[1] and weight is not None else None,
            meta_like(weight) if mask[2] and weight is not None else None)


_NOT_SAME_DTYPE = frozenset({"eq", "ne", "lt", "le", "gt", "ge", "logical_and", "logical_or", "logical_xor",
                             "logical_not", "isnan", "isinf", "isfinite", "isposinf", "isneginf", "signbit"})


_LAYOUT_KEYWORDS = frozenset({"out", "dtype", "layout", "device"})  # keywords that decide the result's own kind


def pointwise(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """A pointwise operation on dense floating tensors of one shape, layout and dtype (scalars aside): in place,
    the tensor itself; else an empty tensor like the first (what torch's kernels give then). NotImplemented
    otherwise (broadcasting, views, type promotion, an ``out=``, ``dtype=``, ``layout=`` or ``device=``): torch's
    own meta kernel decides. A ``memory_format`` other than ``preserve_format`` (``clone`` into a contiguous or
    channels-last layout, as ``reshape`` asks) gives that layout."""
    import torch

    name = func._schema.name.split("::")[-1]
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    if (_LAYOUT_KEYWORDS & set(kwargs) or not tensors or name.rstrip("_") in _NOT_SAME_DTYPE
            or any(not isinstance(a, (torch.Tensor, int, float, bool)) for a in args)
            or any(isinstance(v, torch.Tensor) for v in kwargs.values())):
        return NotImplemented
    first = tensors[0]
    if not first.is_floating_point() or any(
            t.shape != first.shape or t.stride() != first.stride() or t.dtype != first.dtype or not t.is_meta
            for t in tensors):
        return NotImplemented
    if name.endswith("_"):
        return first
    memory_format = kwargs.get("memory_format")
    if memory_format is not None and memory_format != torch.preserve_format:
        return torch.empty(tuple(first.shape), dtype=first.dtype, device="meta", memory_format=memory_format)
    if first.is_contiguous() or (first.dim() == 4 and first.is_contiguous(memory_format=torch.channels_last)):
        return meta_like(first)
    strides = [stride for stride in first.stride() if stride != 0]
    if strides == sorted(strides, reverse=True):  # broadcast (stride 0) axes over a row-major layout: row-major
        return torch.empty(tuple(first.shape), dtype=first.dtype, device="meta")
    return NotImplemented


def _mean(input: Any, dim: Any = None, keepdim: bool = False, *, dtype: Any = None) -> Any:
    """mean over ``dim`` of a floating tensor: the reduced shape, contiguous."""
    import torch

    if dtype is not None or not input.is_floating_point():
        return NotImplemented
    dims = range(input.dim()) if not dim else [d % input.dim() for d in ([dim] if isinstance(dim, int) else dim)]
    shape = [1 if axis in dims else size for axis, size in enumerate(input.shape)]
    if not keepdim:
        shape = [size for axis, size in enumerate(shape) if axis not in dims]
    return torch.empty(shape, dtype=input.dtype, device="meta")


def _addmm(bias: Any, first: Any, second: Any, *, beta: Any = 1, alpha: Any = 1) -> Any:
    """addmm of two matrices of one floating dtype: (rows of the first, columns of the second), contiguous."""
    import torch

    if first.dtype != second.dtype or bias.dtype != first.dtype or not first.is_floating_point():
        return NotImplemented
    return torch.empty((first.shape[0], second.shape[1]), dtype=first.dtype, device="meta")


def _convolution(input: Any, weight: Any, bias: Any, stride: Any, padding: Any, dilation: Any, transposed: bool,
                 output_padding: Any, groups: int) -> Any:
    """aten.convolution of contiguous tensors of one dtype: the output size by the convolution arithmetic
    (relations 6 and 15, or PyTorch's transposed relation), contiguous. Anything else is left to torch."""
    import torch

    rank = weight.dim() - 2
    if (input.dim() != rank + 2 or input.dtype != weight.dtype or not input.is_contiguous()
            or not weight.is_contiguous() or not input.is_floating_point()):
        return NotImplemented
    try:
        spatial = _conv_spatial(input, weight, stride, padding, dilation, transposed, output_padding)
    except (ValueError, IndexError, TypeError):
        return NotImplemented
    channels = weight.shape[1] * groups if transposed else weight.shape[0]
    if min(spatial, default=1) < 1:
        return NotImplemented
    return torch.empty((input.shape[0], channels, *spatial), dtype=input.dtype, device="meta")


def _conv_spatial(input: Any, weight: Any, stride: Any, padding: Any, dilation: Any, transposed: bool,
                  output_padding: Any) -> list[int]:
    from resnet_inspect.ops.arithmetic import conv_output, conv_transpose_output

    spatial = []
    for axis in range(weight.dim() - 2):
        size, kernel = int(input.shape[2 + axis]), int(weight.shape[2 + axis])
        if transposed:
            spatial.append(conv_transpose_output(size, kernel, stride[axis], padding[axis], dilation[axis],
                                                 output_padding[axis]).output)
        else:
            spatial.append(conv_output(size, kernel, stride[axis], padding[axis], dilation[axis]).output)
    return spatial


def _convolution_backward(grad_output: Any, input: Any, weight: Any, bias_sizes: Any, *args: Any) -> Any:
    """aten.convolution_backward of contiguous tensors: the gradients shaped like input, weight and bias, each
    only when its mask asks for it."""
    import torch

    mask = args[-1]
    if not (grad_output.is_contiguous() and input.is_contiguous() and weight.is_contiguous()):
        return NotImplemented
    bias = torch.empty(tuple(bias_sizes), dtype=grad_output.dtype, device="meta") if bias_sizes else None
    return (meta_like(input) if mask[0] else None, meta_like(weight) if mask[1] else None,
            bias if mask[2] and bias is not None else None)


def _max_pool2d(input: Any, kernel_size: Any, stride: Any = (), padding: Any = 0, dilation: Any = 1,
                ceil_mode: bool = False) -> Any:
    """max_pool2d_with_indices of a contiguous (N, C, H, W) tensor: output and int64 indices by relation 7."""
    import torch

    from resnet_inspect.ops.arithmetic import pool_output

    def pair(value: Any) -> tuple[int, int]:
        values = [value] if isinstance(value, int) else list(value)
        return (int(values[0]), int(values[-1]))

    if input.dim() != 4 or not input.is_contiguous() or not input.is_floating_point():
        return NotImplemented
    kernel, padding_pair, dilation_pair = pair(kernel_size), pair(padding), pair(dilation)
    stride_pair = pair(stride) if stride else kernel
    try:
        spatial = [pool_output(int(input.shape[2 + axis]), kernel[axis], stride_pair[axis], padding_pair[axis],
                               dilation_pair[axis], ceil_mode=bool(ceil_mode)).output for axis in range(2)]
    except (ValueError, TypeError):
        return NotImplemented
    if min(spatial) < 1:
        return NotImplemented
    shape = (*input.shape[:2], *spatial)
    return (torch.empty(shape, dtype=input.dtype, device="meta"),
            torch.empty(shape, dtype=torch.int64, device="meta"))


def fast_meta(device: str) -> dict[Any, Any]:
    """aten operations whose meta kernels are Python decompositions that import torch._dynamo on first use (seconds
    of start-up): their outputs' shapes, strides and dtypes as those decompositions give them (a test compares)."""
    import torch

    aten = torch.ops.aten
    return {aten.native_batch_norm.default: _batch_norm(device),
            aten.native_batch_norm_backward.default: _batch_norm_backward,
            aten.threshold_backward.default: lambda grad, input, threshold: meta_like(grad),
            aten.mean.dim: _mean, aten.sum.dim_IntList: _mean, aten.sum.default: _mean, aten.addmm.default: _addmm,
            aten.convolution.default: _convolution, aten.convolution_backward.default: _convolution_backward,
            aten.mm.default: lambda first, second: _addmm(first[0], first, second),
            aten.max_pool2d_with_indices.default: _max_pool2d,
            aten.ones_like.default: lambda input, **options: meta_like(input) if input.is_contiguous() and not any(
                options.get(key) is not None for key in ("dtype", "layout", "device")) else NotImplemented,
            aten.max_pool2d_with_indices_backward.default:
                lambda grad, input, *args: meta_like(input) if input.is_contiguous() else NotImplemented}


__all__ = ["fast_meta", "meta_like", "pointwise"]
