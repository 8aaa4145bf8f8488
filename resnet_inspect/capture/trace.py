"""One instrumented forward pass: module hooks for the layer tree, a TorchFunctionMode for the dataflow.

Module pre/post hooks give every module call (name, depth, shapes, geometry). Functional operations that
no hook sees, such as the residual ``x + residual``, are caught by a ``TorchFunctionMode``; each tensor is
mapped to the operation that produced it, so every node knows which nodes fed it. By default the pass runs
on the meta device, on a structural copy of the model: no weights are copied and no activation is computed.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from resnet_inspect.capture.geometry import ELEMENTWISE, function_geometry, module_geometry
from resnet_inspect.capture.meta_shapes import meta_empty, meta_result
from resnet_inspect.errors import ForwardError, InputTooSmallError
from resnet_inspect.records import Capture, Geometry, LayerRecord, OpKind, OpNode, Shape

if TYPE_CHECKING:
    import torch
    from torch import nn

# Errors a meta-device forward raises for data-dependent code; the capture then retries on real tensors.
_META_LIMITATIONS = ("meta", "data-dependent", "item()", "Cannot copy out of", "not implemented for")


def tensors_in(value: Any) -> list[torch.Tensor]:
    """Every tensor in a (nested) argument or output structure, in order."""
    import torch

    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in tensors_in(item)]
    if isinstance(value, dict):
        return [t for item in value.values() for t in tensors_in(item)]
    return []


def shape_of(tensor: torch.Tensor) -> Shape:
    return tuple(int(size) for size in tensor.shape)


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


@dataclass
class _Call:
    """A module call in progress (mutable while the pass runs; frozen into a LayerRecord after)."""

    index: int
    module: Any
    name: str
    depth: int
    parent: int | None
    is_leaf: bool
    geometry: Geometry | None
    input_shapes: tuple[Shape, ...]
    output_shapes: tuple[Shape, ...] = ()
    node: int | None = None
    input_nodes: tuple[int, ...] = ()
    output_node: int | None = None
    inputs: list[Any] = field(default_factory=list)  # the input tensors, held only while the call runs


@dataclass
class _Recorder:
    """State shared by the hooks and the function mode during one pass."""

    names: dict[int, str]
    calls: list[_Call] = field(default_factory=list)
    stack: list[_Call] = field(default_factory=list)
    nodes: list[OpNode] = field(default_factory=list)
    producers: dict[int, int] = field(default_factory=dict)  # id(tensor) -> node id
    alive: list[Any] = field(default_factory=list)  # keeps tensors alive so their ids are never reused
    opaque_depth: int = 0  # > 0 while inside a module recorded as one operation
    op_counts: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.module_names = set(self.names.values())

    def scope(self) -> str:
        return self.stack[-1].name if self.stack else ""

    def input_nodes(self, tensors: list[Any]) -> tuple[int, ...]:
        return tuple(dict.fromkeys(self.producers[id(t)] for t in tensors if id(t) in self.producers))

    def add_node(self, name: str, type_: str, geometry: Geometry, inputs: list[Any], outputs: list[Any],
                 record: int | None = None) -> int:
        node_id = len(self.nodes)
        self.nodes.append(OpNode(
            id=node_id, name=name, type=type_, geometry=geometry, inputs=self.input_nodes(inputs),
            input_shapes=tuple(shape_of(t) for t in inputs), output_shape=shape_of(outputs[0]) if outputs else (),
            record=record, scope=self.scope(), inplace=bool(outputs) and any(outputs[0] is t for t in inputs),
        ))
        for tensor in outputs:
            self.producers[id(tensor)] = node_id
            self.alive.append(tensor)
        return node_id

    def unique_op_name(self, op: str) -> str:
        """`<scope>.<op>`, suffixed `_1`, `_2`... when a module or an earlier call already has that name."""
        base = f"{self.scope()}.{op}" if self.scope() else op
        count = self.op_counts.get(base, 1 if base in self.module_names else 0)
        self.op_counts[base] = count + 1
        return base if count == 0 else f"{base}_{count}"


def _function_mode(recorder: _Recorder) -> Any:
    from torch.overrides import TorchFunctionMode

    class DataflowMode(TorchFunctionMode):
        """Records functional operations (``x + residual``, ``torch.flatten``) that no module hook sees."""

        def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            kwargs = kwargs or {}
            result = meta_result(func, args, kwargs)
            if result is NotImplemented:
                result = func(*args, **kwargs)
            if recorder.opaque_depth:
                return result
            inputs = tensors_in(list(args)) + tensors_in(kwargs)
            outputs = tensors_in(result)
            if outputs and any(id(t) in recorder.producers for t in inputs):
                tracked = [t for t in inputs if id(t) in recorder.producers]
                op, geometry = function_geometry(func, args, kwargs, shape_of(tracked[0]))
                recorder.add_node(recorder.unique_op_name(op), op, geometry, tracked, outputs)
            return result

    return DataflowMode()


def _make_hooks(recorder: _Recorder, root: Any) -> tuple[Any, Any]:
    """Pre/post hook factories in torchinfo's manner: small closures over one shared recorder."""

    def pre_hook(module: Any, args: Any, kwargs: Any) -> None:
        inputs = tensors_in(list(args)) + tensors_in(kwargs)
        if module is root:
            for tensor in inputs:
                if id(tensor) not in recorder.producers:
                    recorder.add_node("input", "input", ELEMENTWISE, [], [tensor])
            return
        geometry = module_geometry(module)
        parent = recorder.stack[-1] if recorder.stack else None
        call = _Call(
            index=len(recorder.calls), module=module, name=recorder.names.get(id(module), type(module).__name__),
            depth=(parent.depth + 1) if parent else 1, parent=parent.index if parent else None,
            is_leaf=geometry is not None or not any(True for _ in module.children()),
            geometry=geometry, input_shapes=tuple(shape_of(t) for t in inputs),
        )
        call.inputs = inputs
        call.input_nodes = recorder.input_nodes(inputs)
        recorder.calls.append(call)
        recorder.stack.append(call)
        if geometry is not None:
            recorder.opaque_depth += 1

    def post_hook(module: Any, args: Any, kwargs: Any, output: Any) -> None:
        if module is root:
            return
        call = recorder.stack.pop()
        outputs = tensors_in(output)
        call.output_shapes = tuple(shape_of(t) for t in outputs)
        inputs, call.inputs = call.inputs, []
        if call.geometry is not None:
            recorder.opaque_depth -= 1
            call.node = recorder.add_node(call.name, type(module).__name__, call.geometry, inputs, outputs,
                                          record=call.index)
        call.output_node = recorder.producers.get(id(outputs[0])) if outputs else None

    return pre_hook, post_hook


