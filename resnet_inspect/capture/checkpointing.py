"""Activation checkpointing in the training pass: which forward operations the backward runs again.

Every form people write goes through one of torch's two mechanisms, and the pass follows both where they start:
``torch.utils.checkpoint.checkpoint`` with ``use_reentrant=True`` runs ``CheckpointFunction`` (the forward under
``no_grad``, the whole function again in the backward, differentiated there), and without it runs
``_checkpoint_without_reentrant_generator`` (the forward with autograd on, saved tensors dropped, the function run
again when the backward first needs one of them, stopping as soon as the last one is back). ``checkpoint_sequential``,
``checkpoint_wrapper`` / ``apply_activation_checkpointing``, timm's ``checkpoint_seq`` and selective checkpointing
(a ``context_fn``) all call ``checkpoint``. The step itself is torch's own, so saved bytes and lifetimes are too.

While the pass runs, each checkpointed region notes the span of forward operations it recorded; when the backward
runs the region's function again, the same instrumentation records that recomputation. The recomputed operations
are the region's forward operations in order (the same code on the same shapes), as many as the recomputation ran:
all of them for the reentrant form, up to the one that saved the last tensor needed for the non-reentrant form.
A result that selective checkpointing serves from its cache allocates nothing and computes nothing: it is not
counted as recomputed. In the reentrant form the forward's operations ran under ``no_grad``, so which of their
inputs and weights take part in the backward is read from the recomputation, which autograd differentiates.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from types import SimpleNamespace
from typing import Any

from resnet_inspect.capture.trace import INPUT_OP, _Call, _instrumented, _Recorder, new_recorder, tensors_in
from resnet_inspect.records import Capture, Geometry, OpKind


@dataclass
class _Region:
    """One call of a checkpointed function: the forward operations it recorded, and what its recomputation ran."""

    reentrant: bool
    enclosing: _Call | None  # the module call that ran ``checkpoint`` (the scope of its operations)
    start: int  # the forward recorder's node count when the region began
    end: int = -1  # ... and when it ended
    recomputed: int = 0  # how many of the region's operations the backward ran again
    cached: list[int] = field(default_factory=list)  # positions whose result was no new storage (see _Reused)
    grads: list[tuple[bool, ...]] = field(default_factory=list)  # the recomputation's requires-grad flags
    reached: set[int] = field(default_factory=set)  # the recorder's nodes autograd differentiated (by node id)
    offset: int = 0  # the recorder's node id of the recomputation's first operation
    first_call: int = 0  # the forward recorder's module-call count when the region began
    modules: list[Any] = field(default_factory=list)  # the modules its forward called (the recomputation's too)
    autocast: str | None = None  # the low dtype autocast cast to in its forward (None: no autocast)


class CheckpointTracer:
    """Follows the checkpointed regions of one training pass (see the module docstring)."""

    def __init__(self, working: Any, forward: _Recorder, allocations: Callable[[], int],
                 allocation_of: Callable[[Any], int | None]) -> None:
        self.working, self.forward = working, forward
        self.allocations = allocations  # how many storages the step has allocated so far
        self.allocation_of = allocation_of  # the number of the allocation that made a live tensor's storage
        self.regions: list[_Region] = []
        self.backward = False  # set when the backward starts: a call of a region's function is then a recompute
        self.recording = True  # the first micro-batch's regions are followed; later ones' are its twins

    def _begin(self, reentrant: bool) -> _Region:
        enclosing = self.forward.stack[-1] if self.forward.stack else None
        region = _Region(reentrant, enclosing, len(self.forward.nodes), first_call=len(self.forward.calls))
        active = getattr(self.forward.kernel, "active", None)  # the device kernels' autocast state, if any
        region.autocast = getattr(active[-1], "low_dtype", None) if active else None
        self.regions.append(region)
        return region

    def _end(self, region: _Region) -> None:
        """The region's forward is over: where its operations end, and the modules it called, the only ones its
        recomputation needs hooks on (the same code on the same shapes)."""
        region.end = len(self.forward.nodes)
        called = {id(call.module): call.module for call in self.forward.calls[region.first_call:]}
        region.modules = list(called.values())

    def _recomputing(self, function: Callable[..., Any], region: _Region) -> Callable[..., Any]:
        """``function``, recorded by a fresh recorder when the backward calls it."""

        def run(*args: Any, **kwargs: Any) -> Any:
            if not self.backward or not self.recording:
                return function(*args, **kwargs)
            result, stop = self._record(function, region, args, kwargs)
            if stop is None:
                return result  # the reentrant form differentiates it; the other ignores it
            # a fresh one, and no local left naming it: the exception's traceback holds the frames it passed (and
            # their tensors), which a reference cycle would keep until the garbage collector runs
            try:
                raise stop
            finally:
                del stop

        return run

    def _record(self, function: Callable[..., Any], region: _Region, args: tuple[Any, ...],
                kwargs: dict[str, Any]) -> tuple[Any, BaseException | None]:
        """Run a region's function again under a fresh recorder: its result, and torch's early-stop signal when it
        came (a new instance, for the caller to raise)."""
        recorder = new_recorder(self.working, train=True, names=self.forward.names)  # the same modules
        recorder.kernel = self.forward.kernel
        stopped: BaseException | None = None
        result = None
        reused = _cache_hits(recorder, self.allocations, self.allocation_of)
        with _instrumented(self.working, recorder, region.modules), reused as cached, \
                _autocast_of(recorder.kernel, region.autocast):
            if region.enclosing is not None:
                recorder.stack.append(region.enclosing)
            for tensor in tensors_in(list(args)) + tensors_in(kwargs):
                recorder.add_node(INPUT_OP, INPUT_OP, Geometry(OpKind.ELEMENTWISE), [], [tensor], op=INPUT_OP)
            inputs = len(recorder.nodes)
            try:
                result = function(*args, **kwargs)
            except Exception as error:
                if type(error).__name__ != "_StopRecomputationError":
                    raise
                stopped = type(error)()
                error.__traceback__ = None
            finally:
                for call in recorder.calls:  # calls the early stop cut short still hold their inputs
                    call.inputs = []
                recorder.stack.clear()
                recorder.current_call = ((), {})  # the recorder lives in reference cycles: it must hold no tensor
        nodes = recorder.nodes[inputs:]
        # early stop: torch raises from the hook that saves the last tensor needed; the operation saving it ran when
        # that tensor is its result (an allocation since the last operation recorded), not when it is one of its
        # inputs (saved before the kernel runs)
        ran = stopped is not None and self.allocations() > cached.allocations
        region.recomputed = len(nodes) + int(ran)
        region.grads = [node.grads for node in nodes]
        region.reached, region.offset = recorder.reached, inputs  # filled as the reentrant backward runs
        region.cached = [node - inputs for node in cached.nodes]
        return result, stopped

    @contextmanager
    def patched(self) -> Iterator[None]:
        """torch's two checkpointing entry points, wrapped for the duration (and put back)."""
        import torch.utils.checkpoint as checkpoint_module

        function_class = checkpoint_module.CheckpointFunction
        declared_forward = function_class.__dict__["forward"]  # the staticmethod itself, put back as it was
        original_forward = function_class.forward
        original_generator = checkpoint_module._checkpoint_without_reentrant_generator
        tracer = self

        def forward(ctx: Any, run_function: Any, preserve_rng_state: bool, *args: Any) -> Any:
            if not tracer.recording:
                return original_forward(ctx, run_function, preserve_rng_state, *args)
            region = tracer._begin(reentrant=True)
            result = original_forward(ctx, tracer._recomputing(run_function, region), preserve_rng_state, *args)
            tracer._end(region)
            return result

        def generator(fn: Any, *rest: Any, **kwargs: Any) -> Iterator[None]:
            if not tracer.recording:
                yield from original_generator(fn, *rest, **kwargs)
                return
            region = tracer._begin(reentrant=False)
            yield from original_generator(tracer._recomputing(fn, region), *rest, **kwargs)
            tracer._end(region)

        function_class.forward = staticmethod(forward)  # type: ignore[method-assign]
        checkpoint_module._checkpoint_without_reentrant_generator = generator
        try:
            with _dynamo_left_unloaded(checkpoint_module):
                yield
        finally:
            function_class.forward = declared_forward  # type: ignore[method-assign]
            checkpoint_module._checkpoint_without_reentrant_generator = original_generator

    def recomputed_nodes(self) -> tuple[int, ...]:
        """The forward node ids the backward ran again, once per recomputation (a cached result excluded)."""
        recomputed: list[int] = []
        for region in self.regions:
            count = min(region.recomputed, max(region.end - region.start, 0))
            recomputed.extend(region.start + position for position in range(count)
                              if position not in region.cached)
        return tuple(recomputed)

    def differentiated(self, capture: Capture) -> Capture:
        """``capture`` with the requires-grad flags of reentrant regions' operations taken from their
        recomputation, the graph autograd differentiates (their forward ran under ``no_grad``)."""
        flags: dict[int, tuple[bool, ...]] = {}
        for region in self.regions:
            if region.reentrant:
                for position, grads in enumerate(region.grads[:max(region.end - region.start, 0)]):
                    reached = region.offset + position in region.reached
                    flags[region.start + position] = grads if reached else (False,) * len(grads)
        if not flags:
            return capture
        nodes = tuple(replace(node, grads=flags[node.id]) if node.id in flags else node for node in capture.nodes)
        return replace(capture, nodes=nodes)


