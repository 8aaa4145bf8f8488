"""Tensors in nested structures, and structural copies of a model: what the capture and the passes beside it
(the input-entry probe, the measured field) share."""

from __future__ import annotations

import copy
import functools
import types
from collections.abc import Sequence
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


__all__ = [
    "is_callers_hook",
    "named_tensors",
    "private_copy",
    "shape_of",
    "structural_copy",
    "tensors_in",
    "without_callers_hooks",
]


def on_meta(value: Any) -> Any:
    """``value`` with every tensor replaced by an empty meta tensor of its shape and dtype."""
    import torch

    if isinstance(value, torch.Tensor):
        return meta_empty(value.shape, value)
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        return type(value)(on_meta(item) for item in value)
    if isinstance(value, dict):
        return {key: on_meta(item) for key, item in value.items()}
    return value


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
