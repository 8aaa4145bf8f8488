"""One training step on the meta device, in named steps: prepare, the step itself (forward, loss, backward,
optimizer, as loop.py's built-in step or the user's own runs them), assemble.

Every step writes to one ``StorageLedger`` (ledger.py), whose phase says which step runs; the assembly turns the
ledger's events into ``MemoryEvent`` records, each with its ``MemoryKind``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from resnet_inspect.capture.checkpointing import CheckpointTracer, wrap_modules
from resnet_inspect.capture.trace import (
    ModelInputs,
    assemble_capture,
    instrumented_forward,
    new_recorder,
    structural_copy,
    tensors_in,
)
from resnet_inspect.capture.training.kernels import autocast_blocks, device_kernels, kernel_temporaries
from resnet_inspect.capture.training.ledger import SavedStorage, StorageLedger, tracking_mode
from resnet_inspect.capture.training.loop import ModelHandle, StepOptimizer, builtin_step, loss_terms
from resnet_inspect.capture.training.meta_kernels import fast_meta
from resnet_inspect.capture.training.optimizer import optimizer_step
from resnet_inspect.capture.training.options import TrainOptions
from resnet_inspect.capture.training.sparse import gradient_bytes
from resnet_inspect.errors import BadInputError, ForwardError
from resnet_inspect.names import first_line
from resnet_inspect.records import Capture, MemoryEvent, MemoryKind, ParameterRecord, StepPhase, TrainingCapture

if TYPE_CHECKING:
    from torch import nn


def _no_layer() -> int | None:
    return None


@dataclass
class _Step:
    """The working copy of the model on meta, its inputs, and the ledger every step writes to."""

    options: TrainOptions
    working: Any  # the model's structural copy on meta
    given: ModelInputs  # the inputs as the caller gave them
    placed: ModelInputs  # the inputs on meta, in the step's dtype
    recorder: Any
    kernels: Any
    parameters: list[Any]
    buffers: list[Any]
    ledger: StorageLedger
    optimizer_state: dict[int, list[Any]] = field(default_factory=dict)
    kinds: dict[int, MemoryKind] = field(default_factory=dict)  # allocation number -> kind, when not activation
    capture: Capture | None = None  # the first forward's
    kept: list[SavedStorage] = field(default_factory=list)  # the saved activations alive at its end
    targets: dict[Any, Any] = field(default_factory=dict)  # the batch's loss targets, held with the input
    saving_layer: Callable[[], int | None] = _no_layer  # the LayerRecord index running, in the first forward
    backward_started: bool = False
    backward_error: str | None = None
    graded: dict[int, int] = field(default_factory=dict)  # id() of a parameter given a gradient -> its bytes

    @property
    def trainable(self) -> list[Any]:
        return [p for p in self.parameters if p.requires_grad]


def _storage_ids(tensors: list[Any]) -> set[int]:
    return {id(tensor.untyped_storage()) for tensor in tensors}


def _bytes_of(tensors: list[Any]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _in_dtype(inputs: ModelInputs, dtype: str | None) -> ModelInputs:
    """``inputs`` with their floating tensors converted to ``dtype`` (unchanged when None)."""
    import torch

    if dtype is None:
        return inputs

    def convert(value: Any) -> Any:
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            return value.to(getattr(torch, dtype))
        return value

    return ModelInputs(tuple(convert(t) for t in inputs.args), {k: convert(t) for k, t in inputs.kwargs.items()})


def _prepare(model: nn.Module, inputs: ModelInputs, options: TrainOptions) -> _Step:
    """The meta copy of ``model`` and ``inputs`` in the step's dtype; weights and inputs are held before the step.
    The copy is in train mode for the whole step, as the forward runs it: a checkpointed region's recomputation in
    the backward runs as its forward did, whatever mode ``model`` is in."""
    import torch

    working = structural_copy(model, "meta").train()
    if options.dtype is not None:
        working = working.to(getattr(torch, options.dtype))
    if options.checkpoint:
        working = wrap_modules(working, options.checkpoint)
    placed = _in_dtype(inputs.on("meta"), options.dtype)
    recorder = new_recorder(working, train=True)
    recorder.kernel = kernels = device_kernels(options)
    parameters = list({id(p): p for p in working.parameters()}.values())
    buffers = list(working.buffers())
    ledger = StorageLedger(weights=_storage_ids([*parameters, *buffers]),
                           inputs=_storage_ids(tensors_in(list(placed.args)) + tensors_in(placed.kwargs)))
    return _Step(options, working, inputs, placed, recorder, kernels, parameters, buffers, ledger)


@contextmanager
def _saved_tensors(step: _Step) -> Iterator[None]:
    """Every tensor autograd saves in the forward phase (the model's and the loss's) is noted in the ledger, with
    the layer running when it was saved."""
    import torch

    def pack(tensor: Any) -> Any:
        if step.ledger.phase == StepPhase.FORWARD:
            step.ledger.save(tensor, step.saving_layer())
        # The same storage, without its autograd history: a node that saves its own output (relu, sigmoid) would
        # otherwise hold that output's grad_fn, itself, in a cycle no collector breaks, and a graph the loss never
        # reaches (a detached teacher's) would outlive its outputs.
        return tensor.detach()

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        yield


class _BackwardFailed(Exception):
    """The backward could not run on meta (the message says where and why)."""


def _model_forward(step: _Step, model_name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """One train-mode forward of the meta copy, instrumented: the first one's capture is the step's (with the saved
    activations alive at its end); a later micro-batch's is recorded apart, for the names of its layers only."""
    import torch

    first = step.capture is None
    recorder = step.recorder if first else new_recorder(step.working, train=True)
    recorder.kernel = step.kernels
    ledger = step.ledger
    ledger.phase = StepPhase.FORWARD
    called = ModelInputs(tuple(args), dict(kwargs))

    step.saving_layer = lambda: recorder.stack[-1].index if recorder.stack and first else None
    with torch.enable_grad(), instrumented_forward(step.working, recorder, called):
        ledger.follow = lambda: recorder.stack[-1].name if recorder.stack else ""
        output = step.working(*args, **kwargs)
    ledger.follow, ledger.layer, step.saving_layer = None, "the loss", _no_layer
    if step.kernels.autocast is not None:  # autocast lets its cast weights go when the forward ends
        step.kernels.autocast.cache.clear()
    if first:
        same = len(args) == len(step.placed.args) and all(a is b for a, b in zip(args, step.placed.args, strict=True))
        given = step.given if same and not kwargs else called
        step.capture = assemble_capture(step.working, recorder, given, called, output, model_name, "meta")
    recorder.current_call = ((), {})
    return output


