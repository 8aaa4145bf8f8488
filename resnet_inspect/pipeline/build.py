"""From a model to a report: one capture, then the pure analyses over its records (`summary`, `verify`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from resnet_inspect.analysis.checks import check_nodes
from resnet_inspect.errors import BadInputError, ForwardError, InputTooSmallError
from resnet_inspect.records import Shape
from resnet_inspect.report.summary import SummaryReport, VerifyReport

if TYPE_CHECKING:
    from torch import nn

    from resnet_inspect.analysis.timeline import MemoryTimeline
    from resnet_inspect.analysis.training import TrainingCounts
    from resnet_inspect.capture.trace import ModelInputs
    from resnet_inspect.capture.training import TrainOptions
    from resnet_inspect.records import Capture, TrainingCapture

InputSize = int | Sequence[int]


@dataclass(frozen=True)
class InputSpec:
    """What to feed the model: a spatial size (with batch and channels), full shapes, or the caller's tensors."""

    size: int | tuple[int, ...] | None = None  # an int: every spatial axis the model has
    shapes: tuple[Shape, ...] | None = None
    data: Any = None


def capture_spec(model: nn.Module, spec: InputSpec, default_size: int, batch_size: int = 1,
                 in_channels: int | None = None, model_name: str = "", *, exact_checked_shapes: bool = False,
                 device: str = "meta") -> Capture:
    """``capture_model`` fed what ``spec`` says: the caller's tensors, full shapes, or a size (``default_size``
    when it gives none)."""
    return capture_model(model, spec.size or default_size, batch_size, in_channels, model_name,
                         input_shapes=spec.shapes, input_data=spec.data, exact_checked_shapes=exact_checked_shapes,
                         device=device)


def training_spec(model: nn.Module, spec: InputSpec, default_size: int, batch_size: int = 1,
                  in_channels: int | None = None, model_name: str = "", *,
                  options: TrainOptions | None = None) -> TrainingCapture:
    """``training_capture`` fed what ``spec`` says (see ``capture_spec``)."""
    return training_capture(model, spec.size or default_size, batch_size, in_channels, model_name, options=options,
                            input_shapes=spec.shapes, input_data=spec.data)


def _size(input_size: InputSize) -> int | tuple[int, ...]:
    """An int (every spatial axis) or one size per spatial axis, each positive."""
    sizes = (input_size,) if isinstance(input_size, int) else tuple(input_size)
    if not sizes or any(not isinstance(size, int) or isinstance(size, bool) for size in sizes):
        raise BadInputError(f"input size must be an int or a sequence of ints, got {input_size!r}")
    if any(size <= 0 for size in sizes):
        raise BadInputError(f"input size must be positive, got {'x'.join(map(str, sizes))}")
    return input_size if isinstance(input_size, int) else sizes


def model_inputs(model: nn.Module, input_size: InputSize = (224, 224), batch_size: int = 1,
                 in_channels: int | None = None, *, input_shapes: Sequence[Sequence[int]] | None = None,
                 input_data: Any = None) -> ModelInputs:
    """What the forward pass is called with: ``input_data`` as given (a tensor, a tuple/list of tensors passed by
    position, or a dict passed by keyword), else one all-zero tensor per full shape in ``input_shapes``, else
    ``(batch_size, in_channels, *input_size)``."""
    import torch

    from resnet_inspect.capture.trace import ModelInputs, model_dtype, size_inputs, zeros_inputs

    if input_data is not None:
        if isinstance(input_data, torch.Tensor):
            return ModelInputs((input_data,))
        if isinstance(input_data, dict):
            return ModelInputs((), dict(input_data))
        if isinstance(input_data, (tuple, list)):
            return ModelInputs(tuple(input_data))
        raise BadInputError(f"input_data must be a tensor, a tuple or list of tensors, or a dict of them, got "
                            f"{type(input_data).__name__}")
    if input_shapes is not None:
        shapes = [tuple(int(size) for size in shape) for shape in input_shapes]
        if not shapes or any(not shape or min(shape) <= 0 for shape in shapes):
            raise BadInputError(f"input shapes must be non-empty and positive, got {input_shapes!r}")
        return zeros_inputs(shapes, model_dtype(model))
    if batch_size <= 0:
        raise BadInputError(f"batch size must be positive, got {batch_size}")
    if in_channels is not None and in_channels <= 0:
        raise BadInputError(f"input channels must be positive, got {in_channels}")
    return size_inputs(model, _size(input_size), batch_size, in_channels)


