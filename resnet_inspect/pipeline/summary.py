"""`summary` and `verify`, from the caller's options to a report: the one orchestration that the command line
and the Python API both call, with the same defaults and the same checks.

With a training step (``train``), the table, the forward figures and the training figures all come from that
step's train-mode pass: a layer that runs only in training (an auxiliary head under ``if self.training``) has
its row, its MACs and its backward figures, and no figure is matched between two passes by name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from resnet_inspect.pipeline.build import (
    InputSpec,
    capture_spec,
    summary_from_capture,
    training_spec,
    verify_from_capture,
)
from resnet_inspect.pipeline.options import (
    DEFAULT_DEPTH,
    Caller,
    TrainRequest,
    check_counts,
    device_name,
    dtype_name,
    shard_count,
    shard_units_of,
    train_options,
)

if TYPE_CHECKING:
    from torch import nn

    from resnet_inspect.analysis.training import StepMemory
    from resnet_inspect.records import TrainingCapture
    from resnet_inspect.report.summary import SummaryReport, VerifyReport


# What to feed the model: a spec, or a function from the model's number of spatial axes to one (the API reads
# ``(224, 320)`` as a spatial size of a 2-D network and as a full shape of a 1-D one).
Inputs = InputSpec | Callable[[int], InputSpec]


@dataclass(frozen=True)
class ModelRequest:
    """Which model, and how to build it: a module as given or a name (with the factory's options)."""

    model: nn.Module | str
    in_channels: int | None = None
    num_classes: int | None = None
    model_name: str | None = None  # the label in the report (default: the name, or the module's class)


@dataclass(frozen=True)
class SummaryRequest:
    """Everything `summary` takes, as its callers pass it (checked by ``summary_report``)."""

    model: ModelRequest
    inputs: Inputs = field(default_factory=InputSpec)
    batch_size: int = 1
    depth: int | None = DEFAULT_DEPTH
    device: Any = "cpu"  # whose kernels a training step models, and where --time runs
    run_on_device: bool = False  # run the forward pass for real on ``device`` (the API's device="cpu")
    dtype: Any = None
    fvcore: bool = False
    torchinfo: bool = False
    train: TrainRequest = field(default_factory=lambda: TrainRequest(False))
    time: bool = False


def load(request: ModelRequest, caller: Caller) -> tuple[nn.Module, str, int]:
    """The model (a name built on the meta device; a module as given, its class the label), its label, and its
    own input side (224, or 32 for the CIFAR ResNets)."""
    from resnet_inspect.capture.loader import default_input_size, load_model, usable_module
    from resnet_inspect.errors import BadInputError

    check_counts(caller, in_channels=request.in_channels, num_classes=request.num_classes)
    if isinstance(request.model, str):
        built, name = load_model(request.model, in_channels=request.in_channels, num_classes=request.num_classes)
        return built, request.model_name or name, default_input_size(request.model)
    if request.num_classes is not None:
        raise BadInputError(f"{caller.spell('num_classes')} applies to models given by name; this one is already "
                            "built")
    label = request.model_name or type(request.model).__name__
    return usable_module(request.model, label), label, 224


def own_input_size(model: nn.Module | str) -> int:
    """The model's own input side on every spatial axis: 32 for the CIFAR ResNets, else 224 (a module: 224)."""
    from resnet_inspect.capture.loader import default_input_size

    return default_input_size(model) if isinstance(model, str) else 224


def model_rank(model: nn.Module | str) -> int:
    """The model's number of spatial axes (2 for a name, which is not built for this); a module the tool cannot
    inspect (TorchScript, quantized, lazy) is refused first, in one line."""
    from resnet_inspect.capture.loader import usable_module
    from resnet_inspect.capture.trace import spatial_rank

    return 2 if isinstance(model, str) else spatial_rank(usable_module(model, type(model).__name__))


def in_dtype(network: nn.Module, dtype: str | None) -> nn.Module:
    """The model as it would be in ``dtype``: a meta copy converted (nothing allocated, the model untouched)."""
    if dtype is None:
        return network
    import torch

    from resnet_inspect.capture.tensors import structural_copy

    return structural_copy(network, "meta").to(getattr(torch, dtype))


def summary_report(request: SummaryRequest, caller: Caller) -> SummaryReport:
    """Every layer of the model, checked, counted and traced for its field; with a training step, every figure
    from that one step (see the module's docstring)."""
    check_counts(caller, batch_size=request.batch_size, depth=request.depth)
    dtype = dtype_name(request.dtype, caller)
    device = device_name(request.device, caller, meta=caller is Caller.api and not request.time)
    options = train_options(replace(request.train, dtype=dtype), "cpu" if device == "meta" else device, caller)
    if request.time or request.run_on_device:  # an unavailable device fails before the capture, not after it
        from resnet_inspect.analysis.timing import resolve_device

        device = resolve_device(device) if device != "meta" else device
    network, name, default = load(request.model, caller)
    inputs = input_spec(request.inputs, network)
    network = in_dtype(network, dtype)
    what = (network, inputs, default, request.batch_size, request.model.in_channels, name)  # what one pass runs
    training = None
    if options is not None:  # the training step's own train-mode forward is the capture: one pass, every figure
        training = training_spec(*what, options=options)
        captured = training.capture
    else:
        captured = capture_spec(*what, device=device if request.run_on_device else "meta")
    layer_times_ms = None
    if request.time:
        from resnet_inspect.analysis.timing import time_layers

        # time_layers gives the meta-built model real (random) weights on the device itself
        timings = time_layers(network, captured.input_shape, device, warmup=3, repeat=10)
        layer_times_ms = {timing.name: timing.median_ms for timing in timings}
    return summary_from_capture(captured, model=network, fvcore=request.fvcore, max_depth=request.depth,
                                layer_times_ms=layer_times_ms, torchinfo=request.torchinfo,
                                input_data=inputs.data, training=training,
                                shard=shard_count(request.train), shard_units=shard_units_of(request.train))


def training_step(model: ModelRequest, inputs: Inputs, batch_size: int, train: TrainRequest, device: Any,
                  caller: Caller) -> TrainingCapture:
    """One training step of the model on the meta device (``training_memory``), its options checked as
    ``summary``'s are."""
    check_counts(caller, batch_size=batch_size)
    dtype = dtype_name(train.dtype, caller)
    options = train_options(replace(train, train=True, dtype=dtype), device_name(device, caller), caller)
    assert options is not None
    network, name, default = load(model, caller)
    return training_spec(network, input_spec(inputs, network), default, batch_size, model.in_channels, name,
                         options=options)


def step_memory_of(training: TrainingCapture, train: TrainRequest) -> StepMemory:
    """The memory of one training step, per device of the step's ``shard`` (FSDP units: ``shard_units``)."""
    from resnet_inspect.analysis.training import step_memory

    return step_memory(training, shard_count(train), shard_units_of(train))


def input_spec(inputs: Inputs, network: nn.Module) -> InputSpec:
    """The spec itself, or what the caller's parser makes of its input for this model's number of spatial axes."""
    if isinstance(inputs, InputSpec):
        return inputs
    from resnet_inspect.capture.trace import spatial_rank

    return inputs(spatial_rank(network))


def verify_report(model: ModelRequest, inputs: Inputs, batch_size: int, caller: Caller) -> VerifyReport:
    """Every convolution and pooling layer's output size, as torch's own kernels compute it, against the arithmetic
    of its geometry."""
    check_counts(caller, batch_size=batch_size)
    network, name, default = load(model, caller)
    captured = capture_spec(network, input_spec(inputs, network), default, batch_size, model.in_channels, name,
                            exact_checked_shapes=True)
    return verify_from_capture(captured)


__all__ = ["InputSpec", "Inputs", "ModelRequest", "StepMemory", "SummaryRequest", "load", "model_rank",
           "own_input_size", "step_memory_of", "summary_report", "training_step", "verify_report"]
