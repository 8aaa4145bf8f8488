"""Oracles that use torch alone (never resnet-inspect): real shapes, FlopCounterMode MACs, input-gradient fields."""

from __future__ import annotations

import copy
import gc
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

MAX_TO_AVERAGE: dict[type[nn.Module], Callable[[nn.Module], nn.Module]] = {
    nn.MaxPool1d: lambda pool: nn.AvgPool1d(pool.kernel_size, pool.stride, pool.padding, pool.ceil_mode),
    nn.MaxPool2d: lambda pool: nn.AvgPool2d(pool.kernel_size, pool.stride, pool.padding, pool.ceil_mode),
    nn.MaxPool3d: lambda pool: nn.AvgPool3d(pool.kernel_size, pool.stride, pool.padding, pool.ceil_mode),
    nn.AdaptiveMaxPool1d: lambda pool: nn.AdaptiveAvgPool1d(pool.output_size),
    nn.AdaptiveMaxPool2d: lambda pool: nn.AdaptiveAvgPool2d(pool.output_size),
    nn.AdaptiveMaxPool3d: lambda pool: nn.AdaptiveAvgPool3d(pool.output_size),
}


def leaf_output_shapes(model: nn.Module, example: torch.Tensor) -> dict[str, list[list[int]]]:
    """Every leaf module's output shape, one entry per call, from forward hooks on a real CPU pass."""
    shapes: dict[str, list[list[int]]] = defaultdict(list)

    def record(name: str) -> Callable[..., None]:
        def hook(_module: nn.Module, _inputs: object, output: object) -> None:
            tensor = output[0] if isinstance(output, tuple) else output
            shapes[name].append(list(tensor.shape))
        return hook

    handles = [module.register_forward_hook(record(name)) for name, module in model.named_modules()
               if name and not list(module.children())]
    try:
        with torch.no_grad():
            model.eval()(example)
    finally:
        for handle in handles:
            handle.remove()
    return dict(shapes)


def output_shape(model: nn.Module, example: torch.Tensor) -> list[int]:
    with torch.no_grad():
        return list(model.eval()(example).shape)


def flop_counter_macs(model: nn.Module, example: torch.Tensor) -> int:
    """FlopCounterMode's total FLOPs / 2 on a real forward pass.

    Autograd stays on so that nn.MultiheadAttention takes its ordinary path (the inference fast path is one fused
    operator FlopCounterMode cannot see into), and attention runs on the math backend, which torch decomposes into
    the bmm calls FlopCounterMode counts (it has no formula for CPU's fused attention kernel).
    """
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model.eval()(example)
    flops = counter.get_total_flops()
    assert flops % 2 == 0
    return flops // 2


@dataclass(frozen=True)
class Support:
    """The input positions (first, last, per spatial axis) with a nonzero gradient, and the input's extent."""

    first: tuple[int, ...]
    last: tuple[int, ...]
    input_size: tuple[int, ...]

    @property
    def size(self) -> tuple[int, ...]:
        return tuple(last - first + 1 for first, last in zip(self.first, self.last, strict=True))

    @property
    def touches_border(self) -> bool:
        return any(first == 0 or last == extent - 1
                   for first, last, extent in zip(self.first, self.last, self.input_size, strict=True))


def oracle_copy(model: nn.Module, seed: int = 0, low: float = 0.1, high: float = 1.0) -> nn.Module:
    """A float64 copy in eval mode, every parameter uniform in [low, high], max pools replaced by average pools of
    the same geometry (an argmax would hide the taps that lost)."""
    oracle = copy.deepcopy(model).double().eval()
    for parent in list(oracle.modules()):
        for child_name, child in parent.named_children():
            replace = MAX_TO_AVERAGE.get(type(child))
            if replace is not None:
                setattr(parent, child_name, replace(child))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in oracle.parameters():
            parameter.copy_(torch.rand(parameter.shape, generator=generator, dtype=torch.float64) * (high - low) + low)
    return oracle