def capture_model(model: nn.Module, input_size: InputSize = (224, 224), batch_size: int = 1,
                  in_channels: int | None = None, model_name: str = "", *,
                  input_shapes: Sequence[Sequence[int]] | None = None, input_data: Any = None,
                  exact_checked_shapes: bool = False, device: str = "meta",
                  real_pass_advice: str | None = None) -> Capture:
    """The one instrumented forward pass every analysis reads (see ``model_inputs`` for the inputs).

    A model that reads tensor values runs on real CPU tensors under the memory guard, whose refusal ends with
    ``real_pass_advice`` (default: lower the input size or the batch size).

    On ``device="meta"`` (the default) nothing is allocated. Another device runs the pass for real on a copy of
    the model there, once the meta pass has shown that its peak memory fits.
    """
    from resnet_inspect.capture.trace import capture_inputs, run_capture

    if device != "meta":
        from resnet_inspect.analysis.counting import count
        from resnet_inspect.analysis.memory import ensure_fits
        from resnet_inspect.analysis.timing import resolve_device

        device = resolve_device(device)
        planned = capture_model(model, input_size, batch_size, in_channels, model_name, input_shapes=input_shapes,
                                input_data=input_data, exact_checked_shapes=exact_checked_shapes)
        ensure_fits(count(planned).peak_memory_bytes, f"the forward pass on {device}",
                    "lower the input size or the batch size", device)
        inputs = model_inputs(model, planned.input_shape[2:], planned.input_shape[0], planned.input_shape[1],
                              input_shapes=input_shapes, input_data=input_data)
        return run_capture(model, inputs, model_name, device=device, exact_checked_shapes=exact_checked_shapes)

    def run(channels: int | None) -> Capture:
        inputs = model_inputs(model, input_size, batch_size, channels, input_shapes=input_shapes,
                              input_data=input_data)
        return capture_inputs(model, inputs, model_name, exact_checked_shapes, _real_pass_guard(real_pass_advice))

    return _planned(model, in_channels, input_shapes is not None or input_data is not None, run)


Result = TypeVar("Result")


def _planned(model: nn.Module, in_channels: int | None, given: bool, run: Callable[[int | None], Result]) -> Result:
    """One pass (``run`` with the input's channels), with what both passes, the forward and the training step, do
    when it fails on an input they chose: an input too small says the smallest that works; three channels that
    do not fit are replaced by those the model's first convolution takes."""
    from resnet_inspect.capture.entry import input_channels
    from resnet_inspect.capture.trace import smallest_input_size

    try:
        return run(in_channels)
    except InputTooSmallError as error:
        if given:
            raise
        smallest = smallest_input_size(model, in_channels)
        hint = f"; the smallest input that works is {smallest} on every spatial axis" if smallest else ""
        raise InputTooSmallError(f"{error}{hint}") from error
    except ForwardError:
        # Three channels did not fit: a model that takes another number says so in its first convolution.
        channels = input_channels(model)
        if in_channels is not None or given or channels == 3:
            raise
        return run(channels)


def training_capture(model: nn.Module, input_size: InputSize = (224, 224), batch_size: int = 1,
                     in_channels: int | None = None, model_name: str = "", *, options: TrainOptions | None = None,
                     input_shapes: Sequence[Sequence[int]] | None = None, input_data: Any = None) -> TrainingCapture:
    """One training step of a meta copy of ``model`` (see capture/training.py); the inputs as ``model_inputs``,
    and the same fallbacks as ``capture_model``."""
    from resnet_inspect.capture.training import TrainOptions, run_training_pass

    def run(channels: int | None) -> TrainingCapture:
        inputs = model_inputs(model, input_size, batch_size, channels, input_shapes=input_shapes,
                              input_data=input_data)
        try:
            return run_training_pass(model, inputs, options or TrainOptions(), model_name)
        except ForwardError as error:
            if not error.needs_values:
                raise
            raise ForwardError(f"{error} (the training step runs on the meta device, and this model's forward "
                               "needs tensor values)") from error

    return _planned(model, in_channels, input_shapes is not None or input_data is not None, run)


def _real_pass_guard(advice: str | None = None) -> Callable[[int, int, str], None]:
    """The guard of the capture's fallback to real tensors (``analysis.memory.real_pass_guard``)."""
    from resnet_inspect.analysis.memory import real_pass_guard

    return real_pass_guard() if advice is None else real_pass_guard(advice)


