"""The operation table: everything the tool knows about one operation, in one entry.

An entry says how the operation is matched (module base classes, function names), its geometry and the
arguments its rules need, a fast output-shape rule for the meta pass, its multiply-accumulates, its
receptive-field rule and its one-channel replay for the gradient check. The capture reads the matching,
geometry and shape parts; the analyses read the rest. The entries are kept in :mod:`resnet_inspect.ops.registry`;
the built-in entries go through :func:`~resnet_inspect.ops.registry.register_op` exactly as a user's do (fvcore's
``set_op_handle`` and torch's ``register_flop_formula`` are the models).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from resnet_inspect.ops.fields import Layout, NodeField
from resnet_inspect.records import Geometry, OpKind, OpNode, Shape


@dataclass
class Call:
    """One call as the capture saw it: the module (None for a function), its arguments and tensor shapes.

    ``input_shapes`` are those of every tensor argument, in order (tracked or not); ``output_shapes`` those of
    the result (empty while the shape rule runs).
    """

    module: Any
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    input_shapes: tuple[Shape, ...] = ()
    output_shapes: tuple[Shape, ...] = ()
    tensor_nodes: tuple[int | None, ...] = ()  # the graph node that produced each tensor argument (None: untracked)
    name: str = ""  # the function's own name, e.g. "__iadd__" or "relu_" (the in-place forms matter to shapes)

    def arg(self, position: int, name: str, default: Any = None) -> Any:
        """A functional call's argument, passed by keyword or by position."""
        if name in self.kwargs:
            return self.kwargs[name]
        return self.args[position] if len(self.args) > position else default


@dataclass(frozen=True)
class FieldState:
    """What the receptive-field analysis knows of one tensor: where its spatial axes are and their field."""

    layout: Layout
    field: NodeField


@dataclass
class ReplayCall:
    """One operation of the one-channel replay: its node, its inputs' values (1, 1, *grid) and layouts."""

    node: OpNode
    values: list[Any]  # float64 tensors, one channel, the spatial grid as trailing dims
    inputs: Sequence[FieldState]
    output: FieldState


Describe = Callable[[Call], tuple[Geometry, dict[str, Any]]]
ShapeRule = Callable[[Call], Any]  # returns the meta result, or NotImplemented to run torch's own kernel
MacsRule = Callable[[OpNode], int]
FieldRule = Callable[[OpNode, Sequence[FieldState]], FieldState]
ReplayRule = Callable[[ReplayCall], Any]


@dataclass(frozen=True)
class OpSpec:
    """One operation. ``name`` is the entry's key (a node's ``op``); ``kind`` labels it in reports.

    - ``modules``: module classes matched with ``isinstance`` (base classes such as ``_ConvNd`` cover 1-D, 2-D
      and 3-D). A module whose class overrides the matched class's ``forward`` is not taken as this operation:
      the capture looks inside and checks what it really runs.
    - ``functions``: normalised function names (``conv2d``, ``add`` for ``x + y`` and ``x += y``).
    - ``describe``: the call's geometry and the arguments the rules need (``attrs``).
    - ``shape``: an output-shape rule for the meta pass, where torch's own meta kernel is slow to import.
    - ``macs``: multiply-accumulates of one call, from the node's shapes and attrs; None counts 0.
    - ``backward_macs``: multiply-accumulates of the call's backward, given which of its tensor arguments (then a
      module's parameters) take part in it (``OpNode.grads``, all False: not called); None counts 0.
    - ``field``: the receptive-field rule; raises ``Undefined`` with a reason when there is none.
    - ``replay``: the operation on a one-channel float64 map, for the input-gradient check.
    - ``constant``: the output does not depend on the input's values (``zeros_like``): not tracked.
    - ``shape_donors``: those of ``functions`` whose tensor arguments after the first lend only their shape or
      dtype (``x.expand_as(y)``): the output depends on the first alone.
    """

    name: str
    kind: OpKind
    field: FieldRule
    modules: tuple[type, ...] = ()
    functions: tuple[str, ...] = ()
    describe: Describe | None = None
    shape: ShapeRule | None = None
    macs: MacsRule | None = None
    backward_macs: MacsRule | None = None
    replay: ReplayRule | None = None
    constant: bool = False
    shape_donors: tuple[str, ...] = ()
    doc: str = ""

    @property
    def checked(self) -> bool:
        """Windowed operations, whose output size `verify` checks against the arithmetic."""
        return self.kind.has_window

    def geometry(self, call: Call) -> tuple[Geometry, dict[str, Any]]:
        if self.describe is None:
            return Geometry(self.kind), {}
        return self.describe(call)


def function_name(func: Any) -> str:
    """Normalised operation name: `Tensor.__iadd__` -> "add", `relu_` -> "relu", `Tensor.__matmul__` -> "matmul"."""
    name = getattr(func, "__name__", None) or str(func)
    name = name.strip("_")
    return _DUNDER_ALIASES.get(name, name)


_DUNDER_ALIASES = {
    "radd": "add", "iadd": "add", "rsub": "sub", "isub": "sub", "rmul": "mul", "imul": "mul", "truediv": "div",
    "rtruediv": "div", "itruediv": "div", "rmatmul": "matmul", "floordiv": "div", "rfloordiv": "div",
    "ifloordiv": "div", "ipow": "pow", "rpow": "pow",
}


__all__ = [
    "Call",
    "FieldState",
    "OpSpec",
    "ReplayCall",
    "function_name",
]
