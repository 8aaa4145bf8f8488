"""The training pass: one training step (forward, backward, optimizer step) of a structural copy on the meta device.

The forward runs in train mode with autograd on, instrumented as the ordinary capture is (layers, dataflow, and
now whether each operation's inputs and weights take part in the backward, read from the tensors themselves).
What autograd keeps for the backward is seen through ``torch.autograd.graph.saved_tensors_hooks`` (each storage
once). The whole step runs under a dispatch mode that follows every storage from its allocation to its release (a
weak-reference finaliser fires when nothing holds it any more), so lifetimes are torch's own, not a model of them.
The backward and torch's own optimizer run on meta tensors too; nothing is allocated.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from resnet_inspect.capture.checkpointing import CheckpointTracer
from resnet_inspect.capture.trace import (
    ModelInputs,
    assemble_capture,
    instrumented_forward,
    new_recorder,
    structural_copy,
    tensors_in,
)
from resnet_inspect.errors import BadInputError
from resnet_inspect.records import MemoryEvent, TrainingCapture

if TYPE_CHECKING:
    from torch import nn

OPTIMIZERS = ("none", "sgd", "momentum", "adam", "adamw")
AMP_DTYPES = {"bf16": "bfloat16", "fp16": "float16"}
DTYPES = ("float32", "bfloat16", "float16")
FORWARD, BACKWARD, OPTIMIZER = "forward", "backward", "optimizer"
ACTIVATION, GRADIENT, STATE = "activation", "gradient", "state"
# torch.nn.attention.SDPBackend values that torch._fused_sdp_choice returns
_SDPA_MATH, _SDPA_FLASH = 0, 1


@dataclass(frozen=True)
class TrainOptions:
    """How the step is run: the optimizer, the precision, and the device whose kernels are modelled."""

    optimizer: str = "adamw"
    dtype: str | None = None  # convert the model and input to it (None: the model's own)
    amp: str | None = None  # "bf16" or "fp16": autocast, master weights and optimizer state in float32
    device: str = "cpu"  # which attention kernel and optimizer implementation torch would pick there

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise BadInputError(f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
        if self.dtype is not None and self.dtype not in DTYPES:
            raise BadInputError(f"unknown dtype {self.dtype!r}; choose one of {', '.join(DTYPES)}")
        if self.amp is not None and self.amp not in AMP_DTYPES:
            raise BadInputError(f"unknown --amp {self.amp!r}; choose one of {', '.join(AMP_DTYPES)}")
        if self.amp is not None and self.dtype not in (None, "float32"):
            raise BadInputError(f"--amp {self.amp} keeps float32 master weights: it cannot be combined with --dtype "
                                f"{self.dtype} (use one or the other)")


def optimizer_step(name: str, parameters: list[Any], state: dict[int, list[Any]], foreach: bool | None = None
                   ) -> None:
    """One step of torch.optim's ``name`` over the ``parameters`` that have gradients, through torch's functional
    form of the algorithm (constructing an Optimizer would import torch._dynamo). ``state`` (id of a parameter ->
    its state tensors) is filled on the first step as torch's optimizers fill theirs: sgd none, momentum the
    momentum buffer, adam and adamw both moments (and the step count, a CPU scalar)."""
    import torch
    from torch.optim.adam import adam
    from torch.optim.sgd import sgd

    stepped = [p for p in parameters if p.grad is not None]
    if name == "none" or not stepped:
        return
    grads = [p.grad for p in stepped]
    if name in ("sgd", "momentum"):
        buffers = [state.get(id(p), [None])[0] for p in stepped]
        sgd(stepped, grads, buffers, foreach=foreach, weight_decay=0.0, momentum=0.9 if name == "momentum" else 0.0,
            lr=1e-3, dampening=0.0, nesterov=False, maximize=False)
        for parameter, buffer in zip(stepped, buffers, strict=True):
            if buffer is not None:
                state[id(parameter)] = [buffer]
        return
    for parameter in stepped:  # as torch.optim.Adam's _init_group: two like the parameter, a CPU step count
        if id(parameter) not in state:  # (their values do not matter on meta: no zeros_like, which imports sympy)
            state[id(parameter)] = [_like(parameter), _like(parameter), torch.tensor(0.0, dtype=torch.float32)]
    moments = [state[id(p)] for p in stepped]
    adam(stepped, grads, [m[0] for m in moments], [m[1] for m in moments], [], [m[2] for m in moments],
         foreach=foreach, decoupled_weight_decay=name == "adamw", amsgrad=False, beta1=0.9, beta2=0.999, lr=1e-3,
         weight_decay=1e-2 if name == "adamw" else 0.0, eps=1e-8, maximize=False)


class _Tracker:
    """Every storage the step allocates, from its allocation to its release, in order."""

    def __init__(self, resident: set[int]) -> None:
        self.resident = resident  # id() of storages held before the step: weights, buffers, the input
        self.live: dict[int, tuple[int, int]] = {}  # id(storage) -> (allocation number, bytes)
        self.events: list[tuple[int, int, str, str]] = []  # (allocation number, +/- bytes, phase, layer)
        self.phase, self.layer = FORWARD, ""
        self.follow: Any = None  # during the forward: a function naming the innermost layer running
        self.count = 0

    def track(self, tensor: Any) -> None:
        if self.follow is not None:
            self.layer = self.follow()
        storage = tensor.untyped_storage()
        key = id(storage)
        if key in self.live or key in self.resident:
            return
        size = storage.nbytes()
        self.count += 1
        self.live[key] = (self.count, size)
        self.events.append((self.count, size, self.phase, self.layer))
        weakref.finalize(storage, self._free, key, self.count, size)

    def _free(self, key: int, number: int, size: int) -> None:
        if self.live.get(key, (None,))[0] == number:
            del self.live[key]
        self.events.append((number, -size, self.phase, self.layer))

    def number_of(self, tensor: Any) -> int | None:
        entry = self.live.get(id(tensor.untyped_storage()))
        return entry[0] if entry else None


def _like(tensor: Any, dtype: Any = None) -> Any:
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
        return (_like(input), torch.empty(size, dtype=statistics, device="meta"),
                torch.empty(size, dtype=statistics, device="meta"))

    return rule


def _batch_norm_backward(grad_out: Any, input: Any, weight: Any, *args: Any) -> Any:
    """native_batch_norm_backward: the input's gradient like the input, the weight's and bias's like the weight."""
    mask = args[-1]
    return (_like(input) if mask[0] else None, _like(weight) if mask[1] and weight is not None else None,
            _like(weight) if mask[2] and weight is not None else None)