def _target(step: _Step, output: Any, loss: str) -> Any:
    """The batch's target for ``loss`` against ``output``, loaded with the input before the step (never one of the
    step's allocations): class indices for cross-entropy, a tensor like the output for mse."""
    import torch
    from torch.utils._python_dispatch import _disable_current_modes

    shape = (output.shape[0], *output.shape[2:]) if loss == "cross-entropy" else tuple(output.shape)
    key = (loss, shape, output.dtype)
    if key not in step.targets:
        with _disable_current_modes():
            dtype = torch.long if loss == "cross-entropy" else output.dtype
            step.targets[key] = torch.empty(shape, dtype=dtype, device="meta")
        step.ledger.inputs.add(id(step.targets[key].untyped_storage()))
    return step.targets[key]


@contextmanager
def _backward_phase(step: _Step, checkpoints: CheckpointTracer) -> Iterator[None]:
    """While the step runs, ``torch.autograd.backward`` (and so ``Tensor.backward``) marks the backward phase, lets
    checkpointed regions record their recomputation (the first micro-batch's), and notes the gradients it leaves;
    a backward that cannot run on meta ends the step with the reason."""
    import torch

    original = torch.autograd.backward
    ledger = step.ledger

    def backward(*args: Any, **kwargs: Any) -> None:
        if checkpoints.backward:  # the reentrant checkpoint's own backward, inside the step's
            original(*args, **kwargs)
            return
        if not step.backward_started:  # what the first backward starts from: saved by the model and the loss
            step.kept, step.backward_started = ledger.kept(), True
        ledger.phase, ledger.layer = StepPhase.BACKWARD, "the loss"
        checkpoints.backward = True
        try:
            original(*args, **kwargs)
        except Exception as exc:  # the model's own backward may raise anything
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise _BackwardFailed(f"the backward pass cannot run on the meta device (at {ledger.layer}: {reason}); "
                                  "its memory is not estimated") from None
        finally:
            checkpoints.backward, checkpoints.recording = False, False
        graded = [p for p in step.trainable if p.grad is not None]
        step.graded.update({id(p): gradient_bytes(p.grad) for p in graded})
        step.kinds.update(dict.fromkeys(ledger.numbers_of([p.grad for p in graded]), MemoryKind.GRADIENT))
        ledger.phase, ledger.layer = StepPhase.FORWARD, "the loss"

    torch.autograd.backward = backward
    try:
        yield
    finally:
        torch.autograd.backward = original


