"""The kernels the modelled device would run: autocast's casts, scaled dot-product attention's backend, and the
temporaries a kernel allocates inside itself (which no dispatch mode sees)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from resnet_inspect.capture.training.options import AMP_DTYPES, TrainOptions

# torch.nn.attention.SDPBackend's value for the CPU's fused (flash) kernel, as torch._fused_sdp_choice returns it
_SDPA_FLASH = 1
# torch.autocast's op lists (the operations a vision network calls) for the CPU and CUDA: run in the low precision,
# or in float32. Every other operation runs in the dtype of its inputs. torch's autocast does not act on meta
# tensors, so the training pass applies these lists itself, at the same functions, with autocast's cache of the
# weights cast once per forward.
AUTOCAST_LOW = frozenset({
    "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d", "linear", "matmul",
    "mm", "bmm", "addmm", "baddbmm", "addbmm", "prelu", "scaled_dot_product_attention", "einsum",
})
AUTOCAST_FLOAT32 = {
    "cpu": frozenset({"avg_pool3d", "max_pool3d", "adaptive_avg_pool3d", "reflection_pad1d", "reflection_pad2d",
                      "replication_pad1d", "replication_pad2d", "replication_pad3d", "grid_sampler", "prod",
                      "cdist", "mse_loss", "cross_entropy", "nll_loss", "l1_loss", "smooth_l1_loss", "kl_div",
                      "binary_cross_entropy", "binary_cross_entropy_with_logits"}),
    "cuda": frozenset({"softmax", "log_softmax", "layer_norm", "group_norm", "rms_norm", "norm", "normalize",
                       "exp", "log", "log1p", "pow", "cumsum", "cumprod", "sum", "prod", "cdist", "mse_loss",
                       "cross_entropy", "nll_loss", "l1_loss", "smooth_l1_loss", "kl_div",
                       "binary_cross_entropy_with_logits", "softplus", "reciprocal", "rsqrt", "cosine_similarity"}),
}


def _autocast(low_dtype: str | None, device: str) -> Any:
    """Cast the floating arguments of the operations in autocast's lists to ``low_dtype`` ("bfloat16" or
    "float16") or float32, as ``torch.autocast(device)`` would."""
    import torch

    if low_dtype is None:
        return None
    low = getattr(torch, low_dtype)
    float32_ops = AUTOCAST_FLOAT32["cuda" if device.startswith("cuda") else "cpu"]
    cache: dict[int, Any] = {}

    def cast(value: Any, dtype: Any) -> Any:
        if not isinstance(value, torch.Tensor) or not value.is_floating_point() or value.dtype in (dtype,
                                                                                                   torch.float64):
            return value
        cacheable = (dtype == low and value.dtype == torch.float32 and value.requires_grad and value.is_leaf
                     and torch.is_grad_enabled())
        if cacheable and id(value) in cache:
            return cache[id(value)]
        result = value.to(dtype)
        if cacheable:
            cache[id(value)] = result
        return result

    def arguments(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]] | None:
        dtype = low if name in AUTOCAST_LOW else torch.float32 if name in float32_ops else None
        if dtype is None:
            return None
        return (tuple(cast(a, dtype) if not isinstance(a, (list, tuple)) else type(a)(cast(b, dtype) for b in a)
                      for a in args), {k: cast(v, dtype) for k, v in kwargs.items()})

    arguments.cache = cache  # type: ignore[attr-defined]
    arguments.low_dtype = low_dtype  # type: ignore[attr-defined]
    return arguments


# Functions of torch.nn.functional that call others of the module by their global names: a function mode cannot
# see those calls, so while one runs, the names it calls are bound to the kernel hook (and put back after).
_COMPOSITES = {"multi_head_attention_forward": ("scaled_dot_product_attention", "linear")}


def device_kernels(options: TrainOptions) -> Any:
    """The capture's kernel hook: autocast's casts, then attention as the device would run it (inside
    ``F.multi_head_attention_forward`` too)."""
    attention = _sdpa_kernel(options.device)
    autocast = _autocast(AMP_DTYPES[options.amp] if options.amp else None, options.device)
    active = [autocast]  # the innermost torch.autocast block of the step, if any, last (see autocast_blocks)

    def kernel(name: str, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        autocast = active[-1]
        if autocast is not None:
            cast = autocast(name, args, kwargs)
            if cast is not None:
                args, kwargs = cast
        result = attention(name, func, args, kwargs)
        if result is not NotImplemented:
            return result
        if name in _COMPOSITES:
            with _inner_calls(_COMPOSITES[name], kernel):
                return func(*args, **kwargs)
        return func(*args, **kwargs)

    kernel.autocast = autocast  # type: ignore[attr-defined]
    kernel.active = active  # type: ignore[attr-defined]
    kernel.autocast_to = lambda low_dtype: _autocast(low_dtype, options.device)  # type: ignore[attr-defined]
    return kernel


@contextmanager
def autocast_blocks(kernel: Any, device: str) -> Iterator[None]:
    """``torch.autocast`` blocks the step enters (a user's own step) act in the pass as on ``device``: while one
    for the device's type is open and enabled, the kernel hook casts as ``--amp`` does, to its dtype (an
    ``enabled=False`` block stops the casts; a block for another device type changes nothing here), and its cast
    weights go when it closes, as torch's cache does. torch's own autocast does not act on meta tensors, and
    refuses a CUDA block on a machine without CUDA; the block's arguments are read as given. A GradScaler's
    scaling and checks are not counted (as with ``--amp``), and its warning that there is no CUDA is not shown."""
    import sys
    import warnings

    import torch

    block = torch.amp.autocast_mode.autocast
    initial, enter, leave = block.__init__, block.__enter__, block.__exit__
    device_type = "cuda" if device.startswith("cuda") else "cpu"

    def init(self: Any, device_type: str, dtype: Any = None, enabled: bool = True, cache_enabled: Any = None
             ) -> None:
        # torch.utils.checkpoint's own block puts back, for a recomputation, the autocast state torch had in the
        # region's forward; the pass does that itself (CheckpointTracer), so the block changes nothing here
        restoring = sys._getframe(1).f_globals.get("__name__") == "torch.utils.checkpoint"
        self._inspect_block = (device_type if not restoring else None, dtype, enabled)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            initial(self, device_type, dtype, enabled, cache_enabled)

    def entered(self: Any) -> Any:
        given, dtype, enabled = getattr(self, "_inspect_block", (self.device, self.fast_dtype, self._enabled))
        if given != device_type:  # another device's block, or checkpoint's
            kernel.active.append(kernel.active[-1])
        elif not enabled:
            kernel.active.append(None)
        else:
            low = dtype if dtype is not None else torch.get_autocast_dtype(given)
            kernel.active.append(kernel.autocast_to(str(low).removeprefix("torch.")))
        return self

    def left(self: Any, *exception: Any) -> bool:
        kernel.active.pop()
        return False

    block.__init__, block.__enter__, block.__exit__ = init, entered, left  # type: ignore[method-assign]
    try:
        with warnings.catch_warnings():  # a GradScaler for the GPU planned for, made where there is none
            warnings.filterwarnings("ignore", message=".*GradScaler is enabled, but CUDA is not available")
            yield
    finally:
        block.__init__, block.__enter__, block.__exit__ = initial, enter, leave  # type: ignore[method-assign]


@contextmanager
def _inner_calls(names: tuple[str, ...], kernel: Any) -> Iterator[None]:
    """Route torch.nn.functional's own calls of ``names`` through ``kernel`` for the duration."""
    import torch.nn.functional as functional

    originals = {name: getattr(functional, name) for name in names}

    def routed(name: str, original: Any) -> Any:
        return lambda *args, **kwargs: kernel(name, original, args, kwargs)

    try:
        for name, original in originals.items():
            setattr(functional, name, routed(name, original))
        yield
    finally:
        for name, original in originals.items():
            setattr(functional, name, original)


