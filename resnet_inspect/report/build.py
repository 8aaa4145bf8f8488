"""From a model to a report: one capture, then the pure analyses over its records."""

from __future__ import annotations

from typing import TYPE_CHECKING

from resnet_inspect.errors import BadInputError, InputTooSmallError
from resnet_inspect.report.summary import SummaryReport, VerifyReport, check_nodes

if TYPE_CHECKING:
    from torch import nn

    from resnet_inspect.records import Capture


def _size(input_size: int | tuple[int, int]) -> tuple[int, int]:
    height, width = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    if height <= 0 or width <= 0:
        raise BadInputError(f"input size must be positive, got {height}x{width}")
    return height, width


def capture_model(model: nn.Module, input_size: int | tuple[int, int] = (224, 224), batch_size: int = 1,
                  in_channels: int = 3, model_name: str = "") -> Capture:
    """The one instrumented forward pass every analysis reads."""
    from resnet_inspect.capture.trace import capture, smallest_input_size

    if batch_size <= 0:
        raise BadInputError(f"batch size must be positive, got {batch_size}")
    if in_channels <= 0:
        raise BadInputError(f"input channels must be positive, got {in_channels}")
    try:
        return capture(model, _size(input_size), batch_size, in_channels, model_name)
    except InputTooSmallError as error:
        smallest = smallest_input_size(model, in_channels)
        hint = f"; the smallest input that works is {smallest}x{smallest}" if smallest else ""
        raise InputTooSmallError(f"{error}{hint}") from error


def summary_from_capture(capture: Capture, *, model: nn.Module | None = None, fvcore: bool = False,
                         fvcore_memory_budget_bytes: int | None = None, max_depth: int | None = None,
                         layer_times_ms: dict[str, float] | None = None) -> SummaryReport:
    """Run the analyses over one capture; fvcore (real tensors, batch 1) only when asked and a model is given."""
    from resnet_inspect.analysis.counting import count
    from resnet_inspect.analysis.receptive_field import analyze_receptive_field, layer_fields

    fields = analyze_receptive_field(capture)
    counts = count(capture)
    fvcore_counts, fvcore_note = None, None
    if fvcore and model is not None:
        from resnet_inspect.analysis.fvcore_count import fvcore_count

        options = {} if fvcore_memory_budget_bytes is None else {"memory_budget_bytes": fvcore_memory_budget_bytes}
        fvcore_counts, fvcore_note = fvcore_count(model, capture, counts=counts, **options)
    return SummaryReport(
        model=capture.model_name, capture=capture, checks=check_nodes(capture), counts=counts,
        fields=fields, fvcore=fvcore_counts, fvcore_note=fvcore_note, layer_times_ms=layer_times_ms,
        max_depth=max_depth, layer_fields=layer_fields(capture, fields),
    )


def inspect(model: nn.Module, input_size: int | tuple[int, int] = (224, 224), batch_size: int = 1,
            in_channels: int = 3, *, model_name: str = "", fvcore: bool = False) -> SummaryReport:
    """Inspect any CNN: shapes, arithmetic checks, parameters, MACs, receptive fields (and fvcore's count).

    ``report.to_dict()`` is exactly the JSON of ``resnet-inspect summary``. The model itself is not changed:
    the capture runs on a structural copy on the meta device.
    """
    capture = capture_model(model, input_size, batch_size, in_channels, model_name)
    return summary_from_capture(capture, model=model, fvcore=fvcore)


def verify(model: nn.Module, input_size: int | tuple[int, int] = (224, 224), batch_size: int = 1,
           in_channels: int = 3, *, model_name: str = "") -> VerifyReport:
    """Check every convolution and pooling layer's output size against its declared geometry."""
    capture = capture_model(model, input_size, batch_size, in_channels, model_name)
    return VerifyReport(capture.model_name, capture.input_shape, check_nodes(capture))
