"""One instrumented forward pass: module hooks for the layer tree, a TorchFunctionMode for the dataflow.

Module pre/post hooks give every module call (name, depth, shapes). Functional operations that no hook sees,
such as the residual ``x + residual``, are caught by a ``TorchFunctionMode``; each tensor is mapped to the
operation that produced it, so every node knows which nodes fed it. What an operation is (its geometry, the
arguments its rules need, a fast shape rule) comes from the operation table. By default the pass runs on the
meta device, on a structural copy of the model: no weights are copied and no activation is computed.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from resnet_inspect.capture.entry import spatial_rank
from resnet_inspect.capture.failure import MODEL_FORWARD, forward_failure
from resnet_inspect.capture.tensors import (
    meta_if_mixed,
    meta_stand_in_bytes,
    named_tensors,
    new_storage_bytes,
    real_if_mixed,
    result_bytes_on_meta,
    shape_of,
    structural_copy,
    tensors_in,
)
from resnet_inspect.errors import ForwardError, InputTooSmallError, InspectError
from resnet_inspect.ops.common import meta_empty
from resnet_inspect.ops.registry import declared_op, get_op, op_for_function, op_for_module
from resnet_inspect.ops.table import Call, OpSpec, function_name
from resnet_inspect.records import Capture, Geometry, LayerRecord, OpKind, OpNode, Shape

if TYPE_CHECKING:
    from torch import nn

# Operations whose output size depends on the input's values: the meta device cannot run them (some raise a
# plain RuntimeError there, not NotImplementedError), so a pass that stops at one needs real tensors.
_DATA_DEPENDENT = frozenset({"nonzero", "masked_select", "unique", "unique_consecutive", "bincount",
                             "repeat_interleave", "argwhere"})
# Tensor metadata: answered at once, never recorded.
_METADATA = frozenset({"__get__", "size", "dim", "ndimension", "numel", "stride", "element_size", "is_contiguous",
                       "is_floating_point", "is_complex", "data_ptr", "__len__", "get_device", "__hash__",
                       "__format__", "__repr__", "storage_offset"})
# Calls that read a tensor's values back into Python (by the function's own name): control flow may depend on
# them. ``float(t)`` (``__float__``) reads a value; ``t.float()`` is a dtype cast and reads none.
_VALUE_READS = frozenset({"item", "tolist", "numpy", "nonzero", "__bool__", "__int__", "__float__", "__index__",
                          "__complex__"})
INPUT_OP = "input"


def _unique(tensors: list[Any]) -> list[Any]:
    return list({id(t): t for t in tensors}.values())


@dataclass
class _Call:
    """A module call in progress (mutable while the pass runs; frozen into a LayerRecord after)."""

    index: int
    module: Any
    name: str
    depth: int
    parent: int | None
    is_leaf: bool
    spec: OpSpec | None  # the table entry when the module is taken as one operation
    geometry: Geometry | None
    attrs: dict[str, Any]
    input_shapes: tuple[Shape, ...]
    declared: Geometry | None = None  # looked inside, though its class declares a window (a Conv2d subclass)
    output_shapes: tuple[Shape, ...] = ()
    node: int | None = None
    input_nodes: tuple[int, ...] = ()
    output_node: int | None = None
    inputs: list[Any] = field(default_factory=list)  # the input tensors, held only while the call runs
    grads: tuple[bool, ...] = ()  # which inputs, then parameters, take part in the backward (training pass)


@dataclass
class _Recorder:
    """State shared by the hooks and the function mode during one pass."""

    names: dict[int, str]
    exact_checked_shapes: bool = False  # windowed operations get their output shape from torch's own kernels
    calls: list[_Call] = field(default_factory=list)
    stack: list[_Call] = field(default_factory=list)
    nodes: list[OpNode] = field(default_factory=list)
    producers: dict[int, int] = field(default_factory=dict)  # id(tensor) -> node id
    constant_producers: dict[int, int] = field(default_factory=dict)  # the same for outputs of constant nodes
    alive: list[Any] = field(default_factory=list)  # keeps tensors alive so their ids are never reused
    opaque_depth: int = 0  # > 0 while inside a module recorded as one operation
    op_counts: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    current_op: str = ""  # the functional operation running (for error messages)
    current_call: tuple[Any, Any] = ((), {})  # its arguments
    # On real tensors, guard(held_bytes, next_bytes, where) is asked before each operation: every storage made so
    # far (never subtracted) and the operation's result, worked out on meta. It raises when they would not fit.
    guard: Callable[[int, int, str], None] | None = None
    held_bytes: int = 0
    train: bool = False  # a training pass: torch's own kernels (autograd records them), requires-grad flags kept
    kernel: Callable[[str, Any, tuple[Any, ...], dict[str, Any]], Any] | None = None  # a function run another way
    needs_values: bool = False  # an operation failed because the meta device holds no values (see ForwardError)
    reached: set[int] = field(default_factory=set)  # a training pass: the nodes whose backward autograd ran
    on_meta: bool = True  # a pass on the meta device, where a real tensor from outside the model stands by its shape

    def __post_init__(self) -> None:
        self.module_names = set(self.names.values())

    def scope(self) -> str:
        return self.stack[-1].name if self.stack else ""

    def input_nodes(self, tensors: list[Any]) -> tuple[int, ...]:
        return tuple(dict.fromkeys(self.producers[id(t)] for t in tensors if id(t) in self.producers))

    def add_node(self, name: str, type_: str, geometry: Geometry, inputs: list[Any], outputs: list[Any],
                 record: int | None = None, op: str = "unknown", attrs: dict[str, Any] | None = None,
                 grads: tuple[bool, ...] = ()) -> int:
        """A node for one operation. One that reads no tracked tensor (and is no model input) is constant: its
        outputs are kept apart, so that whatever they join sees them as it sees a buffer."""
        node_id = len(self.nodes)
        tracked = _unique([t for t in inputs if id(t) in self.producers])
        constant = op != INPUT_OP and not tracked
        shaped = _unique(inputs) if constant else tracked
        self.nodes.append(OpNode(
            id=node_id, name=name, type=type_, geometry=geometry, inputs=self.input_nodes(tracked),
            input_shapes=tuple(shape_of(t) for t in shaped), output_shape=shape_of(outputs[0]) if outputs else (),
            record=record, scope=self.scope(), inplace=bool(outputs) and any(outputs[0] is t for t in inputs),
            op=op, attrs=attrs or {}, output_shapes=tuple(shape_of(t) for t in outputs), constant=constant,
            grads=grads,
        ))
        if self.train:
            self._follow_backward(node_id, outputs)
        made = self.constant_producers if constant else self.producers
        for tensor in outputs:
            made[id(tensor)] = node_id
            if self.train:  # a training pass must let tensors go when the model does: forget them when they die
                weakref.finalize(tensor, made.pop, id(tensor), None)
            else:
                self.alive.append(tensor)
        return node_id

    def _follow_backward(self, node_id: int, outputs: list[Any]) -> None:
        """Note ``node_id`` in ``reached`` when autograd runs the backward of what made its outputs. The hook holds
        the set, never the node or a tensor, so a graph the loss does not reach dies with its outputs."""
        functions = {id(fn): fn for fn in (getattr(t, "grad_fn", None) for t in outputs) if fn is not None}
        for function in functions.values():
            function.register_prehook(lambda _grads, reached=self.reached, node=node_id: reached.add(node))

    def produced_by(self, tensor: Any) -> int | None:
        """The node that made ``tensor``, constant ones included."""
        node = self.producers.get(id(tensor))
        return self.constant_producers.get(id(tensor)) if node is None else node

    def unique_op_name(self, op: str) -> str:
        """`<scope>.<op>`, suffixed `_1`, `_2`... when a module or an earlier call already has that name."""
        base = f"{self.scope()}.{op}" if self.scope() else op
        count = self.op_counts.get(base, 1 if base in self.module_names else 0)
        self.op_counts[base] = count + 1
        return base if count == 0 else f"{base}_{count}"

    def layer_behind(self, node: int) -> str:
        """The nearest module call upstream of ``node`` (following first inputs), else the node's own name."""
        current: OpNode | None = self.nodes[node]
        while current is not None and current.record is None and current.inputs:
            current = self.nodes[current.inputs[0]]
        return current.name if current is not None and current.record is not None else self.nodes[node].name

    def warn(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)


