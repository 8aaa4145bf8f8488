"""`fit`: the largest batch size whose estimated peak fits a memory budget, one pass per estimate (on the meta
device, or on real CPU tensors, guarded and counted, where the forward reads values).

The search (``analysis.fit.largest_batch``) sees only an estimate per batch size; this module makes that
estimate from the model (an inference forward pass, or a training step) and turns the answer into a report.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from resnet_inspect.analysis.fit import DoesNotFitError, largest_batch
from resnet_inspect.errors import BadInputError, ForwardError
from resnet_inspect.limits import GPU_RESERVE_FIXED_BYTES, RESERVE_SHARE
from resnet_inspect.pipeline.options import (
    Caller,
    TrainRequest,
    available_device,
    device_name,
    dtype_name,
    shard_count,
    shard_units_of,
    train_options,
)
from resnet_inspect.render.text import bytes_text
from resnet_inspect.report.fit import FitReport, budget_source

if TYPE_CHECKING:
    from torch import nn

    from resnet_inspect.analysis.counting import Counts
    from resnet_inspect.analysis.training import StepMemory
    from resnet_inspect.capture.training import TrainOptions
    from resnet_inspect.records import Capture, TrainingCapture

# What --reserve leaves out of the memory by default (RESERVE_SHARE and GPU_RESERVE_FIXED_BYTES, in limits, where
# the help text reads them too). Everywhere, a share for what the estimate does not follow: the kernels'
# workspaces (oneDNN, cuDNN, cuBLAS) and the allocator's rounding and fragmentation (on a GPU, what
# torch.cuda.max_memory_reserved exceeds max_memory_allocated by; on the CPU, a resnet18 training step at batch
# 89 measured 0.9% above its estimate). On a GPU also a fixed part: the CUDA context and the libraries' handles, a few
# hundred MiB of device memory that no tensor accounts for.


def default_reserve_bytes(device: str, memory_bytes: int) -> int:
    """5% of ``memory_bytes``, plus 512 MiB on a GPU."""
    fixed = 0 if device == "cpu" else GPU_RESERVE_FIXED_BYTES
    return fixed + int(RESERVE_SHARE * memory_bytes)


def budget_bytes(size: int | str | None, what: str, caller: Caller, allow_zero: bool = False) -> int | None:
    """A size in bytes (``memory``, ``reserve``) from an int or a text such as ``"24GiB"``; BadInputError names the
    option as ``caller`` spells it."""
    from resnet_inspect.analysis.fit import parse_bytes

    name = caller.spell(what)
    if size is None:
        return None
    if isinstance(size, int) and not isinstance(size, bool):
        if size < 0 or (size == 0 and not allow_zero):
            raise BadInputError(f"{name} must be a positive number of bytes, got {size!r}")
        return size
    if isinstance(size, str):
        return parse_bytes(size, name, allow_zero)
    raise BadInputError(f"{name} must be bytes (an int) or a size such as '24GiB', got {size!r}")


def device_memory(device: str, memory_bytes: int | None, caller: Caller = Caller.cli) -> tuple[int, str]:
    """The budget before the reserve, and where it comes from: ``--memory`` (the API's ``memory``), or the free
    memory of a CUDA device."""
    if memory_bytes is not None:
        return memory_bytes, caller.spell("memory")
    if device.startswith("cuda"):
        import torch

        free, _total = torch.cuda.mem_get_info(torch.device(device))
        return int(free), f"free memory of {device}"
    example = "--memory 16GiB" if caller is Caller.cli else "memory='16GiB'"
    raise BadInputError(f"fit needs {caller.spell('memory')} on {device} (for example {example}); only a CUDA device "
                        "says how much memory it has free")


def fit_device(text: Any, memory_bytes: int | None, caller: Caller = Caller.cli) -> str:
    """The device whose kernels and memory are planned for. Every estimate runs on the meta device, so a CUDA
    device (``cuda``, ``cuda:N``) may be planned for on a machine without one, given ``--memory``."""
    from resnet_inspect.analysis.timing import available_devices

    device = device_name(text, caller)
    cuda_here = any(name.startswith("cuda") for name in available_devices())
    if device.split(":")[0] == "cuda" and not cuda_here:
        if memory_bytes is None:
            example = "--memory 80GiB" if caller is Caller.cli else "memory='80GiB'"
            raise BadInputError(f"fit --device {device} on a machine without CUDA needs {caller.spell('memory')} "
                                f"(for example {example}): the device's memory cannot be read here")
        return device
    return available_device(device, caller)


def first_batch(estimate: InferenceEstimate | TrainingEstimate, train: bool) -> tuple[int, str | None]:
    """Where the search starts: batch 1, or 2 when the model cannot run at batch 1 and can at 2 (batch norm
    in training needs more than one value per channel, as after global pooling), with a note that says so."""
    try:
        estimate(1)
    except ForwardError as error:
        try:
            estimate(2)
        except ForwardError:
            raise error from None
        what = "a training step" if train else "a forward pass"
        return 2, f"{what} cannot run at batch size 1 ({error}): the search starts at batch size 2"
    return 1, None


class InferenceEstimate:
    """Batch size -> the estimated peak of one inference forward pass: weights, buffers and the largest set of
    live activations. One capture per batch size, kept, so that the breakdown at the answer costs no pass: on the
    meta device, or, for a forward that reads tensor values, on real CPU tensors under the memory guard (counted
    in ``real_passes``)."""

    def __init__(self, model: nn.Module, input_size: tuple[int, ...], in_channels: int) -> None:
        self.model, self.input_size, self.in_channels = model, input_size, in_channels
        self.counted: dict[int, tuple[Capture, Counts]] = {}

    def _counted(self, batch_size: int) -> tuple[Capture, Counts]:
        from resnet_inspect.analysis.counting import count
        from resnet_inspect.pipeline.build import capture_model

        if batch_size not in self.counted:
            captured = capture_model(self.model, self.input_size, batch_size, self.in_channels,
                                     real_pass_advice="lower --input-size or --memory")
            self.counted[batch_size] = captured, count(captured)
        return self.counted[batch_size]

    @property
    def real_passes(self) -> int:
        """The passes that ran on real tensors, not on the meta device."""
        return sum(captured.device != "meta" for captured, _ in self.counted.values())

    def __call__(self, batch_size: int) -> int:
        return self._counted(batch_size)[1].peak_memory_bytes

    def breakdown(self, batch_size: int) -> tuple[tuple[str, int], ...]:
        """Weights, buffers and the activations live at the peak."""
        captured, counts = self._counted(batch_size)
        return (("weights", captured.param_bytes), ("buffers", captured.buffer_bytes),
                ("activations live at the peak", counts.peak_activation_bytes))

    def peak_at(self, batch_size: int) -> str | None:
        return None

    def details(self, batch_size: int) -> dict[str, Any] | None:
        return None


class TrainingEstimate:
    """Batch size -> the bytes one training step holds at each of its moments (``analysis.training.step_timeline``),
    from one training pass on the meta device per batch size, kept for the breakdown at the answer."""

    def __init__(self, model: nn.Module, input_size: tuple[int, ...], in_channels: int, options: TrainOptions,
                 shard: int, shard_units: str = "block") -> None:
        self.model, self.input_size, self.in_channels = model, input_size, in_channels
        self.options, self.shard, self.shard_units = options, shard, shard_units
        self.steps: dict[int, TrainingCapture] = {}
        self.real_passes = 0  # a training pass runs on the meta device only

    def _step(self, batch_size: int) -> TrainingCapture:
        from resnet_inspect.pipeline.build import training_capture

        if batch_size not in self.steps:
            self.steps[batch_size] = training_capture(self.model, self.input_size, batch_size, self.in_channels,
                                                      options=self.options)
        return self.steps[batch_size]

    def __call__(self, batch_size: int) -> list[int]:
        from resnet_inspect.analysis.training import step_timeline

        step = self._step(batch_size)
        if step.backward_error:
            raise BadInputError(f"fit cannot estimate a training step: {step.backward_error}")
        return step_timeline(step, self.shard, self.shard_units)

    def memory(self, batch_size: int) -> StepMemory:
        from resnet_inspect.analysis.training import step_memory

        return step_memory(self._step(batch_size), self.shard, self.shard_units)

    def breakdown(self, batch_size: int) -> tuple[tuple[str, int], ...]:
        """What the peak holds: what is resident through the step, and what the step itself had allocated."""
        step = self.memory(batch_size)
        assert step.peak_bytes is not None
        resident: tuple[tuple[str, int], ...] = (
            ("weights", step.weights_bytes), ("optimizer state", step.optimizer_state_bytes),
            ("buffers", step.buffer_bytes), ("input", step.input_bytes))
        if step.gathered_bytes:
            held = "FSDP's gathered units and buffers" if step.shard_units else "largest layer gathered"
            resident += ((held, step.gathered_bytes),)
        allocated = step.peak_bytes - sum(size for _part, size in resident)
        return (*resident, ("activations, gradients and temporaries at the peak", allocated))

    def peak_at(self, batch_size: int) -> str | None:
        return self.memory(batch_size).where

    def details(self, batch_size: int) -> dict[str, Any]:
        return self.memory(batch_size).to_dict()


def fit_report(spec: str | nn.Module, memory_bytes: int | None = None, input_size: int | tuple[int, ...] = 224, *,
               train: bool = False, optimizer: str | None = None, dtype: str = "float32", amp: str | None = None,
               shard: int | None = None, reserve_bytes: int | None = None, device: str = "cpu",
               in_channels: int | None = None, num_classes: int | None = None,
               model_name: str | None = None, caller: Caller = Caller.cli,
               shard_units: str | None = None, checkpoint: str | tuple[str, ...] | None = None,
               batch_size: int | None = None, loss: str | None = None, accumulate: int | None = None,
               step: Callable[..., Any] | str | None = None) -> FitReport:
    """The largest batch size of MODEL (a name or a module) whose estimated peak on ``device`` is within
    ``memory_bytes`` (default: a CUDA device's free memory) less ``reserve_bytes`` (default:
    ``default_reserve_bytes``). Nothing is allocated: every estimate is a meta pass, except for an inference
    forward that reads tensor values, which runs on real CPU tensors under the memory guard (``real_passes``)."""
    from resnet_inspect.capture.loader import load_model
    from resnet_inspect.capture.trace import input_shape_for, structural_copy

    dtype = dtype_name(dtype, caller) or "float32"  # the estimate runs on meta: any device's dtype can be estimated
    request = TrainRequest(train, optimizer, amp, shard, dtype, shard_units, loss, accumulate, step)
    options = train_options(request, device_name(device, caller), caller)
    if checkpoint is not None and not train:
        raise BadInputError(f"{caller.spell('checkpoint')} plans activation checkpointing of a training step: "
                            f"{caller.needs_train()}")
    if batch_size is not None and checkpoint is None:
        raise BadInputError(f"{caller.spell('batch_size')} applies to {caller.spell('checkpoint')} (the least "
                            "recompute that fits that batch)")
    device = fit_device(device, memory_bytes, caller)
    memory, source = device_memory(device, memory_bytes, caller)
    reserve = default_reserve_bytes(device, memory) if reserve_bytes is None else reserve_bytes
    if reserve >= memory:
        raise BadInputError(f"the reserve ({bytes_text(reserve)}) leaves nothing of the {bytes_text(memory)} budget "
                            f"({source}): lower {caller.spell('reserve')}")
    if isinstance(spec, str):
        model, name = load_model(spec, in_channels=in_channels, num_classes=num_classes, device="meta")
    else:
        model, name = spec, type(spec).__name__
    name = model_name or name
    channels = in_channels or 3
    size = tuple(input_shape_for(model, input_size, 1, channels)[2:])
    estimate: InferenceEstimate | TrainingEstimate
    if options is not None:
        estimate = TrainingEstimate(model, size, channels, options, shard_count(request), shard_units_of(request))
    else:
        import torch

        estimate = InferenceEstimate(structural_copy(model, "meta").to(getattr(torch, dtype)), size, channels)
    budget = memory - reserve
    if checkpoint is not None:
        assert isinstance(estimate, TrainingEstimate)
        return _checkpoint_report(estimate, budget, checkpoint, batch_size, name, device, channels, size, dtype,
                                  amp, memory, source, reserve)
    start, start_note = first_batch(estimate, train)
    try:
        search = largest_batch(estimate, budget, first_batch=start)
    except DoesNotFitError as error:
        what = "a training step" if train else "an inference pass"
        raise DoesNotFitError(
            f"{name} does not fit: {what} at batch size {start} and input {'x'.join(map(str, size))} needs about "
            f"{bytes_text(error.peak_bytes)}, more than the budget of {bytes_text(budget)} "
            f"({budget_source(source, memory, reserve)}): {_advice(error.peak_bytes, memory, train, caller)}",
            error.peak_bytes,
        ) from error
    return FitReport(
        model=name, device=device, input_shape=(channels, *size), train=train,
        optimizer=options.optimizer if options else None, dtype=dtype, amp=options.amp if options else None,
        shard=shard or 1, memory_bytes=memory, memory_source=source, reserve_bytes=reserve, search=search,
        breakdown=estimate.breakdown(search.batch_size), peak_at=estimate.peak_at(search.batch_size),
        step=estimate.details(search.batch_size), first_batch_note=start_note,
        real_passes=estimate.real_passes,
    )


def _advice(peak_bytes: int, memory_bytes: int, train: bool, caller: Caller) -> str:
    """What lowers the need: the reserve when batch size 1 fits the memory before it, else the input (and for a
    training step, the precision, the optimizer or sharding)."""
    if peak_bytes <= memory_bytes:
        return (f"lower {caller.spell('reserve')} (batch size 1 fits the {bytes_text(memory_bytes)} before the "
                "reserve)")
    steps = f", use {caller.spell('amp')}, {caller.spell('optimizer')} sgd or {caller.spell('shard')}" if train else ""
    return f"lower {caller.spell('input_size')}{steps}"


def _checkpoint_report(estimate: TrainingEstimate, budget: int, checkpoint: str | tuple[str, ...],
                       batch_size: int | None, name: str, device: str, channels: int, size: tuple[int, ...],
                       dtype: str, amp: str | None, memory: int, source: str, reserve: int) -> FitReport:
    """`fit --train --checkpoint`: the plan (pipeline/checkpoint_plan.py) and the step's breakdown at its batch."""
    from resnet_inspect.analysis.fit import FitSearch, SearchMethod
    from resnet_inspect.pipeline.checkpoint_plan import checkpoint_plan

    plan, planned = checkpoint_plan(estimate.model, size, channels, estimate.options, budget, checkpoint,
                                    batch_size, estimate.shard)
    step = TrainingEstimate(estimate.model, size, channels, estimate.options, estimate.shard, estimate.shard_units)
    step.steps = {plan.batch_size: planned}
    search = FitSearch(plan.batch_size, plan.peak_bytes, None, False, len(plan.curve), SearchMethod.line, None,
                       plan.peak_bytes, 0, limited=False)
    return FitReport(
        model=name, device=device, input_shape=(channels, *size), train=True, optimizer=estimate.options.optimizer,
        dtype=dtype, amp=amp, shard=estimate.shard, memory_bytes=memory, memory_source=source,
        reserve_bytes=reserve, search=search, breakdown=step.breakdown(plan.batch_size),
        peak_at=step.peak_at(plan.batch_size), step=step.details(plan.batch_size), checkpoint=plan,
    )


__all__ = ["budget_bytes", "default_reserve_bytes", "fit_report"]
