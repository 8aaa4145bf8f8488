"""What the tool knows about each operation, one entry per operation: the operation table.

``register_op(OpSpec(...))`` adds an operation (or, with ``replace=True``, overrides a built-in one); the capture
and every analysis read the same entry. See docs/operations.md for a worked example.
"""

from resnet_inspect.ops.fields import FEATURES, Layout, NodeField, Undefined, merge_fields, whole_map, window
from resnet_inspect.ops.registry import get_op, op_for_function, op_for_module, ops, register_op, unregister_op
from resnet_inspect.ops.table import Call, FieldState, OpSpec, ReplayCall, function_name

__all__ = [
    "FEATURES",
    "Call",
    "FieldState",
    "Layout",
    "NodeField",
    "OpSpec",
    "ReplayCall",
    "Undefined",
    "function_name",
    "get_op",
    "merge_fields",
    "op_for_function",
    "op_for_module",
    "ops",
    "register_op",
    "unregister_op",
    "whole_map",
    "window",
]
