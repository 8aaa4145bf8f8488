"""Tensors in nested structures, and structural copies of a model: what the capture and the passes beside it
(the input-entry probe, the measured field) share."""

from __future__ import annotations

import copy
import functools
import types
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from resnet_inspect.ops.common import meta_empty
from resnet_inspect.records import Shape

if TYPE_CHECKING:
    import torch
    from torch import nn


def tensors_in(value: Any) -> list[torch.Tensor]:
    """Every tensor in a (nested) argument or output structure, in order."""
    return [tensor for _, tensor in named_tensors(value)]


def named_tensors(value: Any, prefix: str = "") -> list[tuple[str, torch.Tensor]]:
    """Every tensor in a nested structure with where it sits: "" for a lone tensor, "0", "logits", "aux.1"."""
    import torch

    def join(key: object) -> str:
        return f"{prefix}.{key}" if prefix else str(key)

    if isinstance(value, torch.Tensor):
        return [(prefix, value)]
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a named tuple
        pairs = zip(value._fields, value, strict=False)
        return [pair for key, item in pairs for pair in named_tensors(item, join(key))]
    if isinstance(value, (list, tuple)):
        return [pair for index, item in enumerate(value) for pair in named_tensors(item, join(index))]
    if isinstance(value, dict):
        return [pair for key, item in value.items() for pair in named_tensors(item, join(key))]
    return []


def shape_of(tensor: torch.Tensor) -> Shape:
    return tuple(tensor.shape)


def structural_copy(model: nn.Module, device: str = "meta") -> nn.Module:
    """A deep copy of ``model`` whose parameters and buffers are empty tensors on ``device``.

    On the meta device nothing is allocated; shared parameters stay shared. The original is not touched.
    """
    import torch

    def copied(tensor: torch.Tensor) -> torch.Tensor:
        if device == "meta":
            return meta_empty(tensor.shape, tensor)
        if tensor.is_meta:  # a model built on meta, run for real: zeros stand in for the weights it never had
            return torch.zeros(tuple(tensor.shape), dtype=tensor.dtype, device=device)
        return tensor.detach().clone()

    memo: dict[int, Any] = {}
    for parameter in model.parameters():
        if id(parameter) not in memo:
            memo[id(parameter)] = torch.nn.Parameter(copied(parameter), requires_grad=parameter.requires_grad)
    for buffer in model.buffers():
        if id(buffer) not in memo:
            memo[id(buffer)] = copied(buffer)
    return without_callers_hooks(copy.deepcopy(model, memo)).to(device)


# A module's hooks that run around its calls (forward, pre-forward, backward, pre-backward), and the dicts that say
# how each one is called, keyed by the same hook id.
_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
_HOOK_FLAGS = ("_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks_with_kwargs")
# What copy.deepcopy shares instead of copying, among callables: functions (def, lambda, closure), builtins and
# their bound forms (``features.append``), classes.
_SHARED_BY_DEEPCOPY = (types.FunctionType, types.BuiltinFunctionType, type)


def is_callers_hook(hook: Any) -> bool:
    """Whether a module hook acts on the caller's objects, not on the model's: a function or a builtin (through
    any ``functools.partial``), which a deep copy of the model shares with the original, so that the copy's
    tensors (meta ones, in a meta pass) would reach the caller's lists. A hook that is an object or a bound method
    (torch's spectral norm, timm's feature hooks) is copied with the model and acts on the copy's own state: it is
    part of the model."""
    while isinstance(hook, functools.partial):
        hook = hook.func
    return isinstance(hook, _SHARED_BY_DEEPCOPY)


def _drop_callers_hooks(module: nn.Module, attribute: str) -> None:
    """Remove the caller's hooks from one of ``module``'s hook dicts, with the flags kept for them."""
    hooks = getattr(module, attribute, {})
    for key in [key for key, hook in hooks.items() if is_callers_hook(hook)]:
        del hooks[key]
        for flags in _HOOK_FLAGS:
            getattr(module, flags, {}).pop(key, None)


def without_callers_hooks(model: nn.Module) -> nn.Module:
    """``model`` (a copy the tool made) without the caller's hooks (``is_callers_hook``); returns it.

    Global hooks (``torch.nn.modules.module.register_module_forward_hook``) belong to the process, not to a
    module, and are not touched."""
    for module in model.modules():
        for attribute in _HOOKS:
            _drop_callers_hooks(module, attribute)
    return model