def requires_grads(tensors: Sequence[Any]) -> tuple[bool, ...]:
    """Which of ``tensors`` take part in a backward: each requires grad, and grad mode is on."""
    import torch

    enabled = torch.is_grad_enabled()
    return tuple(enabled and bool(tensor.requires_grad) for tensor in tensors)


def _fast_result(spec: OpSpec | None, call: Call, exact_checked_shapes: bool = False) -> Any:
    """The table's shape rule on meta tensors, or NotImplemented to run torch's own kernel."""
    import torch

    if spec is None or spec.shape is None or (exact_checked_shapes and spec.checked):
        return NotImplemented
    args = call.args
    first = args[0][0] if args and isinstance(args[0], (list, tuple)) and args[0] else (args[0] if args else None)
    if not isinstance(first, torch.Tensor) or not first.is_meta:  # a tensor, or a list of them (cat)
        return NotImplemented
    if any(isinstance(a, torch.Tensor) and not a.is_meta for a in args):
        return NotImplemented
    try:
        return spec.shape(call)
    except (RuntimeError, TypeError, ValueError, IndexError, KeyError, AttributeError):
        return NotImplemented


def meta_result(func: Any, args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
    """What the capture's fast path returns for ``func(*args, **kwargs)`` on meta tensors: the operation table's
    shape rule, or NotImplemented where torch's own kernel decides."""
    spec = op_for_function(function_name(func))
    return _fast_result(spec, Call(None, tuple(args), dict(kwargs), name=getattr(func, "__name__", "")))


def _needs_values(raw_name: str, args: Any, kwargs: Any, exc: Exception) -> bool:
    """Whether an operation on meta tensors failed because the meta device has no values: it reads one, has no
    meta kernel (NotImplementedError, which includes copying a meta tensor out), or sizes its output by them."""
    if isinstance(exc, InspectError) or not any(t.is_meta for t in tensors_in(list(args)) + tensors_in(kwargs)):
        return False
    return (raw_name in _VALUE_READS or raw_name.strip("_") in _DATA_DEPENDENT
            or isinstance(exc, NotImplementedError))


def _run(recorder: _Recorder, func: Any, name: str, raw_name: str, args: Any, kwargs: dict[str, Any]) -> Any:
    """An operation the table's shape rules do not answer: the pass's own kernel (a training step's), else torch's,
    guarded on real tensors. A failure notes whether the meta device's want of values caused it."""
    # A constant from outside the model (a module-level ``MEAN``) on the other device: on meta its shape is all
    # that counts; on real tensors, one made on meta never had values, and zeros stand in as for meta weights.
    if recorder.on_meta:
        args, kwargs = meta_if_mixed(args, kwargs)
    stand_in_bytes = 0 if recorder.on_meta else meta_stand_in_bytes(args, kwargs)
    try:
        result = NotImplemented if recorder.kernel is None else recorder.kernel(name, func, tuple(args), kwargs)
        if result is not NotImplemented:
            return result
        if recorder.guard is not None:
            where = f"{name} in {recorder.scope() or MODEL_FORWARD}"
            recorder.guard(recorder.held_bytes, stand_in_bytes + result_bytes_on_meta(func, args, kwargs), where)
        args, kwargs = (args, kwargs) if recorder.on_meta else real_if_mixed(args, kwargs)
        recorder.held_bytes += stand_in_bytes
        result = func(*args, **kwargs)
    except Exception as exc:
        recorder.needs_values = recorder.needs_values or _needs_values(raw_name, args, kwargs, exc)
        raise
    if recorder.guard is not None:
        inputs = tensors_in(list(args)) + tensors_in(kwargs)
        recorder.held_bytes += new_storage_bytes(tensors_in(result), inputs)
    return result


def _function_mode(recorder: _Recorder) -> Any:
    from torch.overrides import TorchFunctionMode

    class DataflowMode(TorchFunctionMode):
        """Records functional operations (``x + residual``, ``torch.flatten``) that no module hook sees."""

        def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            kwargs = kwargs or {}
            raw_name = getattr(func, "__name__", "")
            if raw_name in _METADATA:  # .shape, .dim(), .dtype: nothing to record, and called very often
                return func(*args, **kwargs)
            name = function_name(func)
            spec = op_for_function(name)
            call = Call(None, tuple(args), kwargs, name=raw_name)
            if not recorder.opaque_depth:
                recorder.current_op, recorder.current_call = name, (args, kwargs)
            result = _run_function(recorder, spec, call, name, func)
            recorder.current_op = ""
            if not recorder.opaque_depth:
                _record_function(recorder, spec, call, name, result)
            return result

    return DataflowMode()


def _run_function(recorder: _Recorder, spec: OpSpec | None, call: Call, name: str, func: Any) -> Any:
    """The call's result: the table's shape rule on the fast path, else the recorder's kernel or torch (``_run``)."""
    result = NotImplemented if recorder.train else _fast_result(spec, call, recorder.exact_checked_shapes)
    if result is NotImplemented:
        result = _run(recorder, func, name, call.name, call.args, call.kwargs)
    return result


def _record_function(recorder: _Recorder, spec: OpSpec | None, call: Call, name: str, result: Any) -> None:
    """A node for a functional call that reads a tracked tensor and returns one; a warning when it reads a tracked
    value to decide what to run; a constant node for counted work on constants alone."""
    outputs = tensors_in(result)
    reads_value = call.name in _VALUE_READS
    if not outputs and not reads_value:
        return
    tensors = tensors_in(list(call.args)) + tensors_in(call.kwargs)
    if spec is not None and name in spec.shape_donors:
        tensors = tensors[:1]  # the others lend only their shape or dtype
    tracked = [t for t in tensors if id(t) in recorder.producers]
    if not tracked:
        if outputs and spec is not None and spec.macs is not None:
            _constant_work(recorder, spec, call, name, tensors, outputs)
        return
    if reads_value:
        where = recorder.scope() or "the model's forward"
        source = recorder.layer_behind(recorder.producers[id(tracked[0])])
        recorder.warn(f"{where} reads the value of {source} ({call.name or name}) to decide what to run; the "
                      "pass used an all-zero input, so a branch taken only for other inputs is not in this report")
    if outputs and (spec is None or not spec.constant):
        _function_node(recorder, spec or get_op("unknown"), call, name, tensors, tracked, outputs)


def _function_node(recorder: _Recorder, spec: OpSpec, call: Call, name: str, tensors: list[Any], tracked: list[Any],
                   outputs: list[Any]) -> None:
    """Add the node of a functional call; an entry whose geometry rule fails on it counts as unknown."""
    call.input_shapes = tuple(shape_of(t) for t in tensors)
    call.output_shapes = tuple(shape_of(t) for t in outputs)
    call.tensor_nodes = tuple(recorder.producers.get(id(t)) for t in tensors)
    try:
        geometry, attrs = spec.geometry(call)
    except (RuntimeError, TypeError, ValueError, IndexError, KeyError, AttributeError, ZeroDivisionError):
        spec, geometry, attrs = get_op("unknown"), Geometry(OpKind.UNKNOWN), {}
    recorder.add_node(recorder.unique_op_name(name), name, geometry, tracked, outputs, op=spec.name,
                      attrs=attrs, grads=requires_grads(tensors) if recorder.train else ())


def _declared_geometry(module: Any, args: Any, kwargs: Any, inputs: list[Any]) -> Geometry | None:
    """What a module the capture looks inside declares, when its class is a windowed one (a ``Conv2d`` subclass
    with its own forward): the padding it says, to set beside the padding it runs."""
    spec = declared_op(module)
    if spec is None or not spec.checked:
        return None
    try:
        geometry, _ = spec.geometry(Call(module, tuple(args), kwargs, input_shapes=tuple(shape_of(t) for t in inputs)))
    except (RuntimeError, TypeError, ValueError, IndexError, KeyError, AttributeError):
        return None
    return geometry if geometry.kind.has_window else None


def _constant_work(recorder: _Recorder, spec: OpSpec, call: Call, name: str, tensors: list[Any],
                   outputs: list[Any]) -> None:
    """A functional operation that does counted work (a product) on constants alone: a constant node, so that its
    MACs count. Other operations on constants (``arange``, ``sin``) are not recorded."""
    call.input_shapes = tuple(shape_of(t) for t in tensors)
    call.output_shapes = tuple(shape_of(t) for t in outputs)
    call.tensor_nodes = (None,) * len(tensors)
    try:
        geometry, attrs = spec.geometry(call)
    except (RuntimeError, TypeError, ValueError, IndexError, KeyError, AttributeError, ZeroDivisionError):
        return
    recorder.add_node(recorder.unique_op_name(name), name, geometry, tensors, outputs, op=spec.name, attrs=attrs,
                      grads=requires_grads(tensors) if recorder.train else ())  # a product of parameters trains


def _module_geometry(recorder: _Recorder, module: Any, args: Any, kwargs: Any, inputs: list[Any]
                     ) -> tuple[OpSpec | None, Geometry | None, dict[str, Any], Geometry | None]:
    """A module call's table entry, geometry and attributes (no entry inside a module the table already covers, or
    when its geometry rule fails on the call); else what a windowed class declares."""
    if recorder.opaque_depth:
        return None, None, {}, None
    spec = op_for_module(module)
    if spec is None:
        return None, None, {}, _declared_geometry(module, args, kwargs, inputs)
    call = Call(module, tuple(args), kwargs, input_shapes=tuple(shape_of(t) for t in inputs),
                tensor_nodes=tuple(recorder.producers.get(id(t)) for t in inputs))
    try:
        geometry, attrs = spec.geometry(call)
    except (RuntimeError, TypeError, ValueError, IndexError, KeyError, AttributeError):
        return None, None, {}, None
    return spec, geometry, attrs, None


def _make_hooks(recorder: _Recorder, root: Any) -> tuple[Any, Any]:
    """Pre/post hook factories in torchinfo's manner: small closures over one shared recorder."""

    def pre_hook(module: Any, args: Any, kwargs: Any) -> None:
        inputs = tensors_in(list(args)) + tensors_in(kwargs)
        if module is root:
            for tensor in inputs:
                if id(tensor) not in recorder.producers:
                    recorder.add_node(INPUT_OP, INPUT_OP, Geometry(OpKind.ELEMENTWISE), [], [tensor], op=INPUT_OP)
            return
        spec, geometry, attrs, declared = _module_geometry(recorder, module, args, kwargs, inputs)
        parent = recorder.stack[-1] if recorder.stack else None
        call_record = _Call(
            index=len(recorder.calls), module=module, name=recorder.names.get(id(module), type(module).__name__),
            depth=(parent.depth + 1) if parent else 1, parent=parent.index if parent else None,
            is_leaf=spec is not None or not any(True for _ in module.children()), spec=spec,
            geometry=geometry, attrs=attrs, input_shapes=tuple(shape_of(t) for t in inputs), declared=declared,
        )
        call_record.inputs = inputs
        call_record.input_nodes = recorder.input_nodes(inputs)
        if recorder.train and spec is not None:
            call_record.grads = requires_grads([*inputs, *module.parameters()])
        recorder.calls.append(call_record)
        recorder.stack.append(call_record)
        if spec is not None:
            recorder.opaque_depth += 1

    def post_hook(module: Any, args: Any, kwargs: Any, output: Any) -> None:
        if module is root:
            return
        call = recorder.stack.pop()
        outputs = tensors_in(output)
        call.output_shapes = tuple(shape_of(t) for t in outputs)
        inputs, call.inputs = call.inputs, []
        if call.spec is not None:
            recorder.opaque_depth -= 1
            if call.geometry is not None and outputs:
                call.node = recorder.add_node(call.name, type(module).__name__, call.geometry, inputs, outputs,
                                              record=call.index, op=call.spec.name, attrs=call.attrs,
                                              grads=call.grads)
        call.output_node = recorder.produced_by(outputs[0]) if outputs else None

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
        trainable_params=trainable, geometry=call.geometry if call.geometry is not None and call.geometry.kind
        is not OpKind.UNKNOWN else None,
        in_features=in_features if isinstance(in_features, int) else None,
        out_features=out_features if isinstance(out_features, int) else None,
        has_bias=getattr(module, "bias", None) is not None and call.spec is not None, node=call.node,
        input_nodes=call.input_nodes, output_node=call.output_node, declared=call.declared,
    )