def summary_from_capture(capture: Capture, *, model: nn.Module | None = None, fvcore: bool = False,
                         fvcore_memory_budget_bytes: int | None = None, max_depth: int | None = None,
                         layer_times_ms: dict[str, float] | None = None, torchinfo: bool = False,
                         input_data: Any = None, training: TrainingCapture | None = None,
                         shard: int = 1, shard_units: str = "block") -> SummaryReport:
    """Run the analyses over one capture; fvcore (real tensors, batch 1) and torchinfo (fed ``input_data`` when
    given) only when asked and a model is given; the training analyses over ``training`` (a training pass of the
    same model) when given."""
    from resnet_inspect.analysis.counting import count
    from resnet_inspect.analysis.padding import padding_runs
    from resnet_inspect.analysis.receptive_field import analyze_receptive_field, layer_fields
    from resnet_inspect.analysis.stages import stage_rows

    fields = analyze_receptive_field(capture)
    if model is not None:  # where the rules run out, the encoder output's field is measured
        from resnet_inspect.analysis.measured import with_measured_fields

        fields = with_measured_fields(model, capture, fields)
    counts = count(capture)
    fvcore_counts, fvcore_note = None, None
    if fvcore and model is not None:
        from resnet_inspect.analysis.fvcore_count import fvcore_count

        options = {} if fvcore_memory_budget_bytes is None else {"memory_budget_bytes": fvcore_memory_budget_bytes}
        fvcore_counts, fvcore_note = fvcore_count(model, capture, counts=counts, **options)
    torchinfo_counts = None
    if torchinfo and model is not None:
        from resnet_inspect.analysis.torchinfo_count import torchinfo_count

        torchinfo_counts = torchinfo_count(model, capture, counts, input_data)
    return SummaryReport(
        model=capture.model_name, capture=capture, checks=check_nodes(capture), counts=counts,
        fields=fields, fvcore=fvcore_counts, fvcore_note=fvcore_note, layer_times_ms=layer_times_ms,
        max_depth=max_depth, layer_fields=layer_fields(capture, fields),
        torchinfo=torchinfo_counts,
        stage_rows=stage_rows(capture, fields, counts), padding_runs=padding_runs(capture),
        training=training_counts_of(training, shard, shard_units), training_capture=training,
        memory_timeline=timeline_of(training, shard, shard_units),
    )


def timeline_of(training: TrainingCapture | None, shard: int = 1, shard_units: str = "block"
                ) -> MemoryTimeline | None:
    """The memory timeline of one training pass (None for none, or when its backward could not run)."""
    if training is None:
        return None
    from resnet_inspect.analysis.timeline import memory_timeline

    return memory_timeline(training, shard, shard_units)


def training_counts_of(training: TrainingCapture | None, shard: int = 1, shard_units: str = "block"
                       ) -> TrainingCounts | None:
    """The training analyses of one training pass (None for none)."""
    if training is None:
        return None
    from resnet_inspect.analysis.training import training_counts

    return training_counts(training, shard, shard_units)


def verify_from_capture(capture: Capture) -> VerifyReport:
    """Every convolution and pooling layer of one capture checked against the arithmetic of its geometry, and the
    modules whose forward pads other than they declare."""
    from resnet_inspect.analysis.padding import padding_runs

    return VerifyReport(capture.model_name, capture.input_shape, check_nodes(capture), capture.warnings,
                        padding_runs(capture))


def inspect(model: nn.Module, input_size: InputSize = (224, 224), batch_size: int = 1,
            in_channels: int | None = None, *, model_name: str = "", fvcore: bool = False,
            input_shapes: Sequence[Sequence[int]] | None = None, input_data: Any = None) -> SummaryReport:
    """Inspect any CNN: shapes, arithmetic checks, parameters, MACs, receptive fields (and fvcore's count).

    ``input_size`` is an int (every spatial axis; how many axes the model's first convolution says) or one size
    per axis. ``report.to_dict()`` is exactly the JSON of ``resnet-inspect summary``. The model itself is not
    changed: the capture runs on a structural copy on the meta device.
    """
    capture = capture_model(model, input_size, batch_size, in_channels, model_name, input_shapes=input_shapes,
                            input_data=input_data)
    return summary_from_capture(capture, model=model, fvcore=fvcore)


def verify(model: nn.Module, input_size: InputSize = (224, 224), batch_size: int = 1,
           in_channels: int | None = None, *,
           model_name: str = "", input_shapes: Sequence[Sequence[int]] | None = None,
           input_data: Any = None) -> VerifyReport:
    """Check every convolution and pooling layer's output size, as torch's own kernels compute it, against the
    arithmetic of its geometry."""
    capture = capture_model(model, input_size, batch_size, in_channels, model_name, input_shapes=input_shapes,
                            input_data=input_data, exact_checked_shapes=True)
    return verify_from_capture(capture)
