"""The `time` report: whole-model latency and throughput per batch size, and optionally the slowest layers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from resnet_inspect.render.document import Column, Document, Table
from resnet_inspect.report.view import ReportView
from resnet_inspect.schemas import SCHEMA_VERSION

if TYPE_CHECKING:
    from resnet_inspect.analysis.timing import LatencyResult, LayerProfile

TOP_LAYERS = 15  # rows of the slowest-layers table (JSON lists every layer)


@dataclass(frozen=True, repr=False)
class TimingReport(ReportView):
    model: str
    device: str
    dtype: str
    threads: int
    input_shape: tuple[int, ...]  # (channels, height, width): the batch size varies
    channels_last: bool
    warmup: int
    repeat: int
    results: tuple[LatencyResult, ...]
    profile: LayerProfile | None = None
    profile_batch_size: int | None = None
    train: bool = False  # each run is a training step (forward, backward, optimizer step), not a forward pass
    optimizer: str | None = None  # the optimizer of the step (train only; "none": forward and backward)
    amp: str | None = None  # autocast mode of the step: bf16 or fp16 (train only)

    @property
    def hook_overhead_ms(self) -> float | None:
        """How much slower the forward pass is with the per-layer hooks than without."""
        if self.profile is None:
            return None
        baseline = next(r for r in self.results if r.batch_size == self.profile_batch_size)
        return self.profile.hooked_model_ms - baseline.median_ms

    def to_dict(self) -> dict[str, Any]:
        profile = self.profile
        return {
            "schema_version": SCHEMA_VERSION,
            "model": self.model,
            "device": self.device,
            "dtype": self.dtype,
            "threads": self.threads,
            "input_shape": list(self.input_shape),
            "channels_last": self.channels_last,
            "warmup": self.warmup,
            "repeat": self.repeat,
            "results": [
                {"batch_size": r.batch_size, "median_ms": r.median_ms, "iqr_ms": r.iqr_ms,
                 "images_per_s": r.images_per_s, "runs": r.runs, "peak_memory_bytes": r.peak_memory_bytes}
                for r in self.results
            ],
            "per_layer": None if profile is None else [
                {"name": t.name, "type": t.type, "median_ms": t.median_ms, "share": t.share, "calls": t.calls}
                for t in profile.layers
            ],
            "per_layer_batch_size": self.profile_batch_size,
            "layers_total_ms": None if profile is None else profile.layers_total_ms,
            "hooked_model_ms": None if profile is None else profile.hooked_model_ms,
            "hook_overhead_ms": self.hook_overhead_ms,
            "train": self.train,
            "optimizer": self.optimizer,
            "amp": self.amp,
        }

    def document(self) -> Document:
        shape = "x".join(map(str, self.input_shape))
        precision = f"{self.dtype}, amp {self.amp}" if self.amp else self.dtype
        title = (f"{self.model} on {self.device} ({precision}, {self.threads} threads"
                 f"{', channels last' if self.channels_last else ''}): {self._what()}input Nx{shape}")
        columns: tuple[Column, ...] = (Column("batch", "right"), Column("median ms", "right"),
                                       Column("IQR ms", "right"), Column("images/s", "right"), Column("runs", "right"))
        rows: tuple[tuple[str, ...], ...] = tuple(
            (str(r.batch_size), f"{r.median_ms:.3f}", f"{r.iqr_ms:.3f}", f"{r.images_per_s:,.1f}", str(r.runs))
            for r in self.results
        )
        if any(r.peak_memory_bytes is not None for r in self.results):  # measured on CUDA
            columns += (Column("peak MiB", "right"),)
            rows = tuple((*row, f"{(r.peak_memory_bytes or 0) / 2**20:,.1f}") for row, r in zip(rows, self.results,
                                                                                                 strict=True))
        tables = [Table(title, columns, rows)]
        notes: list[str] = []
        if self.profile is not None:
            tables.append(self._layer_table())
            hidden = len(self.profile.layers) - TOP_LAYERS
            if hidden > 0:
                notes.append(f"{hidden} faster layers not shown (--format json lists them all)")
            overhead = self.hook_overhead_ms
            if overhead is not None and overhead < 0:
                notes.append("the hook overhead is negative: the two measurements differ by less than their noise "
                             "(compare the IQRs)")
        return Document(tuple(tables), tuple(notes))

    def _what(self) -> str:
        """'' for forward passes (the title as it has always been), else the training step timed, and a comma."""
        if not self.train:
            return ""
        step = "" if self.optimizer == "none" else f", {self.optimizer} step"
        return f"training step (forward, backward{step}), "

    def _layer_table(self) -> Table:
        assert self.profile is not None
        profile = self.profile
        columns = (Column("#", "right"), Column("layer"), Column("type"), Column("median ms", "right"),
                   Column("share", "right"))
        rows = tuple(
            (str(rank), t.name, t.type, f"{t.median_ms:.3f}", f"{100 * t.share:.1f}%")
            for rank, t in enumerate(profile.layers[:TOP_LAYERS], start=1)
        )
        footer = (
            f"sum of {len(profile.layers)} layers: {profile.layers_total_ms:.3f} ms   "
            f"model with hooks: {profile.hooked_model_ms:.3f} ms   "
            f"hook overhead (with hooks - without): {self.hook_overhead_ms:.3f} ms",
        )
        return Table(f"Slowest layers (batch {self.profile_batch_size})", columns, rows, footer)