@contextmanager
def _instrumented(model: Any, recorder: _Recorder, modules: list[Any] | None = None) -> Iterator[None]:
    """Hooks on every module (or only on ``modules``) and the dataflow mode, all removed in one finally. Modules'
    modes are the caller's: a recomputation in the backward runs each module in the mode it is in, as torch does."""
    pre_hook, post_hook = _make_hooks(recorder, model)
    handles = []
    try:
        for module in model.modules() if modules is None else modules:
            handles.append(module.register_forward_pre_hook(pre_hook, with_kwargs=True))
            handles.append(module.register_forward_hook(post_hook, with_kwargs=True))
        with _function_mode(recorder):
            yield
    finally:
        for handle in handles:
            handle.remove()


def model_dtype(model: nn.Module) -> str:
    """The dtype of the model's first floating-point parameter ("float32" when it has none)."""
    for parameter in model.parameters():
        if parameter.is_floating_point():
            return str(parameter.dtype).removeprefix("torch.")
    return "float32"


@dataclass(frozen=True)
class ModelInputs:
    """What the forward pass is called with: tensors by position and by keyword (shapes and dtypes count, and the
    values when the pass must run for real)."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def shapes(self) -> tuple[Shape, ...]:
        return tuple(shape_of(t) for t in tensors_in(list(self.args)) + tensors_in(self.kwargs))

    def on(self, device: str) -> ModelInputs:
        """The same inputs on ``device``: empty tensors on meta, the values themselves (or zeros) elsewhere."""
        import torch

        def moved(value: Any) -> Any:
            if isinstance(value, torch.Tensor):
                if device == "meta":
                    return meta_empty(value.shape, value)
                if value.is_meta:
                    return torch.zeros(tuple(value.shape), dtype=value.dtype, device=device)
                return value.detach().to(device)
            if isinstance(value, (list, tuple)):
                return type(value)(moved(item) for item in value)
            if isinstance(value, dict):
                return {key: moved(item) for key, item in value.items()}
            return value

        return ModelInputs(tuple(moved(a) for a in self.args), {k: moved(v) for k, v in self.kwargs.items()})


def zeros_inputs(shapes: Sequence[Shape], dtype: str) -> ModelInputs:
    """One all-zero tensor per shape (defined values if the pass runs for real), on the meta device."""
    import torch

    return ModelInputs(tuple(torch.zeros(tuple(shape), dtype=getattr(torch, dtype), device="meta")
                             for shape in shapes))


def _feature_modules(model: Any) -> tuple[str, ...]:
    """Module names of the stages a model declares: timm's ``feature_info`` (a list of dicts or a FeatureInfo)."""
    info = getattr(model, "feature_info", None)
    entries = getattr(info, "info", info)
    if not isinstance(entries, (list, tuple)):
        return ()
    names = tuple(entry.get("module") for entry in entries if isinstance(entry, dict))
    return tuple(name for name in names if isinstance(name, str) and name) if all(names) else ()


