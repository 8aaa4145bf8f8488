"""The `compare` report: several models (and input sizes) side by side, one row per model and size.

Every row comes from one capture on the meta device, read by every analysis (counting, receptive field,
depth); only ``--time`` builds real weights and runs the model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from resnet_inspect.records import Shape
from resnet_inspect.render.document import Cell, Column, Document, Table
from resnet_inspect.render.text import field_size_text, measured_note, pair_text, shape_text, yes_no
from resnet_inspect.report.view import ReportView, TableColumn, column_table
from resnet_inspect.schemas import SCHEMA_VERSION
from resnet_inspect.units import bytes_text

if TYPE_CHECKING:
    from resnet_inspect.analysis.receptive_field import NodeField
    from resnet_inspect.analysis.stages import StageRow
    from resnet_inspect.analysis.timing import LatencyResult
    from resnet_inspect.analysis.training import StepMemory

InputSize = int | tuple[int, ...]  # every spatial axis, or one size per axis

BEST = "bold green"  # style of the best value in a column

# Count units: the largest value in a column picks one unit for the whole column, so rows line up (bytes take
# the one byte formatter's unit, row by row, so that a figure reads as it does in every other command).
COUNT_UNITS = ((1e9, "G"), (1e6, "M"), (1e3, "K"), (1, ""))


# ------------------------------------------------------------------------------------------------- rows


@dataclass(frozen=True)
class ModelRow:
    """One model at one input size: everything one capture gives, plus the latency when timed."""

    model: str
    input_shape: Shape
    depth: int
    stages: tuple[int, ...]  # residual blocks per stage, from the dataflow graph
    params: int
    macs: int
    activation_bytes: int
    peak_memory_bytes: int
    field: NodeField | None  # at the encoder output
    field_reason: str | None  # why ``field`` is undefined
    covers_input: bool | None  # every encoder output unit sees the whole input
    output_shape: Shape | None  # the encoder output feature map (N, C, H, W)
    model_output_shape: Shape
    stage_rows: tuple[StageRow, ...]
    latency: LatencyResult | None = None
    backward_macs: int | None = None  # --train: MACs of the backward pass
    step: StepMemory | None = None  # --train: the memory of one training step at the row's batch size

    residual_stages: bool = True  # the stages are made of residual blocks: "blocks per stage" means something

    @property
    def input_size(self) -> tuple[int, ...]:
        return tuple(self.input_shape[2:])

    @property
    def label(self) -> str:
        return f"{self.model} at {pair_text(self.input_size)}"

    @property
    def field_input_ratio(self) -> tuple[float, ...] | None:
        """Receptive field size over input size, per axis: above 1 means one unit can see the whole input."""
        if self.field is None:
            return None
        return tuple(float(size) / side for size, side in zip(self.field.size, self.input_size, strict=True))


# ----------------------------------------------------------------------------------------------- report


def _blocks_text(stages: Sequence[int]) -> str:
    """'3-4-6-3'; '-' for a network without residual blocks."""
    return "-".join(map(str, stages)) if any(stages) else "-"


def _unit(values: Sequence[float], units: tuple[tuple[float, str], ...]) -> tuple[float, str]:
    largest = max(values, default=0)
    return next(((scale, name) for scale, name in units if largest >= scale), units[-1])


def _scaled(value: float, unit: tuple[float, str], digits: int) -> str:
    scale, name = unit
    text = f"{value:,.0f}" if scale == 1 else f"{value / scale:,.{digits}f}"
    return f"{text} {name}".rstrip()


def _ratio(value: float, first: float) -> str:
    """'x2.25' (two decimals below 100, none above); empty when there is nothing to divide by."""
    if not first:
        return ""
    ratio = value / first
    return f"x{ratio:.2f}" if ratio < 100 else f"x{ratio:,.0f}"


def _measure_cells(values: Sequence[int | None], digits: int | None, ratios: bool) -> list[Cell]:
    """A column of counts (``digits`` decimals in the unit its largest value picks) or, with ``digits`` None, of
    bytes (the one byte formatter); '-' where a row has no value, the ratio to the first row, the lowest in bold."""
    if digits is None:
        texts = ["-" if value is None else bytes_text(value) for value in values]
    else:
        unit = _unit([value for value in values if value is not None], COUNT_UNITS)
        texts = ["-" if value is None else _scaled(value, unit, digits) for value in values]
    first = (values[0] or 0) if values else 0
    ratio_texts = (["", *("" if value is None else _ratio(value, first) for value in values[1:])]
                   if ratios and len(values) > 1 else None)
    cells = _best_cells(texts, list(values), True, ratio_texts)
    return [replace(cell, data=value) for cell, value in zip(cells, values, strict=True)]  # exact, for CSV


def _field_stride(row: ModelRow) -> tuple[Any, ...] | None:
    return row.field.stride if row.field else None


def _cells_column(column: Column, cells: Sequence[Cell | str]) -> TableColumn[int]:
    """A column whose cells were made together (they compare the rows): row ``position`` takes its own."""
    return TableColumn(column, lambda position: cells[position])


def _best_cells(texts: list[str], values: list[float | None], lowest: bool, ratios: list[str] | None) -> list[Cell]:
    """Cells for one column; the best value (lowest or highest) in bold green when the rows differ."""
    defined = [value for value in values if value is not None]
    best = (min(defined) if lowest else max(defined)) if len(set(defined)) > 1 else None
    cells = []
    for position, (text, value) in enumerate(zip(texts, values, strict=True)):
        if ratios is not None and ratios[position]:
            text = f"{text}  {ratios[position]}"
        cells.append(Cell(text, BEST if best is not None and value == best else None))
    return cells


@dataclass(frozen=True, repr=False)
class CompareReport(ReportView):
    """`compare`: one row per model and input size; ratios are against the first row."""

    rows: tuple[ModelRow, ...]
    show_stages: bool = False
    device: str | None = None  # where the latencies were measured (None: not timed)
    warmup: int | None = None
    repeat: int | None = None

    @property
    def timed(self) -> bool:
        return any(row.latency is not None for row in self.rows)

    @property
    def trained(self) -> bool:
        return any(row.step is not None for row in self.rows)

    def to_dict(self) -> list[dict[str, Any]]:
        """A list with one entry per row: the contract keys first, extra detail after them."""
        first = self.rows[0] if self.rows else None
        entries = []
        for row in self.rows:
            latency = row.latency
            entries.append({
                "schema_version": SCHEMA_VERSION,
                "model": row.model,
                "input_shape": list(row.input_shape),
                "depth": row.depth,
                "stages": list(row.stages) if row.residual_stages else [],
                "params": row.params,
                "macs": row.macs,
                "activation_bytes": row.activation_bytes,
                "receptive_field": row.field.to_json() if row.field else None,
                "output_shape": list(row.output_shape) if row.output_shape is not None else None,
                "latency_ms": latency.median_ms if latency else None,
                "latency_iqr_ms": latency.iqr_ms if latency else None,
                "images_per_s": latency.images_per_s if latency else None,
                "device": self.device if latency else None,
                "flops": 2 * row.macs,
                "peak_memory_bytes": row.peak_memory_bytes,
                "receptive_field_covers_input": row.covers_input,
                "receptive_field_input_ratio": list(row.field_input_ratio) if row.field_input_ratio else None,
                "receptive_field_reason": None if row.field else row.field_reason,
                "model_output_shape": list(row.model_output_shape),
                "vs_first": self._ratios(row, first) if first is not None else None,
                "stage_details": [stage.to_dict(row.macs) for stage in row.stage_rows],
                "backward_macs": row.backward_macs,
                "saved_bytes": row.step.saved_bytes if row.step else None,
                "train_peak_bytes": row.step.peak_bytes if row.step else None,
                "training": row.step.to_dict() if row.step else None,
            })
        return entries

    @staticmethod
    def _ratios(row: ModelRow, first: ModelRow) -> dict[str, float | None]:
        def ratio(value: float | None, reference: float | None) -> float | None:
            return value / reference if value is not None and reference else None

        return {
            "params": ratio(row.params, first.params), "macs": ratio(row.macs, first.macs),
            "activation_bytes": ratio(row.activation_bytes, first.activation_bytes),
            "latency_ms": ratio(row.latency.median_ms if row.latency else None,
                                first.latency.median_ms if first.latency else None),
            "train_peak_bytes": ratio(row.step.peak_bytes if row.step else None,
                                      first.step.peak_bytes if first.step else None),
        }

    # ------------------------------------------------------------------------------------------ tables

    def document(self) -> Document:
        tables = [self._main_table()]
        if self.show_stages:
            tables.append(self._stage_table())
        return Document(tuple(tables), self._notes())

    def _main_table(self) -> Table:
        rows = self.rows
        footer = [
            "depth: convolutions and linear layers on the longest input-to-output path (shortcut projections "
            "excluded); blocks: residual blocks per stage",
            "MACs: multiply-accumulates of convolutions and linear layers (FLOPs = 2 x MACs); act. memory: every "
            "layer output, stored once",
            "RF, stride: receptive field and effective stride at the encoder output; RF/input: field size over "
            "input size; output: encoder output feature map",
        ]
        if len(rows) > 1:
            footer.append(f"xN: ratio to the first row ({rows[0].label}); best value of each column in bold green")
        if self.timed:
            footer.append(f"ms: median latency of one forward pass on {self.device} with random weights "
                          f"({self.warmup} warm-up, about {self.repeat} timed passes)")
        if self.trained:
            footer.append(self._training_footer())
        title = "Comparison of " + ", ".join(dict.fromkeys(row.model for row in rows))
        return column_table(title, self._columns(), range(len(rows)), tuple(footer))

    def _columns(self) -> list[TableColumn[int]]:
        """The main table's columns, each with the rule for its cell in row ``position``; the measures set every
        row beside the first (ratios, the best value), so their cells are made a column at a time."""
        rows = self.rows
        several = len(rows) > 1
        fields = _best_cells([field_size_text(row.field) for row in rows],
                             [math.prod(float(v) for v in row.field.size) if row.field else None for row in rows],
                             False, None)
        columns: list[TableColumn[int]] = [
            TableColumn(Column("model"), lambda position: rows[position].model),
            TableColumn(Column("input", "right"), lambda position: pair_text(rows[position].input_size)),
            TableColumn(Column("depth", "right"), lambda position: str(rows[position].depth)),
            TableColumn(Column("blocks", "right"), lambda position: _blocks_text(rows[position].stages)
                        if rows[position].residual_stages else "-"),
            _cells_column(Column("params", "right"), _measure_cells([row.params for row in rows], 2, several)),
            _cells_column(Column("MACs", "right"), _measure_cells([row.macs for row in rows], 3, several)),
            _cells_column(Column("act. memory", "right", unit="bytes"),
                          _measure_cells([row.activation_bytes for row in rows], None, several)),
            _cells_column(Column("RF", "right"), fields),
            TableColumn(Column("stride", "right"), lambda position: pair_text(_field_stride(rows[position]))),
            TableColumn(Column("RF/input", "right"), lambda position: pair_text(rows[position].field_input_ratio,
                                                                                ".2f")),
            TableColumn(Column("output", "right"), lambda position: shape_text(rows[position].output_shape)),
        ]
        if self.timed:
            columns += self._latency_columns()
        if self.trained:
            steps = [row.step for row in rows]
            columns += [
                _cells_column(Column("bwd MACs", "right"),
                              _measure_cells([row.backward_macs for row in rows], 3, several)),
                _cells_column(Column("saved", "right", unit="bytes"),
                              _measure_cells([step.saved_bytes if step else None for step in steps], None, several)),
                _cells_column(Column("train peak", "right", unit="bytes"),
                              _measure_cells([step.peak_bytes if step else None for step in steps], None, several)),
            ]
        return columns

    def _latency_columns(self) -> list[TableColumn[int]]:
        latencies = [row.latency.median_ms if row.latency else None for row in self.rows]
        first = latencies[0]
        ratio_texts = ["", *("" if value is None else _ratio(value, first or 0) for value in latencies[1:])]
        milliseconds = _best_cells(["-" if value is None else f"{value:,.2f}" for value in latencies], latencies,
                                   True, ratio_texts)
        rates = [row.latency.images_per_s if row.latency else None for row in self.rows]
        throughput = _best_cells(["-" if value is None else f"{value:,.1f}" for value in rates], rates, False, None)
        return [_cells_column(Column(f"ms ({self.device})", "right"), milliseconds),
                _cells_column(Column("images/s", "right"), throughput)]

    def _training_footer(self) -> str:
        step = next(row.step for row in self.rows if row.step is not None)
        precision = step.dtype + (f", autocast {step.amp}" if step.amp else "")
        batch = self.rows[0].input_shape[0]
        return (f"bwd MACs: the backward pass; saved: activations kept for the backward; train peak: estimated peak "
                f"of one training step at batch {batch} ({step.optimizer}, {precision})")

    def _stage_table(self) -> Table:
        columns = (
            Column("model"), Column("input", "right"), Column("stage"), Column("blocks", "right"),
            Column("output", "right"), Column("RF", "right"), Column("stride", "right"), Column("covers input"),
            Column("MACs share", "right"),
        )
        table_rows = []
        for row in self.rows:
            for stage in row.stage_rows:
                share = f"{100 * stage.macs / row.macs:.1f}%" if row.macs else "-"
                table_rows.append((
                    row.model, pair_text(row.input_size), stage.name, str(stage.blocks) if stage.blocks else "",
                    shape_text(stage.output_shape), field_size_text(stage.field),
                    pair_text(stage.field.stride if stage.field else None), yes_no(stage.covers_input), share,
                ))
        footer = ("RF, stride: receptive field and effective stride at the stage output; head: everything after the "
                  "encoder (global pooling, classifier)",)
        return Table("Stages", columns, tuple(table_rows), footer)

    def _notes(self) -> tuple[str, ...]:
        undefined = [f"{row.label}: receptive field undefined ({row.field_reason})" for row in self.rows
                     if row.field is None and row.field_reason]
        measured = [measured_note(row.field, f"{row.label}: RF") for row in self.rows
                    if row.field is not None and row.field.method == "measured"]
        return tuple(undefined + measured)


# --------------------------------------------------------------------------------------------- building


__all__ = ["CompareReport", "ModelRow"]