def _sdpa_kernel(device: str) -> Any:
    """Scaled dot-product attention as it would run on ``device``: torch's own backend choice, asked on stand-ins
    of the right shapes there (one row of memory each); on meta tensors torch would always take the math path,
    which saves the attention matrix, where the CPU's fused kernel saves its output and log-sum-exp."""

    def kernel(name: str, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        import torch

        if name != "scaled_dot_product_attention" or not device.startswith("cpu"):
            return NotImplemented
        names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
        bound = dict(zip(names, args, strict=False)) | kwargs
        query, key, value = bound["query"], bound["key"], bound["value"]
        mask = bound.get("attn_mask")
        if not all(isinstance(t, torch.Tensor) and t.is_meta for t in (query, key, value)):
            return NotImplemented

        def stand_in(tensor: Any) -> Any:
            if tensor is None:
                return None
            row = torch.empty(tensor.shape[-1], dtype=tensor.dtype, device=device)
            strides = (0,) * (tensor.dim() - 1) + (1,)
            return row.as_strided(tuple(tensor.shape), strides).requires_grad_(tensor.requires_grad)

        choice = torch._fused_sdp_choice(stand_in(query), stand_in(key), stand_in(value), stand_in(mask),
                                         bound.get("dropout_p", 0.0), bound.get("is_causal", False),
                                         scale=bound.get("scale"), enable_gqa=bound.get("enable_gqa", False))
        if choice != _SDPA_FLASH:
            return NotImplemented  # the math path: meta runs it as the device would
        output, _logsumexp = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            query, key, value, bound.get("dropout_p", 0.0), bound.get("is_causal", False), attn_mask=mask,
            scale=bound.get("scale"))
        return output

    return kernel