class _UnloadedDynamo:
    """``torch._dynamo`` as torch's checkpoint asks for it while nothing has loaded it: to disable it around the
    checkpoint's own functions, and one setting, read for a tracing session only. Nothing can be compiling then
    (every way to compile loads it), so disabling it changes nothing. Once the real one is loaded (by anything,
    or to answer any other question), every question goes to it."""

    def __getattr__(self, name: str) -> Any:
        import importlib
        import sys

        real = sys.modules.get("torch._dynamo")
        if real is None:
            if name == "disable":
                return _nothing_to_disable
            if name == "config":
                return _UNLOADED_CONFIG
            real = importlib.import_module("torch._dynamo")
        return getattr(real, name)


_UNLOADED_CONFIG = SimpleNamespace(error_on_nested_fx_trace=True)  # torch's default


def _nothing_to_disable(fn: Any = None, recursive: bool = True, **kwargs: Any) -> Any:
    return fn if fn is not None else (lambda function: function)


@contextmanager
def _dynamo_left_unloaded(checkpoint_module: Any) -> Iterator[None]:
    """torch's checkpoint run without importing ``torch._dynamo`` (1.5 to 2 s from cold, more than a meta pass of
    resnet50) when nothing has imported it yet: ``_UnloadedDynamo`` answers for it, and the checkpoint functions'
    lazily made dynamo-disabled versions (``torch._disable_dynamo``) are, for the duration, the functions
    themselves. All put back after; left alone once dynamo is loaded."""
    import sys

    import torch

    if "torch._dynamo" in sys.modules or "_dynamo" in vars(torch):
        yield
        return
    # the attribute ``torch._disable_dynamo`` caches a function's disabled version in (set where it was not yet)
    cached = "__dynamo_disable"
    decorated = (checkpoint_module.checkpoint, getattr(checkpoint_module, "_run_fn_with_dynamo_disabled", None))
    functions: list[Any] = [getattr(function, "__wrapped__", None) for function in decorated]
    undecorated = [function for function in functions if function is not None and not hasattr(function, cached)]
    stand_in = _UnloadedDynamo()
    for function in undecorated:
        setattr(function, cached, function)
    torch._dynamo = stand_in  # type: ignore[assignment]
    try:
        yield
    finally:
        for function in undecorated:
            if getattr(function, cached, None) is function:
                delattr(function, cached)
        if vars(torch).get("_dynamo") is stand_in:
            del torch._dynamo