def gradient_support(model: nn.Module, input_shape: tuple[int, ...], unit: tuple[int, ...],
                     spatial_axes: tuple[int, ...], seed: int = 0, low: float = 0.1, high: float = 1.0) -> Support:
    """Where the gradient of one unit of ``model.forward_features`` reaches the input.

    ``unit`` indexes the output's ``spatial_axes`` (for NCHW (2, 3), for NHWC (1, 2), for tokens (1,)); the other
    non-batch axes are mixed with random positive weights, so no channel cancels another (a plain sum of a
    LayerNorm output has zero gradient). Positive parameters keep every ReLU open; a sigmoid gate saturates with
    them (its gradient underflows to zero), so measuring through a gate needs a small ``high``.
    """
    oracle = oracle_copy(model, seed, low, high)
    generator = torch.Generator().manual_seed(seed + 1)
    example = (torch.rand(input_shape, generator=generator, dtype=torch.float64) + 0.5).requires_grad_(True)
    features = oracle.forward_features(example)
    index: list[int | slice] = [0] + [slice(None)] * (features.dim() - 1)
    for axis, position in zip(spatial_axes, unit, strict=True):
        index[axis] = position
    selected = features[tuple(index)]
    mix = torch.rand(selected.shape, generator=generator, dtype=torch.float64) + 0.5
    (gradient,) = torch.autograd.grad((selected * mix).sum(), example)
    touched = gradient[0].abs().sum(0)  # drop the batch and channel axes
    firsts, lasts = [], []
    for axis in range(touched.dim()):
        others = tuple(other for other in range(touched.dim()) if other != axis)
        profile = touched.sum(others) if others else touched
        nonzero = torch.nonzero(profile).flatten().tolist()
        assert nonzero, "the unit does not depend on the input"
        assert nonzero == list(range(nonzero[0], nonzero[-1] + 1)), f"support on axis {axis} has holes: {nonzero}"
        firsts.append(nonzero[0])
        lasts.append(nonzero[-1])
    return Support(tuple(firsts), tuple(lasts), tuple(input_shape[2:]))


@dataclass(frozen=True)
class SavedForBackward:
    """What autograd keeps for the backward after a real train-mode forward (bytes, each storage once)."""

    activation_bytes: int  # storages the forward made
    weight_bytes: int  # parameters and buffers that are saved too
    input_bytes: int  # the model's input, when saved
    storages: int = 0  # distinct storages saved, weights and input included


def saved_for_backward(model: nn.Module, example: torch.Tensor, amp: torch.dtype | None = None) -> SavedForBackward:
    """Count the storages ``saved_tensors_hooks`` sees in a real CPU train-mode forward, by their data pointer (the
    storages are held until the count is done, so no address is reused); the default attention backend."""
    held: dict[int, torch.UntypedStorage] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        held.setdefault(storage.data_ptr(), storage)
        return tensor

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        if amp is not None:
            with torch.autocast("cpu", dtype=amp):
                output = model(example)
        else:
            output = model(example)
    weights = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
    inputs = {example.untyped_storage().data_ptr()}
    del output

    def total(keys: set[int]) -> int:
        return sum(storage.nbytes() for key, storage in held.items() if key in keys)

    others = set(held) - weights - inputs
    return SavedForBackward(total(others), total(weights & set(held)), total(inputs & set(held)), len(held))


def retained_for_backward(model: nn.Module, example: torch.Tensor,
                          loss: Callable[[Any], torch.Tensor] | None = None, targets: tuple[torch.Tensor, ...] = ()
                          ) -> SavedForBackward:
    """What a real CPU train-mode forward still holds for the backward when the backward starts: the storages
    ``saved_tensors_hooks`` saw, less those whose graph died with its outputs (a detached teacher's). The pack hook
    keeps each saved tensor's data without its history, as autograd itself does, and a weak-reference finaliser on
    each storage says whether anything still holds it; the output and the loss are held, as a training loop holds
    them. ``targets``, the loss's targets, are held with the input and counted as input."""
    import weakref

    alive: dict[int, int] = {}  # data pointer -> bytes, while a saved storage lives

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in alive:
            alive[storage.data_ptr()] = storage.nbytes()
            weakref.finalize(storage, alive.pop, storage.data_ptr(), None)
        return tensor.detach()

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        output = model(example)
        held = loss(output) if loss is not None else None
    gc.collect()
    weights = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
    inputs = {tensor.untyped_storage().data_ptr() for tensor in (example, *targets)}
    result = SavedForBackward(sum(size for key, size in alive.items() if key not in weights | inputs),
                              sum(size for key, size in alive.items() if key in weights),
                              sum(size for key, size in alive.items() if key in inputs), len(alive))
    del output, held
    return result


def flop_counter_backward_macs(model: nn.Module, example: torch.Tensor) -> tuple[int, int]:
    """(forward MACs, backward MACs) that FlopCounterMode counts on a real CPU train-mode forward and backward of
    the output's sum, attention on the math backend (which torch decomposes into the bmm calls it counts)."""
    model.train()
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        output = model(example)
        forward = counter.get_total_flops()
        outputs = output if isinstance(output, (tuple, list)) else (output,)
        sum(item.sum() for item in outputs if item.requires_grad).backward()
        total = counter.get_total_flops()
    assert forward % 2 == 0 and total % 2 == 0
    return forward // 2, (total - forward) // 2