def private_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` for a pass the tool runs (real weights and all), without the caller's hooks."""
    return without_callers_hooks(copy.deepcopy(model))




def _map_tensors(value: Any, convert: Callable[[Any], Any]) -> Any:
    """``value`` with ``convert`` applied to every tensor in it (lists, tuples and dicts rebuilt; named tuples and
    other values left as they are)."""
    import torch

    if isinstance(value, torch.Tensor):
        return convert(value)
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        return type(value)(_map_tensors(item, convert) for item in value)
    if isinstance(value, dict):
        return {key: _map_tensors(item, convert) for key, item in value.items()}
    return value


def on_meta(value: Any) -> Any:
    """``value`` with every tensor replaced by an empty meta tensor of its shape and dtype."""
    return _map_tensors(value, lambda tensor: meta_empty(tensor.shape, tensor))


def _mixes_devices(args: Any, kwargs: dict[str, Any]) -> bool:
    return len({tensor.is_meta for tensor in tensors_in(list(args)) + tensors_in(kwargs)}) == 2


def meta_if_mixed(args: Any, kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """The arguments of a call that mixes meta and real tensors with the real ones as empty meta tensors of their
    shapes (torch refuses to mix devices); the meta ones, and a call on one device only, are left as they are."""
    if not _mixes_devices(args, kwargs):
        return args, kwargs

    def meta(tensor: Any) -> Any:
        return tensor if tensor.is_meta else meta_empty(tensor.shape, tensor)

    return _map_tensors(list(args), meta), _map_tensors(kwargs, meta)


def meta_stand_in_bytes(args: Any, kwargs: dict[str, Any]) -> int:
    """The bytes of the meta tensors of a call that mixes them with real ones (``real_if_mixed`` makes them)."""
    if not _mixes_devices(args, kwargs):
        return 0
    return sum(tensor.numel() * tensor.element_size() for tensor in tensors_in(list(args)) + tensors_in(kwargs)
               if tensor.is_meta)


def real_if_mixed(args: Any, kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """The arguments of a call that mixes meta and real tensors with the meta ones as zeros of their shapes on the
    real ones' device: a tensor made on meta never had values, and zeros stand in for them, as they do for the
    weights of a model built on meta (``structural_copy``); a call on one device only is left as it is."""
    import torch

    if not _mixes_devices(args, kwargs):
        return args, kwargs
    device = next(tensor.device for tensor in tensors_in(list(args)) + tensors_in(kwargs) if not tensor.is_meta)

    def real(tensor: Any) -> Any:
        return torch.zeros(tuple(tensor.shape), dtype=tensor.dtype, device=device) if tensor.is_meta else tensor

    return _map_tensors(list(args), real), _map_tensors(kwargs, real)


def result_bytes_on_meta(func: Any, args: Sequence[Any], kwargs: dict[str, Any]) -> int:
    """The bytes of what ``func`` returns for these arguments, worked out on the meta device (nothing allocated);
    0 for a call without tensor arguments or one whose result size depends on values (counted once it ran)."""
    if not (tensors_in(list(args)) or tensors_in(kwargs)):
        return 0
    try:
        result = func(*on_meta(list(args)), **on_meta(kwargs))
    except Exception:  # data-dependent (nonzero, item) or not implemented on meta
        return 0
    return sum(tensor.numel() * tensor.element_size() for tensor in tensors_in(result))


def new_storage_bytes(tensors: Sequence[Any], inputs: Sequence[Any] = ()) -> int:
    """Bytes of the storages of ``tensors``, each once, except those of ``inputs`` (a view or an in-place result
    adds nothing). Addresses are not remembered across calls (a freed address can be reused by a new tensor), so
    a running sum of these never falls below what a pass holds."""
    seen = {tensor.untyped_storage().data_ptr() for tensor in inputs}
    total = 0
    for tensor in tensors:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()
    return total


def _call_result_bytes(func: Any, args: Sequence[Any], kwargs: dict[str, Any]) -> int:
    """The bytes a torch function or tensor method returns, worked out on the meta device (a factory through its
    ``device``): an upper bound of its new storage (a view counts its size); 0 for an in-place method."""
    name = getattr(func, "__name__", "")
    if name.endswith("_") and not name.endswith("__"):  # uniform_, zero_: the result is the tensor itself
        return 0
    if tensors_in(list(args)) or tensors_in(kwargs):
        return result_bytes_on_meta(func, args, kwargs)
    try:
        result = func(*args, **{**kwargs, "device": "meta"})
    except Exception:  # not a factory: no tensor comes out of tensors that are not there
        return 0
    return sum(tensor.numel() * tensor.element_size() for tensor in tensors_in(result))


# A build on the meta device keeps real only the small tensors whose values a constructor may read (timm's
# drop-path rates, ``[x.item() for x in torch.linspace(0, rate, depth)]``; a window's relative position index):
# each at most SMALL_TENSOR_BYTES, and all together at most SMALL_TENSORS_TOTAL_BYTES.
SMALL_TENSOR_BYTES = 1 << 20
SMALL_TENSORS_TOTAL_BYTES = 64 << 20


def _on_meta_call(func: Any, args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
    """``func`` with every tensor argument an empty meta tensor of its shape; a factory (no tensor argument) is
    asked for its result on the meta device."""
    if not (tensors_in(list(args)) or tensors_in(kwargs)):
        return func(*args, **{**kwargs, "device": "meta"})
    meta_kwargs = on_meta(kwargs)
    if "device" in meta_kwargs:
        meta_kwargs["device"] = "meta"
    return func(*on_meta(list(args)), **meta_kwargs)


@contextmanager
def meta_except_small(tensor_bytes: int = SMALL_TENSOR_BYTES,
                      total_bytes: int = SMALL_TENSORS_TOTAL_BYTES) -> Iterator[None]:
    """Run the body with every tensor it makes on the meta device, except small ones (each at most
    ``tensor_bytes``, all of them together at most ``total_bytes``), which are real so that the body can read
    their values. A call with meta and real tensors among its arguments runs on the meta device (the real ones
    stand in by their shapes; an in-place one leaves a real tensor's values as they were). Reading the value of
    a meta tensor raises, as on the meta device. (A function mode: a dispatch mode would import torch._dynamo.)"""
    from torch.overrides import TorchFunctionMode

    class MetaExceptSmall(TorchFunctionMode):
        real_bytes = 0

        def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            kwargs = kwargs or {}
            if getattr(func, "__name__", "") == "__get__":  # .shape, .data, .device: nothing is made
                return func(*args, **kwargs)
            inputs = tensors_in(list(args)) + tensors_in(kwargs)
            on_meta_device = [tensor.is_meta for tensor in inputs]
            if all(on_meta_device) and inputs:
                return func(*args, **kwargs)
            if not any(on_meta_device):
                size = _call_result_bytes(func, args, kwargs)
                if size <= tensor_bytes and self.real_bytes + size <= total_bytes:
                    result = func(*args, **kwargs)
                    self.real_bytes += new_storage_bytes([tensor for tensor in tensors_in(result)
                                                          if not tensor.is_meta], inputs)
                    return result
            return _on_meta_call(func, args, kwargs)

    with MetaExceptSmall():
        yield


@contextmanager
def guarded_allocations(guard: Callable[[int, int], None]) -> Iterator[None]:
    """Run the body with ``guard(held_bytes, next_bytes)`` asked before every torch function and tensor method:
    the bytes of every storage made so far under it (never lowered when one is freed: an upper bound) and of the
    call's result. The guard raises to refuse; nothing of that call is allocated then. (A function mode, not a
    dispatch mode: ``torch.jit.trace`` in a constructor works under it.)"""
    from torch.overrides import TorchFunctionMode

    class AllocationGuard(TorchFunctionMode):
        held_bytes = 0

        def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            kwargs = kwargs or {}
            guard(self.held_bytes, _call_result_bytes(func, args, kwargs))
            result = func(*args, **kwargs)
            self.held_bytes += new_storage_bytes([tensor for tensor in tensors_in(result) if not tensor.is_meta],
                                                 tensors_in(list(args)) + tensors_in(kwargs))
            return result

    with AllocationGuard():
        yield

__all__ = ["guarded_allocations", "is_callers_hook", "meta_except_small", "meta_if_mixed", "meta_stand_in_bytes",
           "named_tensors", "new_storage_bytes", "on_meta", "private_copy", "real_if_mixed", "shape_of",
           "structural_copy", "tensors_in", "without_callers_hooks"]