def _count(module: Any) -> tuple[int, int]:
    params = list(module.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def _freeze(call: _Call) -> LayerRecord:
    module = call.module
    params, trainable = _count(module)
    in_features = getattr(module, "in_channels", getattr(module, "in_features", None))
    out_features = getattr(module, "out_channels", getattr(module, "out_features", None))
    return LayerRecord(
        index=call.index, name=call.name, type=type(module).__name__, depth=call.depth, parent=call.parent,
        is_leaf=call.is_leaf, input_shapes=call.input_shapes, output_shapes=call.output_shapes, params=params,
        trainable_params=trainable, geometry=call.geometry,
        in_features=in_features if isinstance(in_features, int) else None,
        out_features=out_features if isinstance(out_features, int) else None,
        has_bias=getattr(module, "bias", None) is not None and call.geometry is not None, node=call.node,
        input_nodes=call.input_nodes, output_node=call.output_node,
    )


@contextmanager
def _instrumented(model: Any, recorder: _Recorder) -> Iterator[None]:
    """Hooks on every module and the dataflow mode; all removed and the training flag restored in one finally."""
    was_training = model.training
    pre_hook, post_hook = _make_hooks(recorder, model)
    handles = []
    try:
        for module in model.modules():
            handles.append(module.register_forward_pre_hook(pre_hook, with_kwargs=True))
            handles.append(module.register_forward_hook(post_hook, with_kwargs=True))
        with _function_mode(recorder):
            yield
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)


