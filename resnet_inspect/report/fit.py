"""The `fit` report: the largest batch size whose estimated peak memory fits a budget, with its breakdown."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from resnet_inspect.render.document import Cell, Column, Document, Table
from resnet_inspect.report.view import ReportView
from resnet_inspect.schemas import SCHEMA_VERSION
from resnet_inspect.units import bytes_text

if TYPE_CHECKING:
    from resnet_inspect.analysis.checkpoint_plan import CheckpointPlan
    from resnet_inspect.analysis.fit import FitSearch


PEAK_DECIMALS = 2  # the peaks and the budget they are held against: an answer can turn on a few MiB of GiBs


def budget_source(source: str, memory_bytes: int, reserve_bytes: int) -> str:
    """'--memory' or '--memory 24.0 GiB less 1.2 GiB reserve' (the same for a CUDA device's free memory)."""
    if not reserve_bytes:
        return source
    return f"{source} {bytes_text(memory_bytes)} less {bytes_text(reserve_bytes)} reserve"


@dataclass(frozen=True, repr=False)
class FitReport(ReportView):
    """`fit`: the batch, its estimated peak within ``budget_bytes`` (``memory_bytes`` less ``reserve_bytes``)."""

    model: str
    device: str
    input_shape: tuple[int, ...]  # (channels, *spatial): the batch size is the answer
    train: bool  # a training step (forward, backward, optimizer step); else an inference forward pass
    optimizer: str | None  # train only
    dtype: str
    amp: str | None  # train only
    shard: int  # devices the weights, gradients and optimizer state are divided over (train only)
    memory_bytes: int
    memory_source: str  # "--memory", or where the default came from ("free memory of cuda:0")
    reserve_bytes: int
    search: FitSearch
    breakdown: tuple[tuple[str, int], ...]  # what the peak at the answer holds, by part (bytes)
    peak_at: str | None = None  # where the peak falls in the step (which layer's backward), when known
    step: dict[str, Any] | None = None  # train: the step's memory at the answer, as `summary --train` has it
    first_batch_note: str | None = None  # why the search starts above batch 1 (a step cannot run there)
    real_passes: int = 0  # of the search's passes, those run on real CPU tensors (the forward reads tensor values)
    checkpoint: CheckpointPlan | None = None  # --checkpoint: the modules to checkpoint and what they cost

    @property
    def budget_bytes(self) -> int:
        return self.memory_bytes - self.reserve_bytes

    @property
    def batch_size(self) -> int:
        return self.search.batch_size

    def to_dict(self) -> dict[str, Any]:
        search = self.search
        return {
            "schema_version": SCHEMA_VERSION,
            "model": self.model,
            "device": self.device,
            "input_shape": list(self.input_shape),
            "train": self.train,
            "optimizer": self.optimizer,
            "dtype": self.dtype,
            "amp": self.amp,
            "shard": self.shard,
            "memory_bytes": self.memory_bytes,
            "memory_source": self.memory_source,
            "reserve_bytes": self.reserve_bytes,
            "budget_bytes": self.budget_bytes,
            "batch_size": search.batch_size,
            "peak_bytes": search.peak_bytes,
            "next_peak_bytes": search.next_peak_bytes,
            "breakdown": dict(self.breakdown),
            "peak_at": self.peak_at,
            "step": self.step,
            "checkpoint": None if self.checkpoint is None else self.checkpoint.to_dict(),
            "search": {
                "method": search.method.value, "passes": search.passes, "real_passes": self.real_passes,
                "affine": search.affine,
                "fixed_bytes": search.fixed_bytes, "bytes_per_sample": search.bytes_per_sample,
                "next_estimated": search.next_estimated, "limited": search.limited,
                "first_batch": search.first_batch, "first_batch_note": self.first_batch_note,
            },
        }

    def _what(self) -> str:
        shape = "x".join(map(str, self.input_shape))
        if not self.train:
            return f"inference ({self.dtype}), input Nx{shape}"
        precision = f"{self.dtype}, amp {self.amp}" if self.amp else self.dtype
        shard = f", sharded over {self.shard} devices" if self.shard > 1 else ""
        return f"training with {self.optimizer} ({precision}{shard}), input Nx{shape}"

    def document(self) -> Document:
        search = self.search
        source = budget_source(self.memory_source, self.memory_bytes, self.reserve_bytes)
        budget = f"{bytes_text(self.budget_bytes, PEAK_DECIMALS)} ({source})"
        rows: list[tuple[Cell | str, ...]] = [
            ("largest batch size", Cell(str(search.batch_size), "bold green", search.batch_size)),
            ("estimated peak", Cell(bytes_text(search.peak_bytes, PEAK_DECIMALS), None, search.peak_bytes)),
            ("budget", Cell(budget, None, self.budget_bytes)),
        ]
        if search.next_peak_bytes is not None:
            rows.append((f"peak at batch {search.batch_size + 1}",
                         Cell(f"{bytes_text(search.next_peak_bytes, PEAK_DECIMALS)} (over)", None,
                              search.next_peak_bytes)))
        rows += [(f"  {part}", Cell(bytes_text(size), None, size)) for part, size in self.breakdown]
        per_device = " per device" if self.shard > 1 else ""
        table = Table(f"{self.model} on {self.device}: {self._what()}",
                      (Column("at the largest batch"), Column(f"memory{per_device}", "right", unit="bytes")),
                      tuple(rows))
        return Document((table,), tuple(self._notes()))

    def _passes(self) -> str:
        """'3 meta passes', or how many of them were real: a forward that reads values runs on real CPU tensors."""
        if not self.real_passes:
            return f"{self.search.passes} meta passes"
        meta = self.search.passes - self.real_passes
        return (f"{self.search.passes} passes, {meta} on the meta device and {self.real_passes} on real CPU tensors "
                "(the model reads tensor values)")

    def _notes(self) -> list[str]:
        search = self.search
        notes = [self.first_batch_note] if self.first_batch_note else []
        if self.peak_at:
            notes.append(f"the peak falls in {self.peak_at}")
        line = f"{bytes_text(search.fixed_bytes)} + {bytes_text(search.bytes_per_sample)} per sample"
        if search.method == "line":  # SearchMethod.line
            confirmed = "confirmed at the answer" if search.affine else "checked at the next batch"
            notes.append(f"memory is affine in the batch size near the answer ({line}), {confirmed}: "
                         f"{self._passes()}")
        else:
            pair = f"{search.first_batch} and {search.first_batch + 1}"
            off = f"off the line of batches {pair} (a batch-dependent branch?)" if search.affine is False else \
                "not growing with the batch"
            notes.append(f"memory is not affine in the batch size: the estimate was {off}; bisection took "
                         f"{self._passes()}")
        if search.limited:
            notes.append(f"every batch size up to {search.batch_size} fits: the search stops there")
        if self.checkpoint is not None:
            return notes[:1] + checkpoint_notes(self.checkpoint)
        return notes


def checkpoint_notes(plan: CheckpointPlan) -> list[str]:
    """The plan in lines: its modules, the baseline, the recompute and its share, the curve, the Python."""
    notes = [f"activation checkpointing: {len(plan.modules)} of {len(plan.candidates)} blocks: "
             + (", ".join(plan.modules) or "none needed")]
    if plan.baseline_batch_size is not None:
        notes.append(f"without checkpointing the largest batch is {plan.baseline_batch_size}")
    notes.append(f"recomputed in the backward: {plan.recompute_macs:,} MACs, {100 * plan.recompute_share:.1f}% of "
                 f"the step's {plan.step_macs:,}")
    notes.append("peak by blocks checkpointed (at this batch): " + "; ".join(
        f"{point.blocks}: {bytes_text(point.peak_bytes)}, {point.recompute_macs:,} MACs" for point in plan.curve))
    notes.append("apply it:\n" + plan.python())
    return notes


__all__ = ["PEAK_DECIMALS", "FitReport", "budget_source", "checkpoint_notes"]