@dataclass
class _Reused:
    """The recorder's nodes whose result is no new storage (a view or an in-place result of what was there, or
    what selective checkpointing kept from the forward and serves again: computed once, in the forward), and the
    allocation count when the latest node was recorded."""

    allocations: int
    nodes: list[int] = field(default_factory=list)


@contextmanager
def _autocast_of(kernel: Any, low_dtype: str | None) -> Iterator[None]:
    """A recomputation casts as its region's forward did, as torch's checkpoint puts the forward's autocast state
    back: a fresh cast cache, whose cast weights go when the recomputation ends (torch's outermost autocast block
    clears its cache on exit)."""
    active = getattr(kernel, "active", None)
    if active is None:
        yield
        return
    active.append(kernel.autocast_to(low_dtype))
    try:
        yield
    finally:
        active.pop()


def wrap_modules(model: Any, names: tuple[str, ...]) -> Any:
    """``model`` with the modules named ``names`` (not the model itself) replaced by torch's ``checkpoint_wrapper``
    of them, as ``apply_activation_checkpointing(model, check_fn=...)`` does when ``check_fn`` picks them by id:
    children before their parents, each occurrence under each parent. The walk is torch's
    (``fsdp.wrap._recursive_wrap``), written here because that function's module imports the whole of FSDP, most
    of a second on a cold start."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    wanted = set(names)
    chosen = {id(module) for name, module in model.named_modules() if name in wanted}

    def wrap(module: Any) -> Any:
        for name, child in list(module.named_children()):
            setattr(module, name, wrap(child))
        return checkpoint_wrapper(module) if id(module) in chosen else module

    for name, child in list(model.named_children()):
        setattr(model, name, wrap(child))
    return model


@contextmanager
def _cache_hits(recorder: _Recorder, allocations: Callable[[], int], allocation_of: Callable[[Any], int | None]
                ) -> Iterator[_Reused]:
    """Follow which of the recorder's nodes made no new storage (see ``_Reused``): their result's storage was
    allocated before the recomputation began."""
    start = allocations()
    found = _Reused(start)
    add_node = recorder.add_node

    def counted(name: str, type_: str, geometry: Geometry, inputs: list[Any], outputs: list[Any],
                *args: Any, **kwargs: Any) -> int:
        node = add_node(name, type_, geometry, inputs, outputs, *args, **kwargs)
        made = allocation_of(outputs[0]) if outputs else None
        if made is None or made <= start:
            found.nodes.append(node)
        found.allocations = allocations()
        return node

    recorder.add_node = counted  # type: ignore[method-assign]
    try:
        yield found
    finally:
        del recorder.add_node


__all__ = ["CheckpointTracer"]