def _optimizer(step: _Step) -> None:
    """torch's optimizer step over the gradients (what the step's ``optimizer.step()`` runs)."""
    import torch

    step.ledger.phase, step.ledger.layer = StepPhase.OPTIMIZER, "the optimizer step"
    with torch.no_grad():
        optimizer_step(step.options.optimizer, step.trainable, step.optimizer_state,
                       foreach=True if step.options.device.startswith("cuda") else None)
    states = [t for entry in step.optimizer_state.values() for t in entry]
    step.kinds.update(dict.fromkeys(step.ledger.numbers_of(states), MemoryKind.STATE))


def _run_step(step: _Step, model_name: str) -> None:
    """The step, the built-in one or the user's, with the model and optimizer handles; a backward that cannot
    run on meta is noted, and anything else the user's step raises is one line."""
    options = step.options
    model = ModelHandle(step.working, lambda *args, **kwargs: _model_forward(step, model_name, args, kwargs))
    optimizer = StepOptimizer(step.trainable, lambda: _optimizer(step))
    try:
        if options.step is None:
            builtin_step(model, optimizer, step.placed,
                         lambda output: loss_terms(output, options.loss, lambda o, name: _target(step, o, name)),
                         min(options.accumulate, 2))  # every micro-batch after the first is the second's twin
        else:
            with _values_read_as_zero(step):
                options.step(model, optimizer, *step.placed.args, **step.placed.kwargs)
    except _BackwardFailed as failed:
        step.backward_error = str(failed)
    except (BadInputError, ForwardError):
        raise
    except Exception as exc:
        if options.step is None:
            raise
        reason = first_line(str(exc))
        raise BadInputError(f"the training step raised {type(exc).__name__}"
                            + (f": {reason}" if reason else "")) from None
    if step.capture is None:
        raise BadInputError("the training step never called the model")
    for parameter in step.trainable:
        parameter.grad = None


@contextmanager
def _values_read_as_zero(step: _Step) -> Iterator[None]:
    """In a user's step, ``Tensor.item()`` on meta (a logged loss, GradScaler's inf check) reads 0, with a warning:
    the meta device holds no values, and a step's memory does not depend on them."""
    import torch

    original = torch.Tensor.item

    def item(tensor: Any) -> Any:
        if not tensor.is_meta:
            return original(tensor)
        step.recorder.warn("the training step reads values (Tensor.item()); on the meta device they read 0")
        return False if tensor.dtype == torch.bool else 0 if not tensor.is_floating_point() else 0.0

    torch.Tensor.item = item  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        torch.Tensor.item = original  # type: ignore[method-assign]


_LABEL = "resnet_inspect.layer"  # the key of a node's metadata naming the layer that claimed it


@contextmanager
def _backward_labels(working: Any, ledger: StorageLedger) -> Iterator[None]:
    """During the backward, ``ledger.layer`` names the innermost layer whose backward is running: each module's
    output node, when autograd reaches it, sets it (the first module to claim a node is the innermost). The claim
    is written in the node's own metadata: nothing here holds a node, so a graph the loss does not reach (a
    detached teacher's) dies with its outputs, and its saved activations with it, as in torch."""
    import torch

    def post_hook(name: str) -> Any:
        def hook(_module: Any, _args: Any, output: Any) -> None:
            if ledger.phase != StepPhase.FORWARD:  # a checkpointed region run again: its nodes must not be held
                return
            for tensor in tensors_in(output):
                node: Any = tensor.grad_fn if isinstance(tensor, torch.Tensor) else None
                if node is not None and _LABEL not in node.metadata:
                    node.metadata[_LABEL] = name
                    node.register_prehook(lambda _grads, label=name: setattr(ledger, "layer", label))
        return hook

    handles = [module.register_forward_hook(post_hook(name)) for name, module in working.named_modules() if name]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _modules_by_call(step: _Step) -> dict[int, Any]:
    """LayerRecord index -> the module of that call (None for calls of no named module)."""
    names = {id(module): module for name, module in step.working.named_modules() if name}
    return {call.index: names.get(id(call.module)) for call in step.recorder.calls}


def _largest_layer(capture: Capture, modules: dict[int, Any]) -> tuple[str, int]:
    """The leaf layer with the most parameters, and its parameters' bytes (what a sharded run gathers at once)."""
    leaves = [layer for layer in capture.layers if layer.is_leaf and layer.params]
    largest = max(leaves, key=lambda layer: layer.params, default=None)
    if largest is None:
        return "", 0
    return largest.name, _bytes_of(list({id(p): p for p in modules[largest.index].parameters()}.values()))


def _layer_saved(kept: list[SavedStorage]) -> dict[int, int]:
    layer_saved: dict[int, int] = {}
    for entry in kept:
        if entry.layer is not None:
            layer_saved[entry.layer] = layer_saved.get(entry.layer, 0) + entry.bytes
    return layer_saved