# The interpolation backward kernels (aten/src/ATen/native/cpu/UpSampleMoreKernel.cpp, UpSampleKernel.cpp) read
# ``grad_output.contiguous(format)`` and write ``grad_input.contiguous(format)``: a gradient not already laid out in
# the kernel's format is copied into a temporary of its own size, freed when the kernel returns. The format is
# channels-last where the kernel has such a path and the gradient is channels-last contiguous (nearest, bilinear,
# trilinear), else row-major (linear 1-D, bicubic, the antialiased ones). The gradient of a summed output is a
# broadcast scalar (stride 0), so the copy is as large as the interpolation's output. CUDA's kernels do the same
# (UpSampleBilinear2d.cu, UpSampleNearest2d.cu, UpSampleBicubic2d.cu: ``grad_output_.contiguous()``, and a
# ``grad_input_c`` when the gradient is not contiguous). In 16-bit dtypes the CPU kernels also accumulate in float32
# in a buffer per task of ``at::parallel_for``: one input plane per task on the row-major path, a whole input image
# (channels x spatial) per task on the channels-last one; CUDA accumulates with atomics, without a buffer. The
# tasks' buffers are counted as live together, an upper bound: on a busy machine a thread may finish its task
# before another starts (tests/oracle_interpolation.py measures between one and all of them).
_INTERPOLATION_BACKWARD = frozenset({
    "upsample_nearest1d_backward", "_upsample_nearest_exact1d_backward", "upsample_linear1d_backward",
    "upsample_nearest2d_backward", "_upsample_nearest_exact2d_backward", "upsample_bilinear2d_backward",
    "upsample_bicubic2d_backward", "_upsample_bilinear2d_aa_backward", "_upsample_bicubic2d_aa_backward",
    "upsample_nearest3d_backward", "_upsample_nearest_exact3d_backward", "upsample_trilinear3d_backward",
})
_CHANNELS_LAST_PATH = frozenset({
    "upsample_nearest2d_backward", "_upsample_nearest_exact2d_backward", "upsample_bilinear2d_backward",
    "upsample_nearest3d_backward", "_upsample_nearest_exact3d_backward", "upsample_trilinear3d_backward",
})
# The kernels whose 16-bit accumulation buffer was read in the source (UpSampleMoreKernel.cpp)
_FLOAT32_BUFFER = _CHANNELS_LAST_PATH | {"upsample_nearest1d_backward", "_upsample_nearest_exact1d_backward",
                                         "upsample_linear1d_backward"}
_GRAIN_SIZE = 32768  # at::internal::GRAIN_SIZE