def _failure(recorder: _Recorder, exc: BaseException) -> ForwardError:
    """A one-line error naming the layer that was running and the shape it got."""
    from resnet_inspect.analysis.arithmetic import check_layer

    running = recorder.stack[-1] if recorder.stack else (recorder.calls[-1] if recorder.calls else None)
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if running is None:
        return ForwardError(f"forward pass failed before any layer ran: {reason}")
    shape = running.input_shapes[0] if running.input_shapes else ()
    where = f"{running.name} ({type(running.module).__name__})"
    if shape:
        where += f" with input {'x'.join(map(str, shape))}"
    if running.geometry is not None and running.geometry.kind.has_window and len(shape) == 4:
        check = check_layer(running.geometry, (shape[2], shape[3]), (shape[2], shape[3]))
        if check is not None and min(check.expected) < 1:
            size = "x".join(map(str, check.expected))
            return InputTooSmallError(f"input too small: {where} would give an output of {size}")
    if "too small" in reason or "greater than" in reason:
        return InputTooSmallError(f"input too small: {reason} at {where}")
    return ForwardError(f"forward pass failed in {where}: {reason}")


def model_dtype(model: nn.Module) -> str:
    """The dtype of the model's first floating-point parameter ("float32" when it has none)."""
    for parameter in model.parameters():
        if parameter.is_floating_point():
            return str(parameter.dtype).removeprefix("torch.")
    return "float32"


def run_capture(model: nn.Module, input_shape: Shape, model_name: str = "", device: str = "meta",
                dtype: str | None = None) -> Capture:
    """Run one instrumented forward pass of a structural copy of ``model`` on an input of ``input_shape``.

    The input has the model's own dtype unless ``dtype`` says otherwise.
    """
    import torch

    dtype = dtype or model_dtype(model)

    working = structural_copy(model, device)
    working.eval()
    recorder = _Recorder(names={id(m): name for name, m in working.named_modules() if name})
    x = torch.zeros(input_shape, device=device, dtype=getattr(torch, dtype))  # defined values if run for real
    try:
        with torch.no_grad(), _instrumented(working, recorder):
            output = working(x)
    except Exception as exc:  # the model's own code may raise anything
        raise _failure(recorder, exc) from exc
    outputs = tensors_in(output)
    output_node = recorder.producers.get(id(outputs[0]), 0) if outputs else 0
    params, trainable = _count(model)
    bytes_by_dtype: dict[str, int] = {}
    seen: set[int] = set()
    for parameter in model.parameters():
        if id(parameter) not in seen:
            seen.add(id(parameter))
            key = str(parameter.dtype).removeprefix("torch.")
            bytes_by_dtype[key] = bytes_by_dtype.get(key, 0) + parameter.numel() * parameter.element_size()
    buffer_bytes = sum(b.numel() * b.element_size() for b in model.buffers())
    return Capture(
        model_name=model_name or type(model).__name__, model_type=type(model).__name__,
        input_shape=tuple(input_shape), output_shape=shape_of(outputs[0]) if outputs else (),
        layers=tuple(_freeze(call) for call in recorder.calls), nodes=tuple(recorder.nodes),
        output_node=output_node, params=params, trainable_params=trainable,
        param_bytes=sum(bytes_by_dtype.values()), param_bytes_by_dtype=bytes_by_dtype,
        buffer_bytes=buffer_bytes, dtype=dtype,
    )


def capture(model: nn.Module, input_size: int | tuple[int, int] = (224, 224), batch_size: int = 1,
            in_channels: int = 3, model_name: str = "") -> Capture:
    """Capture ``model`` on the meta device; fall back to real CPU tensors if its forward needs data."""
    height, width = (input_size, input_size) if isinstance(input_size, int) else input_size
    input_shape = (batch_size, in_channels, height, width)
    try:
        return run_capture(model, input_shape, model_name, device="meta")
    except InputTooSmallError:
        raise
    except ForwardError as error:
        if not any(marker in str(error) for marker in _META_LIMITATIONS):
            raise
        return run_capture(model, input_shape, model_name, device="cpu")


def smallest_input_size(model: nn.Module, in_channels: int = 3, limit: int = 4096) -> int | None:
    """The smallest square input size for which ``model``'s forward pass runs (None if none up to ``limit``)."""

    def works(size: int) -> bool:
        try:
            capture(model, size, 1, in_channels)
        except ForwardError:  # too small, or a size-bound layer (a fixed Linear) rejects this probe size
            return False
        return True

    high = 1
    while not works(high):
        if high >= limit:
            return None
        high *= 2
    low = high // 2  # fails (or 0)
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if works(middle) else (middle, high)
    return high


__all__ = ["Capture", "OpKind", "capture", "run_capture", "smallest_input_size", "structural_copy"]
