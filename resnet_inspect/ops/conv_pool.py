"""Built-in entries for convolution and pooling: windowed operations, their geometry (the
convolution arithmetic's k, s, p, d), multiply-accumulates and fast meta shape rules."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from resnet_inspect.ops import rules
from resnet_inspect.ops.backward import operand_backward
from resnet_inspect.ops.common import meta_empty
from resnet_inspect.ops.table import Call, OpSpec
from resnet_inspect.records import Geometry, OpKind, OpNode


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


def conv_pool_ops() -> list[OpSpec]:
    """Convolutions (transposed first: its class is the more specific) and pooling."""
    from torch.nn.modules import conv, pooling

    return [
        OpSpec("conv_transpose", OpKind.CONV_TRANSPOSE, rules.transposed, modules=(conv._ConvTransposeNd,),
               functions=("conv_transpose1d", "conv_transpose2d", "conv_transpose3d"),
               describe=describe_conv_transpose, macs=conv_transpose_macs,
               backward_macs=operand_backward(conv_transpose_macs, (0, 1)), replay=rules.replay_transposed,
               doc="transposed convolution: relations 8-13, rational stride"),
        OpSpec("conv", OpKind.CONV, rules.windowed, modules=(conv._ConvNd,),
               functions=("conv1d", "conv2d", "conv3d"), describe=describe_conv, shape=shape_conv, macs=conv_macs,
               backward_macs=operand_backward(conv_macs, (0, 1)),
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
    ]
