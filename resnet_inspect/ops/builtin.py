"""The built-in entries of the operation table, one module per family: convolution and pooling
(:mod:`~resnet_inspect.ops.conv_pool`), linear, attention and normalisation (:mod:`~resnet_inspect.ops.attention`),
upsampling (:mod:`~resnet_inspect.ops.upsample`), element-wise and layout operations
(:mod:`~resnet_inspect.ops.elementwise`). torch is imported inside the functions that build them.

Each entry is registered through the same path as a user's (:func:`resnet_inspect.ops.register_op`).
"""

from __future__ import annotations

from collections.abc import Sequence

from resnet_inspect.ops import rules
from resnet_inspect.ops.attention import attention_ops, einsum_macs, linear_macs, matmul_equation, parse_einsum
from resnet_inspect.ops.common import broadcast_shapes, meta_empty
from resnet_inspect.ops.conv_pool import (
    adaptive_geometry,
    conv_geometry,
    conv_macs,
    conv_pool_ops,
    conv_transpose_macs,
    pool_geometry,
    sizes,
)
from resnet_inspect.ops.elementwise import elementwise_ops
from resnet_inspect.ops.fields import Undefined
from resnet_inspect.ops.table import FieldState, OpSpec
from resnet_inspect.ops.upsample import upsample_ops
from resnet_inspect.records import OpKind, OpNode


def unknown_field(node: OpNode, inputs: Sequence[FieldState]) -> FieldState:
    raise Undefined(f"not covered: {rules.describe_op(node)} is an operation without a receptive-field rule")


UNKNOWN_OP = OpSpec("unknown", OpKind.UNKNOWN, unknown_field, doc="an operation without rules")


def builtin_ops() -> list[OpSpec]:
    """Every built-in entry, most specific module classes first."""
    return [*conv_pool_ops(), *attention_ops(), *upsample_ops(), *elementwise_ops()]


__all__ = [
    "UNKNOWN_OP",
    "adaptive_geometry",
    "broadcast_shapes",
    "builtin_ops",
    "conv_geometry",
    "conv_macs",
    "conv_transpose_macs",
    "einsum_macs",
    "linear_macs",
    "matmul_equation",
    "meta_empty",
    "parse_einsum",
    "pool_geometry",
    "sizes",
]
