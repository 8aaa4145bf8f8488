"""What a failed forward pass is told as: one line naming the module whose code raised, or the operation.

``recorder`` is the capture's record of the pass so far (its stack of running module calls, the functional
operation running); only the attributes read here are needed.
"""

from __future__ import annotations

from typing import Any

from resnet_inspect.capture.tensors import shape_of, tensors_in
from resnet_inspect.errors import ForwardError, InputTooSmallError
from resnet_inspect.names import first_line
from resnet_inspect.ops.arithmetic import check_layer
from resnet_inspect.ops.registry import op_for_function
from resnet_inspect.ops.table import Call
from resnet_inspect.records import Geometry, Shape

MODEL_FORWARD = "the model's forward"  # where code runs outside any module call


def _raising_call(recorder: Any, exc: BaseException, root: Any) -> Any:
    """The module call whose code raised ``exc``: the innermost frame of its traceback that runs a method of one
    of the model's modules (its forward, or torch's call machinery around it). None when that is the model itself
    (its own forward raised) or no module's code is in the traceback."""
    import traceback

    running = {id(call.module): call for call in recorder.stack}
    raising = None
    for frame, _ in traceback.walk_tb(exc.__traceback__):
        owner = frame.f_locals.get("self")
        if owner is root:
            raising = None
        elif id(owner) in running and running[id(owner)].module is owner:
            raising = running[id(owner)]
    return raising


def _too_small(geometry: Geometry | None, shape: Shape) -> str | None:
    """The output size ('0x0', '-2x-2') a windowed operation would give at input ``shape``, when it is below 1."""
    if geometry is None or not geometry.kind.has_window or len(shape) < geometry.rank + 1:
        return None
    spatial = shape[len(shape) - geometry.rank:]
    check = check_layer(geometry, spatial, spatial)
    if check is not None and min(check.expected) < 1:
        return "x".join(map(str, check.expected))
    return None


def forward_failure(recorder: Any, exc: BaseException, root: Any, input_shapes: tuple[Shape, ...]) -> ForwardError:
    """A one-line error naming the module (or the operation) whose code raised and the shape it got.

    The module is found in the traceback, never guessed from the last layer that finished. An input too small is
    told by the layer's own arithmetic (its output would have a size below 1), never by the words of a message.
    """
    reason = first_line(str(exc)) or type(exc).__name__
    raising = _raising_call(recorder, exc, root)
    scope = raising.name if raising is not None else MODEL_FORWARD
    if recorder.current_op and not recorder.opaque_depth:  # a functional operation failed: blame it
        args, kwargs = recorder.current_call
        tensors = tensors_in(list(args)) + tensors_in(kwargs)
        shapes = ", ".join("x".join(map(str, shape_of(t))) for t in tensors)
        spec = op_for_function(recorder.current_op)
        try:
            geometry = spec.geometry(Call(None, tuple(args), kwargs))[0] if spec is not None else None
        except (RuntimeError, TypeError, ValueError, IndexError, KeyError, AttributeError, ZeroDivisionError):
            geometry = None
        size = _too_small(geometry, shape_of(tensors[0])) if tensors else None
        if size is not None:
            return InputTooSmallError(f"input too small: {recorder.current_op} in {scope} with input {shapes} would "
                                      f"give an output of {size}")
        return ForwardError(f"forward pass failed at {recorder.current_op} in {scope} with inputs {shapes}: {reason}")
    if raising is None:
        where = f"{MODEL_FORWARD} ({type(root).__name__})"
        if input_shapes:
            where += f" with input {'x'.join(map(str, input_shapes[0]))}"
        return ForwardError(f"forward pass failed in {where}: {reason}")
    shape = raising.input_shapes[0] if raising.input_shapes else ()
    where = f"{raising.name} ({type(raising.module).__name__})"
    if shape:
        where += f" with input {'x'.join(map(str, shape))}"
    size = _too_small(raising.geometry, shape)
    if size is not None:
        return InputTooSmallError(f"input too small: {where} would give an output of {size}")
    return ForwardError(f"forward pass failed in {where}: {reason}")