def working_copy(model: nn.Module, device: str = "meta") -> nn.Module:
    """The model a pass runs: itself when it is all on meta already (as the CLI builds them: nothing to protect,
    and only its modes are put back), else a structural copy on ``device``, so its weights are never touched."""
    on_meta = device == "meta" and all(t.is_meta for t in (*model.parameters(), *model.buffers()))
    return model if on_meta else structural_copy(model, device)


def new_recorder(working: nn.Module, exact_checked_shapes: bool = False, train: bool = False,
                 guard: Callable[[int, int, str], None] | None = None, names: dict[int, str] | None = None
                 ) -> _Recorder:
    """The state one instrumented pass over ``working`` fills (``names``: its modules' names, when known)."""
    if names is None:
        names = {id(m): name for name, m in working.named_modules() if name}
    return _Recorder(names=names, exact_checked_shapes=exact_checked_shapes, train=train, guard=guard)


@contextmanager
def instrumented_forward(working: nn.Module, recorder: _Recorder, placed: ModelInputs) -> Iterator[None]:
    """Hooks and the dataflow mode around a forward of ``working`` (train mode for a training pass, else eval);
    a failure becomes a one-line ForwardError naming the module that raised; every module's mode is put back."""
    modes = {module: module.training for module in working.modules()}
    working.train(recorder.train)
    first = next(iter(tensors_in(list(placed.args)) + tensors_in(placed.kwargs)), None)
    element_size = first.element_size() if first is not None else 4
    try:
        with _instrumented(working, recorder):
            yield
    except InspectError:  # the guard's refusal, not the model's failure
        raise
    except Exception as exc:  # the model's own code may raise anything
        error = forward_failure(recorder, exc, working, placed.shapes)
        error.needs_values = recorder.needs_values
        error.recorded_bytes = sum(math.prod(shape) * element_size for node in recorder.nodes
                                   for shape in node.output_shapes)
        raise error from exc
    finally:
        for module, mode in modes.items():
            module.training = mode