def parameter_records(model: Any) -> tuple[ParameterRecord, ...]:
    """Each parameter of ``model`` once, with the module that owns it directly (what FSDP's units are made of)."""
    seen: set[int] = set()
    records = []
    for name, module in model.named_modules():
        for parameter in module.parameters(recurse=False):
            if id(parameter) not in seen:
                seen.add(id(parameter))
                records.append(ParameterRecord(name, tuple(parameter.shape), parameter.element_size(),
                                               parameter.requires_grad))
    return tuple(records)


def _assemble(step: _Step, capture: Capture, kept: list[SavedStorage]) -> TrainingCapture:
    """The TrainingCapture: the ledger's events with their kinds, and the step's byte counts."""
    ledger = step.ledger
    events = tuple(MemoryEvent(event.bytes, step.kinds.get(event.number, MemoryKind.ACTIVATION), event.phase,
                               event.layer, event.number) for event in ledger.events)

    def allocated(kind: MemoryKind) -> int:
        return sum(event.bytes for event in events if event.kind == kind and event.bytes > 0)

    gradient_bytes = allocated(MemoryKind.GRADIENT)
    if step.backward_error is not None:  # what the backward would have made: a gradient per trainable parameter
        gradient_bytes = _bytes_of(step.trainable)
    modules = _modules_by_call(step)

    def graded(parameter: Any) -> bool:  # without a backward, every trainable parameter would get one
        return id(parameter) in step.graded if step.backward_error is None else parameter.requires_grad

    largest_layer, largest_bytes = _largest_layer(capture, modules)
    given = tensors_in(list(step.placed.args)) + tensors_in(step.placed.kwargs) + list(step.targets.values())
    return TrainingCapture(
        capture=capture, optimizer=step.options.optimizer, amp=step.options.amp, device=step.options.device,
        dtype=str(step.parameters[0].dtype).removeprefix("torch.") if step.parameters else capture.dtype,
        layer_saved_bytes=_layer_saved(kept),
        layer_grad_bytes={index: sum(step.graded.get(id(p), _bytes_of([p])) for p in
                                     {id(p): p for p in module.parameters() if graded(p)}.values())
                          for index, module in modules.items() if module is not None},
        saved_bytes=sum(entry.bytes for entry in kept),
        saved_tensors=len(kept) + len(ledger.saved_weights) + len(ledger.saved_inputs),
        saved_weight_bytes=sum(ledger.saved_weights.values()), saved_input_bytes=sum(ledger.saved_inputs.values()),
        weight_bytes=_bytes_of(step.parameters), buffer_bytes=_bytes_of(step.buffers),
        input_bytes=sum(t.untyped_storage().nbytes() for t in {id(t): t for t in given}.values()),
        gradient_bytes=gradient_bytes, state_bytes=allocated(MemoryKind.STATE), largest_layer=largest_layer,
        largest_layer_bytes=largest_bytes, events=events, backward_error=step.backward_error,
        parameters=parameter_records(step.working),
        loss=step.options.loss if step.options.step is None else None, accumulate=step.options.accumulate,
    )


def _reached_only(capture: Capture, reached: set[int], backward_ran: bool) -> Capture:
    """``capture`` with no operation taking part in the backward unless autograd ran its backward: a graph the
    loss does not reach (a detached teacher, an unused branch) has no backward, as in torch."""
    if not backward_ran:
        return capture
    nodes = tuple(replace(node, grads=(False,) * len(node.grads)) if any(node.grads) and node.id not in reached
                  else node for node in capture.nodes)
    return replace(capture, nodes=nodes)


def run_training_pass(model: nn.Module, inputs: ModelInputs, options: TrainOptions, model_name: str = ""
                      ) -> TrainingCapture:
    """One training step of a meta copy of ``model`` on ``inputs``: what the forward saves, the requires-grad
    flags of every operation, and every allocation and release of the step (see the package's docstring)."""
    step = _prepare(model, inputs, options)
    checkpoints = CheckpointTracer(step.working, step.recorder, lambda: step.ledger.count, step.ledger.number_of)
    mode = tracking_mode(step.ledger, fast_meta(options.device), kernel_temporaries(options.device))
    with mode, _backward_labels(step.working, step.ledger), checkpoints.patched(), \
            _backward_phase(step, checkpoints), _saved_tensors(step), autocast_blocks(step.kernels, options.device):
        _run_step(step, model_name)
    if not step.backward_started:
        step.kept = step.ledger.kept()
    assert step.capture is not None
    capture = replace(step.capture, warnings=tuple(step.recorder.warnings))  # the step's own, after the forward
    capture = _reached_only(capture, step.recorder.reached, step.backward_error is None)
    return replace(_assemble(step, checkpoints.differentiated(capture), step.kept),
                   recomputed_nodes=checkpoints.recomputed_nodes())


__all__ = ["run_training_pass"]
