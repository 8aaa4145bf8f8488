"""One training step on the meta device, in named steps: prepare, forward, backward, optimizer, assemble.

Every step writes to one ``StorageLedger`` (ledger.py), whose phase says which step runs; the assembly turns the
ledger's events into ``MemoryEvent`` records, each with its ``MemoryKind``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from resnet_inspect.capture.checkpointing import CheckpointTracer
from resnet_inspect.capture.trace import (
    ModelInputs,
    assemble_capture,
    instrumented_forward,
    new_recorder,
    structural_copy,
    tensors_in,
)
from resnet_inspect.capture.training.kernels import device_kernels
from resnet_inspect.capture.training.ledger import SavedStorage, StorageLedger, tracking_mode
from resnet_inspect.capture.training.meta_kernels import fast_meta
from resnet_inspect.capture.training.optimizer import optimizer_step
from resnet_inspect.capture.training.options import TrainOptions
from resnet_inspect.capture.training.sparse import gradient_bytes
from resnet_inspect.records import Capture, MemoryEvent, MemoryKind, ParameterRecord, StepPhase, TrainingCapture

if TYPE_CHECKING:
    from torch import nn


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
    held: list[Any] = field(default_factory=list)  # what the loop holds until the step ends: output, losses
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
    """The meta copy of ``model`` and ``inputs`` in the step's dtype; weights and inputs are held before the step."""
    import torch

    working = structural_copy(model, "meta")
    if options.dtype is not None:
        working = working.to(getattr(torch, options.dtype))
    placed = _in_dtype(inputs.on("meta"), options.dtype)
    recorder = new_recorder(working, train=True)
    recorder.kernel = kernels = device_kernels(options)
    parameters = list({id(p): p for p in working.parameters()}.values())
    buffers = list(working.buffers())
    ledger = StorageLedger(weights=_storage_ids([*parameters, *buffers]),
                           inputs=_storage_ids(tensors_in(list(placed.args)) + tensors_in(placed.kwargs)))
    return _Step(options, working, inputs, placed, recorder, kernels, parameters, buffers, ledger)


def _forward(step: _Step, model_name: str) -> tuple[Capture, list[SavedStorage], list[Any]]:
    """The instrumented train-mode forward: its capture, the saved activations alive at its end, and the losses
    (one sum per floating output that needs a gradient). The output is held to the end of the step, as a
    training loop's ``output = model(x)`` holds it through ``loss.backward()`` and the optimizer step."""
    import torch

    recorder, ledger = step.recorder, step.ledger

    def pack(tensor: Any) -> Any:
        ledger.save(tensor, recorder.stack[-1].index if recorder.stack else None)
        # The same storage, without its autograd history: a node that saves its own output (relu, sigmoid) would
        # otherwise hold that output's grad_fn, itself, in a cycle no collector breaks, and a graph the loss never
        # reaches (a detached teacher's) would outlive its outputs.
        return tensor.detach()

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), \
            instrumented_forward(step.working, recorder, step.placed):
        ledger.follow = lambda: recorder.stack[-1].name if recorder.stack else ""
        output = step.working(*step.placed.args, **step.placed.kwargs)
    ledger.follow = None
    if step.kernels.autocast is not None:  # autocast lets its cast weights go when the forward ends
        step.kernels.autocast.cache.clear()
    capture = assemble_capture(step.working, recorder, step.given, step.placed, output, model_name, "meta")
    recorder.current_call = ((), {})
    kept = ledger.kept()
    losses = [t.sum() for t in tensors_in(output) if t.requires_grad and t.is_floating_point()]
    step.held += [output, losses]
    return capture, kept, losses


def _backward(step: _Step, losses: list[Any]) -> None:
    """Autograd's backward from ``losses``; marks the gradients it leaves, or records why it could not run on
    meta."""
    import torch

    ledger = step.ledger
    ledger.phase, ledger.layer = StepPhase.BACKWARD, "the loss"
    if losses:
        try:
            torch.autograd.backward(losses)
        except Exception as exc:  # the model's own backward may raise anything
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            step.backward_error = (f"the backward pass cannot run on the meta device (at {ledger.layer}: {reason}); "
                                   "its memory is not estimated")
    gradients = [p.grad for p in step.trainable if p.grad is not None]
    step.graded = {id(p): gradient_bytes(p.grad) for p in step.trainable if p.grad is not None}
    step.kinds.update(dict.fromkeys(ledger.numbers_of(gradients), MemoryKind.GRADIENT))


def _optimizer(step: _Step) -> None:
    """torch's optimizer step over the gradients (skipped when the backward failed), then zero_grad(set_to_none)."""
    import torch

    trainable = step.trainable
    if step.backward_error is None:
        step.ledger.phase, step.ledger.layer = StepPhase.OPTIMIZER, "the optimizer step"
        with torch.no_grad():
            optimizer_step(step.options.optimizer, trainable, step.optimizer_state,
                           foreach=True if step.options.device.startswith("cuda") else None)
        states = [t for entry in step.optimizer_state.values() for t in entry]
        step.kinds.update(dict.fromkeys(step.ledger.numbers_of(states), MemoryKind.STATE))
    for parameter in trainable:
        parameter.grad = None


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
    given = tensors_in(list(step.placed.args)) + tensors_in(step.placed.kwargs)
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
    with tracking_mode(step.ledger, fast_meta(options.device)), _backward_labels(step.working, step.ledger), \
            checkpoints.patched():
        capture, kept, losses = _forward(step, model_name)
        checkpoints.backward = True
        _backward(step, losses)
        del losses
        _optimizer(step)
        step.held.clear()  # the step ends: the loop lets its output go
    capture = _reached_only(capture, step.recorder.reached, step.backward_error is None)
    return replace(_assemble(step, checkpoints.differentiated(capture), kept),
                   recomputed_nodes=checkpoints.recomputed_nodes())


__all__ = ["run_training_pass"]
