"""Tensors in nested structures, and structural copies of a model: what the capture and the passes beside it
(the input-entry probe, the measured field) share."""

from __future__ import annotations

import copy
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
    return copy.deepcopy(model, memo).to(device)


__all__ = ["named_tensors", "shape_of", "structural_copy", "tensors_in"]