def _tasks(work: int, grain: int, threads: int) -> int:
    """How many tasks ``at::parallel_for(0, work, grain)`` runs on ``threads`` threads (one when it runs inline)."""
    if threads <= 1 or work <= max(grain, 1):
        return 1
    return min(threads, -(-work // max(grain, 1)))


def _interpolation_backward(name: str, grad_output: Any, grad_input: Any, threads: int, cpu: bool) -> list[int]:
    """The bytes of each temporary an interpolation backward kernel allocates (see above)."""
    import torch

    rank = grad_output.dim()
    channels_last = {4: torch.channels_last, 5: torch.channels_last_3d}.get(rank)
    layout = (channels_last if channels_last is not None and name in _CHANNELS_LAST_PATH
              and grad_output.is_contiguous(memory_format=channels_last) else torch.contiguous_format)
    temporaries = [tensor.numel() * tensor.element_size() for tensor in (grad_output, grad_input)
                   if not tensor.is_contiguous(memory_format=layout)]
    if cpu and name in _FLOAT32_BUFFER and grad_output.dtype in (torch.bfloat16, torch.float16):
        batch, planes, spatial = grad_input.shape[0], grad_input.shape[1], math.prod(grad_input.shape[2:])
        if layout == torch.contiguous_format:
            grain = _GRAIN_SIZE // max(math.prod(grad_output.shape[2:]), 1)
            temporaries += [spatial * 4] * _tasks(batch * planes, grain, threads)
        else:
            temporaries += [planes * spatial * 4] * _tasks(batch, 0, threads)
    return temporaries


# The antialiased forward kernels on the CPU (UpSampleKernel.cpp, separable_upsample_generic_Nd_kernel_impl) resize
# one axis at a time, the last (contiguous) one first, each pass but the last into a new tensor of the input's dtype:
# for a 2-D resize of both axes, one temporary of (N, C, H_in, W_out). CUDA's antialiased kernel resizes both axes
# in one pass through shared memory (UpSampleBilinear2d.cu, upsample_gen2d_aa_out_frame): no temporary.
_SEPARABLE = frozenset({"_upsample_bilinear2d_aa", "_upsample_bicubic2d_aa"})


def _separable_passes(input: Any, output: Any) -> list[int]:
    """The bytes of each intermediate of a separable resize of ``input`` into ``output``, in the order allocated
    (each freed when the next pass has written its own)."""
    shape = list(input.shape)
    resized = [axis for axis in range(input.dim() - 1, 1, -1) if input.shape[axis] != output.shape[axis]]
    temporaries = []
    for axis in resized[:-1]:
        shape[axis] = output.shape[axis]
        temporaries.append(math.prod(shape) * input.element_size())
    return temporaries


# The forward kernels on the CPU (UpSampleKernel.cpp) of nearest and bilinear in 2-D, nearest and trilinear in 3-D
# take a vectorized channels-last path when the input is channels-last with more than 3 channels, or (2-D) when the
# output is small (height + width <= 128), or (bilinear) on one thread with 3 channels; that path reads
# ``input.contiguous(channels_last)`` and writes ``output.contiguous(channels_last)``, copied back to a row-major
# output: a row-major input and output each get a channels-last copy. CUDA's forward kernels read the input as it
# is laid out (UpSampleBilinear2d.cu): no copy.
_VECTORIZED_FORWARD = frozenset({"upsample_nearest2d", "_upsample_nearest_exact2d", "upsample_bilinear2d",
                                 "upsample_nearest3d", "_upsample_nearest_exact3d", "upsample_trilinear3d"})


def _channels_last_forward(name: str, input: Any, output: Any, threads: int) -> list[int]:
    """The bytes of the copies the CPU's vectorized channels-last forward takes (none on the generic path)."""
    import torch

    if input.dim() not in (4, 5) or not input.is_floating_point():
        return []
    channels_last = torch.channels_last if input.dim() == 4 else torch.channels_last_3d
    vectorized = input.is_contiguous(memory_format=channels_last) and input.shape[1] > 3
    if input.dim() == 4:
        vectorized = (vectorized or output.shape[-2] + output.shape[-1] <= 128
                      or (name == "upsample_bilinear2d" and threads == 1 and input.shape[1] == 3))
    if not vectorized:
        return []
    return [tensor.numel() * tensor.element_size() for tensor in (input, output)
            if not tensor.is_contiguous(memory_format=channels_last)]


def kernel_temporaries(device: str) -> Callable[[Any, tuple[Any, ...], Any], list[int]]:
    """For the step's dispatch mode: the bytes of the temporaries the ``device``'s kernel of an aten operation
    allocates and frees inside itself, given its arguments and result (none for most operations)."""
    import torch

    cpu = device.startswith("cpu")
    threads = torch.get_num_threads()
    names: dict[Any, str] = {}  # operator -> its name (the mode asks for every operation the step runs)

    def temporaries(func: Any, args: tuple[Any, ...], result: Any) -> list[int]:
        name = names.get(func)
        if name is None:
            name = names[func] = func._schema.name.split("::")[-1]
        if not isinstance(result, torch.Tensor) or not args or not isinstance(args[0], torch.Tensor):
            return []
        if name in _INTERPOLATION_BACKWARD:
            return _interpolation_backward(name, args[0], result, threads, cpu)
        if name in _SEPARABLE and cpu:
            return _separable_passes(args[0], result)
        if name in _VECTORIZED_FORWARD and cpu:
            return _channels_last_forward(name, args[0], result, threads)
        return []

    return temporaries


__all__ = ["AUTOCAST_FLOAT32", "AUTOCAST_LOW", "autocast_blocks", "device_kernels", "kernel_temporaries"]
