"""`compare`: build every model once on the meta device, capture it at each size, read each capture into one row
(and time the rows when asked)."""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import TYPE_CHECKING

from resnet_inspect.records import Capture
from resnet_inspect.report.compare import CompareReport, InputSize, ModelRow

if TYPE_CHECKING:
    from torch import nn


class Family(StrEnum):
    """Shortcuts for groups of registered models."""

    imagenet = "imagenet"  # the five torchvision depths, resnet18 ... resnet152
    cifar = "cifar"  # He et al.'s CIFAR-10 networks, resnet20 ... resnet110
    all = "all"  # every registered name


# Registry families each shortcut selects (None: every family).
FAMILY_MEMBERS: dict[Family, str | None] = {Family.imagenet: "resnet", Family.cifar: "cifar-resnet", Family.all: None}


def family_models(family: Family | str) -> list[str]:
    """Registered names in ``family``, in registration order (shallowest first)."""
    from resnet_inspect.models import list_models, model_spec

    wanted = FAMILY_MEMBERS[Family(family)]
    return [name for name in list_models() if wanted is None or model_spec(name).family == wanted]


def row_from_capture(capture: Capture, model: nn.Module | None = None) -> ModelRow:
    """Every number of one compare row from one capture: counts, receptive field, depth, blocks per stage.

    Given the ``model``, an encoder output whose analytic field is undefined gets a measured one."""
    from resnet_inspect.analysis.counting import count
    from resnet_inspect.analysis.depth import network_depth
    from resnet_inspect.analysis.receptive_field import analyze_receptive_field
    from resnet_inspect.analysis.stages import HEAD, STEM, stage_rows

    counts = count(capture)
    fields = analyze_receptive_field(capture)
    if model is not None:
        from resnet_inspect.analysis.measured import with_measured_fields

        fields = with_measured_fields(model, capture, fields)
    rows = stage_rows(capture, fields, counts)
    output_node = fields.output_node
    output_stage = next((stage for stage in fields.stages if stage.name == "output"), None)
    reason = fields.undefined.get(output_node) if output_node is not None else "no spatial feature map"
    return ModelRow(
        model=capture.model_name, input_shape=capture.input_shape, depth=network_depth(capture),
        stages=tuple(row.blocks for row in rows if row.name not in (STEM, HEAD)),
        params=counts.params, macs=counts.macs, activation_bytes=counts.activation_bytes,
        peak_memory_bytes=counts.peak_memory_bytes, field=fields.output, field_reason=reason,
        covers_input=output_stage.covers_input if output_stage else None,
        output_shape=capture.nodes[output_node].output_shape if output_node is not None else None,
        model_output_shape=capture.output_shape, stage_rows=rows, residual_stages=fields.residual_stages,
    )