def run_capture(model: nn.Module, inputs: ModelInputs, model_name: str = "", device: str = "meta",
                exact_checked_shapes: bool = False, guard: Callable[[int, int, str], None] | None = None) -> Capture:
    """Run one instrumented forward pass of a structural copy of ``model`` on ``inputs``.

    ``exact_checked_shapes`` takes the output shape of every windowed operation from torch's own kernels (the
    observed side of `verify`), not from the table's fast shape rules. ``guard`` (for a pass on real tensors) is
    asked before each operation whether its result still fits (see ``_Recorder.guard``).
    """
    import torch

    working = working_copy(model, device)
    recorder = new_recorder(working, exact_checked_shapes, guard=guard)
    recorder.on_meta = device == "meta"
    placed = inputs.on(device)
    if guard is not None:
        recorder.held_bytes += new_storage_bytes([*working.parameters(), *working.buffers(),
                                                  *tensors_in(list(placed.args)), *tensors_in(placed.kwargs)])
    with torch.no_grad(), instrumented_forward(working, recorder, placed):
        output = working(*placed.args, **placed.kwargs)
    return assemble_capture(model, recorder, inputs, placed, output, model_name, device)


def assemble_capture(model: nn.Module, recorder: _Recorder, inputs: ModelInputs, placed: ModelInputs, output: Any,
                     model_name: str, device: str) -> Capture:
    """Freeze what one pass recorded into a Capture (parameters and bytes are those of ``model``)."""
    outputs = named_tensors(output)
    output_nodes = tuple(recorder.producers.get(id(tensor)) for _, tensor in outputs)
    output_node = next((node for node in output_nodes if node is not None), 0)
    params, trainable = _count(model)
    bytes_by_dtype: dict[str, int] = {}
    seen: set[int] = set()
    for parameter in model.parameters():
        if id(parameter) not in seen:
            seen.add(id(parameter))
            key = str(parameter.dtype).removeprefix("torch.")
            bytes_by_dtype[key] = bytes_by_dtype.get(key, 0) + parameter.numel() * parameter.element_size()
    buffer_bytes = sum(b.numel() * b.element_size() for b in model.buffers())
    input_shapes = inputs.shapes
    first_input = next((t for t in tensors_in(list(placed.args)) + tensors_in(placed.kwargs)), None)
    dtype = str(first_input.dtype).removeprefix("torch.") if first_input is not None else model_dtype(model)
    return Capture(
        model_name=model_name or type(model).__name__, model_type=type(model).__name__,
        input_shape=input_shapes[0] if input_shapes else (), output_shape=shape_of(outputs[0][1]) if outputs else (),
        layers=tuple(_freeze(call) for call in recorder.calls), nodes=tuple(recorder.nodes),
        output_node=output_node, params=params, trainable_params=trainable,
        param_bytes=sum(bytes_by_dtype.values()), param_bytes_by_dtype=bytes_by_dtype,
        buffer_bytes=buffer_bytes, dtype=dtype, input_shapes=input_shapes,
        output_shapes=tuple(shape_of(t) for _, t in outputs), output_names=tuple(name for name, _ in outputs),
        output_nodes=output_nodes, feature_modules=_feature_modules(model), warnings=tuple(recorder.warnings),
        device=device,
    )


