"""What the built-in entries share: meta tensors, broadcasting, a call's number of dimensions.

PyTorch's meta kernels for element-wise ops, batch norm, linear, adaptive pooling and mean import
torch._dynamo on first use (over a second of start-up); convolution and max pooling import sympy. The built-in
shape rules give the same shapes (tests check them against torch's kernels); a rule meeting arguments the real
kernel would reject steps aside, so that kernel raises its own error.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from resnet_inspect.ops.table import Call


def meta_empty(shape: Sequence[int], like: Any) -> Any:
    """An empty meta tensor of ``shape`` with ``like``'s dtype (``empty_like`` on meta would import sympy)."""
    import torch

    return torch.empty(tuple(shape), dtype=like.dtype, device="meta")


def broadcast_shapes(first: Sequence[int], second: Sequence[int]) -> tuple[int, ...]:
    """NumPy broadcasting of two shapes; ValueError where they don't broadcast."""
    width = max(len(first), len(second))
    padded = [(1,) * (width - len(shape)) + tuple(shape) for shape in (first, second)]
    result = []
    for a, b in zip(*padded, strict=True):
        if a != b and 1 not in (a, b):
            raise ValueError(f"shapes {tuple(first)} and {tuple(second)} do not broadcast")
        result.append(b if a == 1 else a)
    return tuple(result)


def _ndim(call: Call) -> int:
    return len(call.input_shapes[0]) if call.input_shapes else 0