@contextmanager
def paused_garbage_collection() -> Iterator[None]:
    """Building and capturing models makes many short-lived objects, which trigger full collections; with torch
    loaded each one rescans its whole heap (about 0.3 s). Pausing collection meanwhile saves a third of the time."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@dataclass(frozen=True)
class Candidate:
    """A model to compare, built once on the meta device, and the input sizes to capture it at."""

    spec: str
    name: str
    model: nn.Module
    sizes: tuple[InputSize, ...]


def load_candidates(specs: Sequence[str], input_sizes: Sequence[InputSize] | None = None) -> list[Candidate]:
    """Build every model on the meta device (an unknown name fails here, before any capture).

    Without ``input_sizes`` each model is compared at its own default size (32 for CIFAR, 224 otherwise).
    Repeated specs are compared once.
    """
    from resnet_inspect.capture.loader import default_input_size, load_model

    candidates = []
    with paused_garbage_collection():
        for spec in dict.fromkeys(specs):
            model, name = load_model(spec, device="meta")
            sizes = tuple(input_sizes) if input_sizes else (default_input_size(spec),)
            candidates.append(Candidate(spec, name, model, sizes))
    return candidates


def compare_rows(candidates: Sequence[Candidate], batch_size: int = 1) -> list[ModelRow]:
    """One capture per model per size, each read by every analysis; rows in model-major order."""
    from resnet_inspect.pipeline.build import capture_model

    with paused_garbage_collection():
        return [
            row_from_capture(capture_model(candidate.model, size, batch_size, model_name=candidate.name),
                             candidate.model)
            for candidate in candidates for size in candidate.sizes
        ]


RowProgress = Callable[[str, int], None]  # (label of the row being timed, rows finished so far)


def time_rows(candidates: Sequence[Candidate], rows: Sequence[ModelRow], device: str = "cpu", warmup: int = 3,
              repeat: int = 10, progress: RowProgress | None = None) -> list[ModelRow]:
    """``rows`` (as ``compare_rows`` made them from ``candidates``) with each one's latency on ``device``.

    Each model gets real random weights once, then every size of it is timed in turn; the caller's random state
    is left as it was.
    """
    import torch

    from resnet_inspect.analysis.timing import prepare_model, time_model

    timed: list[ModelRow] = []
    remaining = iter(rows)
    cuda_devices = [torch.device(device).index or 0] if device.startswith("cuda") else []
    with torch.random.fork_rng(devices=cuda_devices):  # random weights and inputs leave the caller's RNG alone
        for candidate in candidates:
            model = prepare_model(candidate.model, device)
            for _ in candidate.sizes:
                row = next(remaining)
                if progress is not None:
                    progress(row.label, len(timed))
                latency = time_model(model, row.input_shape, device, warmup=warmup, repeat=repeat)
                timed.append(replace(row, latency=latency))
    if progress is not None and timed:
        progress(timed[-1].label, len(timed))
    return timed


def train_rows(candidates: Sequence[Candidate], rows: Sequence[ModelRow], optimizer: str = "adamw",
               amp: str | None = None, device: str = "cpu") -> list[ModelRow]:
    """``rows`` with each one's backward MACs and training-step memory: one training pass on the meta device per
    row, at the row's batch size (``analysis.training``)."""
    from resnet_inspect.analysis.training import training_counts
    from resnet_inspect.capture.training import TrainOptions
    from resnet_inspect.pipeline.build import training_capture

    options = TrainOptions(optimizer=optimizer, amp=amp, device=device)
    trained: list[ModelRow] = []
    remaining = iter(rows)
    with paused_garbage_collection():
        for candidate in candidates:
            for size in candidate.sizes:
                row = next(remaining)
                counts = training_counts(training_capture(candidate.model, size, row.input_shape[0],
                                                          model_name=candidate.name, options=options))
                trained.append(replace(row, backward_macs=counts.backward_macs, step=counts.memory))
    return trained


def compare(specs: Sequence[str], input_sizes: Sequence[InputSize] | None = None, *, batch_size: int = 1,
            show_stages: bool = False, time: bool = False, device: str = "cpu", warmup: int = 3,
            repeat: int = 10) -> CompareReport:
    """Compare models (registry names or factory specs) at their default or the given input sizes."""
    candidates = load_candidates(specs, input_sizes)
    rows = compare_rows(candidates, batch_size)
    if time:
        from resnet_inspect.analysis.timing import resolve_device

        device = resolve_device(device)
        rows = time_rows(candidates, rows, device, warmup, repeat)
    return CompareReport(tuple(rows), show_stages, device if time else None, warmup if time else None,
                         repeat if time else None)


def total_rows(candidates: Sequence[Candidate]) -> int:
    """How many rows (models x sizes) the candidates give: the progress bar's total."""
    return sum(len(candidate.sizes) for candidate in candidates)


__all__ = [
    "Candidate", "Family", "compare", "compare_rows", "family_models", "load_candidates", "row_from_capture",
    "time_rows", "total_rows", "train_rows",
]