def input_shape_for(model: nn.Module, input_size: int | Sequence[int], batch_size: int = 1,
                    in_channels: int | None = None) -> Shape:
    """(N, C, *spatial): an int gives every spatial axis that size (their number taken from the model); three
    channels unless given."""
    if isinstance(input_size, int):
        spatial = (input_size,) * spatial_rank(model)
    else:
        spatial = tuple(int(size) for size in input_size)
    return (batch_size, in_channels or 3, *spatial)


def capture_inputs(model: nn.Module, inputs: ModelInputs, model_name: str = "", exact_checked_shapes: bool = False,
                   real_pass_guard: Callable[[int, int, str], None] | None = None) -> Capture:
    """Capture ``model`` on the meta device; fall back to real CPU tensors if its forward needs values.

    ``real_pass_guard(held_bytes, next_bytes, where)`` is asked before that fallback allocates anything (the
    weights and inputs held, what the meta pass had produced to come, ``where`` empty), then before each operation
    of the real pass (see ``_Recorder.guard``): what the pass holds is bounded from above at every step, so a
    model that reads a value early cannot pass with the little the meta pass saw.
    """
    try:
        return run_capture(model, inputs, model_name, device="meta", exact_checked_shapes=exact_checked_shapes)
    except InputTooSmallError:
        raise
    except ForwardError as error:
        if not error.needs_values:  # the pass says why it stopped: only a want of values is worth a real pass
            raise
        if real_pass_guard is not None:
            weights = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
            given = sum(t.numel() * t.element_size() for t in tensors_in(list(inputs.args)) + tensors_in(inputs.kwargs))
            real_pass_guard(weights + given, error.recorded_bytes, "")
        return run_capture(model, inputs, model_name, device="cpu", exact_checked_shapes=exact_checked_shapes,
                           guard=real_pass_guard)