_NOT_SAME_DTYPE = frozenset({"eq", "ne", "lt", "le", "gt", "ge", "logical_and", "logical_or", "logical_xor",
                             "logical_not", "isnan", "isinf", "isfinite", "isposinf", "isneginf", "signbit"})


_LAYOUT_KEYWORDS = frozenset({"out", "dtype", "layout", "device"})  # keywords that decide the result's own kind


def _pointwise(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
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
        return _like(first)
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
    return (_like(input) if mask[0] else None, _like(weight) if mask[1] else None,
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


def _fast_meta(device: str) -> dict[Any, Any]:
    """aten operations whose meta kernels are Python decompositions that import torch._dynamo on first use (seconds
    of start-up): their outputs' shapes, strides and dtypes as those decompositions give them (a test compares)."""
    import torch

    aten = torch.ops.aten
    return {aten.native_batch_norm.default: _batch_norm(device),
            aten.native_batch_norm_backward.default: _batch_norm_backward,
            aten.threshold_backward.default: lambda grad, input, threshold: _like(grad),
            aten.mean.dim: _mean, aten.sum.dim_IntList: _mean, aten.sum.default: _mean, aten.addmm.default: _addmm,
            aten.convolution.default: _convolution, aten.convolution_backward.default: _convolution_backward,
            aten.mm.default: lambda first, second: _addmm(first[0], first, second),
            aten.max_pool2d_with_indices.default: _max_pool2d,
            aten.ones_like.default: lambda input, **options: _like(input) if input.is_contiguous() and not any(
                options.get(key) is not None for key in ("dtype", "layout", "device")) else NotImplemented,
            aten.max_pool2d_with_indices_backward.default:
                lambda grad, input, *args: _like(input) if input.is_contiguous() else NotImplemented}


def _tracking_mode(tracker: _Tracker, fast: dict[Any, Any] | None = None) -> Any:
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    class StorageMode(TorchDispatchMode):
        """Sees every aten operation's outputs: a storage not seen before is an allocation."""

        @classmethod
        def _should_skip_dynamo(cls) -> bool:  # nothing is compiled in here: no need to import torch._dynamo
            return False

        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            import torch

            kwargs = kwargs or {}
            rule = (fast or {}).get(func)
            result = NotImplemented
            if rule is not None and all(not isinstance(a, torch.Tensor) or a.is_meta for a in args):
                result = rule(*args, **kwargs)
            elif fast is not None and torch.Tag.pointwise in func.tags:
                result = _pointwise(func, tuple(args), kwargs)
            if result is NotImplemented:
                result = func(*args, **kwargs)
            for leaf in tree_leaves(result):
                if isinstance(leaf, torch.Tensor):
                    tracker.track(leaf)
            return result

    return StorageMode()


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


def _autocast(amp: str | None, device: str) -> Any:
    """Cast the floating arguments of the operations in autocast's lists, as ``torch.autocast(device)`` would."""
    import torch

    if amp is None:
        return None
    low = getattr(torch, AMP_DTYPES[amp])
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
    return arguments


# Functions of torch.nn.functional that call others of the module by their global names: a function mode cannot
# see those calls, so while one runs, the names it calls are bound to the kernel hook (and put back after).
_COMPOSITES = {"multi_head_attention_forward": ("scaled_dot_product_attention", "linear")}


def _kernels(options: TrainOptions) -> Any:
    """The capture's kernel hook: autocast's casts, then attention as the device would run it (inside
    ``F.multi_head_attention_forward`` too)."""
    attention = _sdpa_kernel(options.device)
    autocast = _autocast(options.amp, options.device)

    def kernel(name: str, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
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
    return kernel


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


@contextmanager
def _backward_labels(working: Any, tracker: _Tracker) -> Iterator[None]:
    """During the backward, ``tracker.layer`` names the innermost layer whose backward is running: each module's
    output node, when autograd reaches it, sets it (the first module to claim a node is the innermost)."""
    import torch

    claimed: dict[int, Any] = {}

    def post_hook(name: str) -> Any:
        def hook(_module: Any, _args: Any, output: Any) -> None:
            if tracker.phase != FORWARD:  # a checkpointed region run again: holding its nodes would keep its tensors
                return
            for tensor in tensors_in(output):
                node = tensor.grad_fn if isinstance(tensor, torch.Tensor) else None
                if node is not None and id(node) not in claimed:
                    claimed[id(node)] = node
                    node.register_prehook(lambda _grads, label=name: setattr(tracker, "layer", label))
        return hook

    handles = [module.register_forward_hook(post_hook(name)) for name, module in working.named_modules() if name]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        claimed.clear()


def _storage_ids(tensors: list[Any]) -> set[int]:
    return {id(tensor.untyped_storage()) for tensor in tensors}


def _module_grad_bytes(module: Any) -> int:
    unique = {id(p): p for p in module.parameters() if p.requires_grad}
    return sum(p.numel() * p.element_size() for p in unique.values())


def run_training_pass(model: nn.Module, inputs: ModelInputs, options: TrainOptions, model_name: str = ""
                      ) -> TrainingCapture:
    """One training step of a meta copy of ``model`` on ``inputs``: what the forward saves, the requires-grad
    flags of every operation, and every allocation and release of the step (see the module's docstring)."""
    import torch

    working = structural_copy(model, "meta")
    dtype = options.dtype
    if dtype is not None:
        working = working.to(getattr(torch, dtype))
    placed = inputs.on("meta")
    if dtype is not None:
        placed = ModelInputs(tuple(t.to(getattr(torch, dtype)) if isinstance(t, torch.Tensor) and
                                   t.is_floating_point() else t for t in placed.args),
                             {k: t.to(getattr(torch, dtype)) if isinstance(t, torch.Tensor) and t.is_floating_point()
                              else t for k, t in placed.kwargs.items()})
    recorder = new_recorder(working, train=True)
    recorder.kernel = kernels = _kernels(options)
    parameters = list({id(p): p for p in working.parameters()}.values())
    buffers = list(working.buffers())
    given = tensors_in(list(placed.args)) + tensors_in(placed.kwargs)
    weight_ids, input_ids = _storage_ids([*parameters, *buffers]), _storage_ids(given)
    tracker = _Tracker(weight_ids | input_ids)
    checkpoints = CheckpointTracer(working, recorder, lambda: tracker.count, tracker.number_of)
    trainable = [p for p in parameters if p.requires_grad]
    optimizer_state: dict[int, list[Any]] = {}
    saved: dict[int, tuple[int, int, int | None]] = {}  # id(storage) -> (allocation number, bytes, layer index)
    saved_weights: dict[int, int] = {}
    saved_inputs: dict[int, int] = {}

    def pack(tensor: Any) -> Any:
        storage = tensor.untyped_storage()
        key = id(storage)
        if key in weight_ids:
            saved_weights[key] = storage.nbytes()
        elif key in input_ids:
            saved_inputs[key] = storage.nbytes()
        elif key not in saved:
            number = tracker.number_of(tensor)
            layer = recorder.stack[-1].index if recorder.stack else None
            saved[key] = (number or 0, storage.nbytes(), layer)
        return tensor

    backward_error: str | None = None
    amp = options.amp
    with _tracking_mode(tracker, _fast_meta(options.device)), _backward_labels(working, tracker), \
            checkpoints.patched():
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), \
                instrumented_forward(working, recorder, placed):
            tracker.follow = lambda: recorder.stack[-1].name if recorder.stack else ""
            output = working(*placed.args, **placed.kwargs)
        tracker.follow = None
        if kernels.autocast is not None:  # autocast lets its cast weights go when the forward ends
            kernels.autocast.cache.clear()
        capture = assemble_capture(working, recorder, inputs, placed, output, model_name, "meta")
        recorder.current_call = ((), {})
        kept = {key: (number, size, layer) for key, (number, size, layer) in saved.items()
                if number and tracker.live.get(key, (None,))[0] == number}
        losses = [t.sum() for t in tensors_in(output) if t.requires_grad and t.is_floating_point()]
        del output
        tracker.phase, tracker.layer = BACKWARD, "the loss"
        checkpoints.backward = True
        gradient_numbers: set[int] = set()
        if losses:
            try:
                torch.autograd.backward(losses)
            except Exception as exc:  # the model's own backward may raise anything
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                backward_error = (f"the backward pass cannot run on the meta device (at {tracker.layer}: {reason}); "
                                  "its memory is not estimated")
            del losses
        gradient_numbers = {n for n in (tracker.number_of(p.grad) for p in trainable if p.grad is not None) if n}
        state_numbers: set[int] = set()
        if backward_error is None:
            tracker.phase, tracker.layer = OPTIMIZER, "the optimizer step"
            with torch.no_grad():
                optimizer_step(options.optimizer, trainable, optimizer_state,
                               foreach=True if options.device.startswith("cuda") else None)
            state_numbers = {n for n in (tracker.number_of(t) for entry in optimizer_state.values() for t in entry)
                             if n}
        for parameter in trainable:  # zero_grad(set_to_none=True)
            parameter.grad = None
    kinds = {number: GRADIENT for number in gradient_numbers} | {number: STATE for number in state_numbers}
    events = tuple(MemoryEvent(size, kinds.get(number, ACTIVATION), phase, layer)
                   for number, size, phase, layer in tracker.events)
    state_bytes = sum(event.bytes for event in events if event.kind == STATE and event.bytes > 0)
    gradient_bytes = sum(event.bytes for event in events if event.kind == GRADIENT and event.bytes > 0)
    if backward_error is not None:  # what the backward would have made: a gradient per trainable parameter
        gradient_bytes = sum(p.numel() * p.element_size() for p in trainable)
    layer_saved: dict[int, int] = {}
    for _number, size, layer in kept.values():
        if layer is not None:
            layer_saved[layer] = layer_saved.get(layer, 0) + size
    names = {id(module): module for name, module in working.named_modules() if name}
    modules = {call.index: names.get(id(call.module)) for call in recorder.calls}
    leaves = [layer for layer in capture.layers if layer.is_leaf and layer.params]
    largest = max(leaves, key=lambda layer: layer.params, default=None)
    largest_bytes = 0 if largest is None else sum(
        p.numel() * p.element_size() for p in {id(p): p for p in modules[largest.index].parameters()}.values())
    return TrainingCapture(
        capture=checkpoints.differentiated(capture), recomputed_nodes=checkpoints.recomputed_nodes(),
        optimizer=options.optimizer, amp=amp, device=options.device,
        dtype=str(parameters[0].dtype).removeprefix("torch.") if parameters else capture.dtype,
        layer_saved_bytes=layer_saved,
        layer_grad_bytes={index: _module_grad_bytes(module) for index, module in modules.items() if module is not None},
        saved_bytes=sum(size for _, size, _ in kept.values()), saved_tensors=len(kept) + len(saved_weights)
        + len(saved_inputs), saved_weight_bytes=sum(saved_weights.values()),
        saved_input_bytes=sum(saved_inputs.values()),
        weight_bytes=sum(p.numel() * p.element_size() for p in parameters),
        buffer_bytes=sum(b.numel() * b.element_size() for b in buffers),
        input_bytes=sum(t.untyped_storage().nbytes() for t in {id(t): t for t in given}.values()),
        gradient_bytes=gradient_bytes, state_bytes=state_bytes, largest_layer=largest.name if largest else "",
        largest_layer_bytes=largest_bytes, events=events, backward_error=backward_error,
    )


__all__ = ["AMP_DTYPES", "DTYPES", "OPTIMIZERS", "TrainOptions", "optimizer_step", "run_training_pass"]