def size_inputs(model: nn.Module, input_size: int | Sequence[int], batch_size: int = 1,
                in_channels: int | None = None) -> ModelInputs:
    """One all-zero input of ``(batch_size, channels, *input_size)`` in the model's dtype (see ``input_shape_for``)."""
    return zeros_inputs([input_shape_for(model, input_size, batch_size, in_channels)], model_dtype(model))


def capture(model: nn.Module, input_size: int | Sequence[int] = (224, 224), batch_size: int = 1,
            in_channels: int | None = None, model_name: str = "", exact_checked_shapes: bool = False,
            real_pass_guard: Callable[[int, int, str], None] | None = None) -> Capture:
    """Capture ``model`` on an all-zero input of ``input_size`` (meta device first, real CPU tensors if needed,
    asking ``real_pass_guard`` as ``capture_inputs`` does)."""
    inputs = size_inputs(model, input_size, batch_size, in_channels)
    return capture_inputs(model, inputs, model_name, exact_checked_shapes, real_pass_guard)


def smallest_input_size(model: nn.Module, in_channels: int | None = None, limit: int = 4096) -> int | None:
    """The smallest input size (every spatial axis) for which ``model``'s forward pass runs (None if none up to
    ``limit``)."""

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


__all__ = [
    "Capture",
    "ModelInputs",
    "OpKind",
    "capture",
    "capture_inputs",
    "input_shape_for",
    "meta_result",
    "named_tensors",
    "run_capture",
    "size_inputs",
    "smallest_input_size",
    "spatial_rank",
    "structural_copy",
    "zeros_inputs",
]
