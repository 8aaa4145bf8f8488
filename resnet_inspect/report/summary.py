"""The summary and verify reports: every layer's shapes checked against convolution arithmetic."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import TYPE_CHECKING, Any

from resnet_inspect.records import Capture, Geometry, LayerRecord, OpKind
from resnet_inspect.render.document import Cell, Column, Document, Table
from resnet_inspect.render.html import summary_html
from resnet_inspect.render.text import (
    MEASURED_MARK,
    bytes_text,
    field_size_text,
    measured_note,
    pair_text,
    shape_text,
)
from resnet_inspect.report.rf import RfReport
from resnet_inspect.report.view import ReportView, SummaryView, TableColumn, column_table, written
from resnet_inspect.schemas import SCHEMA_VERSION

if TYPE_CHECKING:
    import os

    from resnet_inspect.analysis.checks import LayerCheck
    from resnet_inspect.analysis.counting import Counts
    from resnet_inspect.analysis.fvcore_count import FvcoreCounts
    from resnet_inspect.analysis.padding import PaddingRun
    from resnet_inspect.analysis.receptive_field import ReceptiveFieldResult
    from resnet_inspect.analysis.stages import StageRow
    from resnet_inspect.analysis.timeline import MemoryTimeline
    from resnet_inspect.analysis.torchinfo_count import TorchinfoCounts
    from resnet_inspect.analysis.training import TrainingCounts
    from resnet_inspect.ops.arithmetic import LayerArithmetic
    from resnet_inspect.records import TrainingCapture

PASS, FAIL = "✓", "✗"


def geometry_text(geometry: Geometry | None) -> str:
    """'7x7/2 p3' style: kernel, stride, padding (and dilation, groups when not 1)."""
    if geometry is None or not geometry.kind.has_window or geometry.kind is OpKind.ADAPTIVE_POOL:
        if geometry is not None and geometry.kind is OpKind.ADAPTIVE_POOL and geometry.output_size:
            return "-> " + "x".join("=" if size is None else str(size) for size in geometry.output_size)
        return ""

    kernel = "x".join(map(str, geometry.kernel))
    text = f"{kernel}/{pair_text(geometry.stride)} p{pair_text(geometry.padding)}"
    if geometry.padding_end != geometry.padding:
        text += f"+{pair_text(geometry.padding_end)}"
    if geometry.padding_mode not in ("zeros", "same", "valid"):
        text += f" {geometry.padding_mode}"
    if any(d != 1 for d in geometry.dilation):
        text += f" d{pair_text(geometry.dilation)}"
    if geometry.groups != 1:
        text += f" g{geometry.groups}"
    if geometry.ceil_mode:
        text += " ceil"
    return text


def check_cell(check: LayerArithmetic | None) -> Cell:
    if check is None:
        return Cell("")
    label = "adaptive" if check.relation is None else f"({check.relation})"
    return Cell(f"{PASS if check.ok else FAIL} {label}", "green" if check.ok else "bold red")


def arithmetic_json(check: LayerArithmetic) -> dict[str, Any]:
    return {
        "relation": check.relation, "expected": list(check.expected), "observed": list(check.observed),
        "ok": check.ok, "dropped": list(check.dropped),
    }


@dataclass(frozen=True, repr=False)
class VerifyReport(ReportView):
    """`verify`: one row per convolution or pooling layer; failed > 0 means exit code 1."""

    model: str
    input_shape: tuple[int, ...]
    checks: tuple[LayerCheck, ...]
    capture_warnings: tuple[str, ...] = ()  # what the forward pass could not see (data-dependent branches)
    padding_runs: tuple[PaddingRun, ...] = ()  # modules whose forward pads other than they declare

    @property
    def failed(self) -> int:
        return sum(not item.check.ok for item in self.checks)

    @property
    def warnings(self) -> tuple[str, ...]:
        arithmetic = tuple(f"{item.node.name}: {warning}" for item in self.checks for warning in item.check.warnings)
        return arithmetic + tuple(run.message for run in self.padding_runs) + self.capture_warnings

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "model": self.model,
            "input_shape": list(self.input_shape),
            "checked": len(self.checks),
            "failed": self.failed,
            "layers": [
                {"name": item.node.name, "type": item.node.type, **arithmetic_json(item.check)} for item in self.checks
            ],
            "warnings": list(self.warnings),
        }

    def document(self) -> Document:
        columns = (
            Column("layer"), Column("type"), Column("geometry"), Column("relation", "right"), Column("formula"),
            Column("expected", "right"), Column("observed", "right"), Column("check", "center"),
            Column("dropped", "right"),
        )
        runs = {run.node: run for run in self.padding_runs}
        rows = []
        for item in self.checks:
            check = item.check
            formula = check.formulas[0] if len(set(check.formulas)) == 1 else " ; ".join(check.formulas)
            run = runs.get(item.node.id)
            rows.append((
                item.node.name, item.node.type,
                geometry_text(item.node.geometry) + (f" ({run.cell})" if run is not None else ""),
                "adaptive" if check.relation is None else str(check.relation), formula,
                shape_text(check.expected), shape_text(check.observed),
                Cell(PASS if check.ok else FAIL, "green" if check.ok else "bold red"),
                "" if not any(check.dropped) else shape_text(check.dropped),
            ))
        verdict = ("nothing to check: the model has no convolution or pooling layer" if not self.checks
                   else "all layers agree" if not self.failed
                   else f"{self.failed} layer(s) disagree with their geometry")
        footer = (f"{self.model} at {shape_text(self.input_shape)}: {len(self.checks)} checked, "
                  f"{self.failed} failed — {verdict}",)
        title = f"Convolution arithmetic of {self.model} (Dumoulin & Visin relations)"
        return Document((Table(title, columns, tuple(rows), footer),), notes=self.warnings)


def _count_text(value: int | None) -> str:
    """'1,234'; empty for none or zero (the table leaves such cells blank)."""
    return f"{value:,}" if value else ""


def _bytes_cell(value: int | None) -> Cell | str:
    """Rounded units for people; the exact bytes as the cell's data, for CSV."""
    return Cell(bytes_text(value), data=value) if value else ""


def _geometry_cell(layer: LayerRecord, run: PaddingRun | None) -> Cell | str:
    """Kernel, stride and padding; what the padding run starting at this layer says, when one does."""
    return geometry_text(layer.geometry) if run is None else run.cell


def _milliseconds_text(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


@dataclass(frozen=True, repr=False)
class SummaryReport(SummaryView):
    """`summary`: the layer tree with shapes, arithmetic, parameters, MACs, receptive field (and time)."""

    model: str
    capture: Capture
    checks: tuple[LayerCheck, ...]
    counts: Counts
    fields: ReceptiveFieldResult | None
    fvcore: FvcoreCounts | None = None
    fvcore_note: str | None = None
    layer_times_ms: dict[str, float] | None = None
    max_depth: int | None = None
    layer_fields: dict[int, dict[str, Any] | None] = field(default_factory=dict)  # JSON objects
    torchinfo: TorchinfoCounts | None = None
    stage_rows: tuple[StageRow, ...] = ()  # the stem, each stage and the head (``stages``)
    padding_runs: tuple[PaddingRun, ...] = ()  # modules whose forward pads other than they declare
    training: TrainingCounts | None = None  # summary --train: backward MACs, saved and gradient bytes, step memory
    training_capture: TrainingCapture | None = None
    memory_timeline: MemoryTimeline | None = None  # summary --train: the step's memory over time, by kind

    def _by_stage(self, key: str) -> dict[str, int]:
        """Stage name -> MACs or parameters; rows with one name (a module called again) add up."""
        result: dict[str, int] = {}
        if len(self.stage_rows) < 2:  # no stage, the head alone: nothing per stage to say
            return result
        for row in self.stage_rows:
            result[row.key] = result.get(row.key, 0) + getattr(row, key)
        return result

    @cached_property
    def checks_by_node(self) -> dict[int, LayerArithmetic]:
        return {item.node.id: item.check for item in self.checks}

    @cached_property
    def _train_layers(self) -> dict[int, int]:
        """This capture's layer index -> the training pass's, matched by name and call order (a layer that runs
        only in train mode has no row; the totals count it)."""
        if self.training_capture is None:
            return {}
        calls: dict[tuple[str, int], int] = {}
        seen: dict[str, int] = {}
        for layer in self.training_capture.capture.layers:
            calls[(layer.name, seen.get(layer.name, 0))] = layer.index
            seen[layer.name] = seen.get(layer.name, 0) + 1
        matched, seen = {}, {}
        for layer in self.capture.layers:
            key = (layer.name, seen.get(layer.name, 0))
            seen[layer.name] = key[1] + 1
            if key in calls:
                matched[layer.index] = calls[key]
        return matched

    def _train_values(self, layer: LayerRecord) -> tuple[int | None, int | None, int | None]:
        """(backward MACs, saved bytes, gradient bytes) of one layer, None without --train."""
        training = self.training
        index = self._train_layers.get(layer.index)
        if training is None or index is None:
            return None, None, None
        return (training.layer_backward_macs.get(index, 0), training.layer_saved_bytes.get(index, 0),
                training.layer_grad_bytes.get(index, 0))

    def _recompute_value(self, layer: LayerRecord) -> int | None:
        """The forward MACs activation checkpointing runs again in the backward, None without --train."""
        index = self._train_layers.get(layer.index)
        if self.training is None or index is None:
            return None
        return self.training.layer_recompute_macs.get(index, 0)

    @property
    def failed(self) -> int:
        return sum(not item.check.ok for item in self.checks)

    def _layer_check(self, layer: LayerRecord) -> LayerArithmetic | None:
        return self.checks_by_node.get(layer.node) if layer.node is not None else None

    def _fvcore_layer(self, layer: LayerRecord) -> int | None:
        if self.fvcore is None:
            return None
        return self.fvcore.by_module.get(layer.name)

    def to_dict(self) -> dict[str, Any]:
        capture, counts = self.capture, self.counts
        checks = self.checks_by_node
        layers = []
        for layer in capture.layers:
            check = checks.get(layer.node) if layer.node is not None else None
            macs = counts.layer_macs.get(layer.index, 0)
            entry: dict[str, Any] = {
                "name": layer.name, "type": layer.type, "depth": layer.depth,
                "kind": layer.geometry.kind.value if layer.geometry is not None else None,
                "input_shape": list(layer.input_shape), "output_shape": list(layer.output_shape),
                "params": layer.params, "macs": macs, "flops": 2 * macs,
                "arithmetic": arithmetic_json(check) if check is not None else None,
                "receptive_field": self.layer_fields.get(layer.index),
                "activation_bytes": counts.layer_activation_bytes.get(layer.index, 0),
                "fvcore_flops": self._fvcore_layer(layer),
                "torchinfo_mult_adds": None if self.torchinfo is None else self.torchinfo.by_module.get(layer.name),
                "torchinfo_params": None if self.torchinfo is None else self.torchinfo.params_by_module.get(layer.name),
            }
            if self.layer_times_ms is not None:
                entry["time_ms"] = self.layer_times_ms.get(layer.name)
            entry["backward_macs"], entry["saved_bytes"], entry["grad_bytes"] = self._train_values(layer)
            entry["recompute_macs"] = self._recompute_value(layer)
            layers.append(entry)
        return {
            "schema_version": SCHEMA_VERSION,
            "model": self.model,
            "input_shape": list(capture.input_shape),
            "output_shape": list(capture.output_shape),
            "output_shapes": [list(shape) for shape in capture.output_shapes],
            "output_names": list(capture.output_names),
            "input_shapes": [list(shape) for shape in capture.input_shapes],
            "warnings": list(self.warnings),
            "totals": {
                "params": counts.params, "trainable_params": counts.trainable_params, "macs": counts.macs,
                "activation_bytes": counts.activation_bytes, "flops": counts.flops,
                "fvcore_flops": None if self.fvcore is None else self.fvcore.total_flops,
                "param_bytes": counts.param_bytes, "frozen_params": counts.frozen_params,
                "peak_memory_bytes": counts.peak_memory_bytes,
                "fvcore_unsupported_ops": None if self.fvcore is None else dict(self.fvcore.unsupported_ops),
                "param_bytes_by_dtype": dict(counts.param_bytes_by_dtype),
                "params_by_stage": self._by_stage("params"),
                "macs_by_stage": self._by_stage("macs"),
                "uncounted_ops": dict(counts.uncounted_ops),
                "torchinfo_mult_adds": None if self.torchinfo is None else self.torchinfo.mult_adds,
                "torchinfo_params": None if self.torchinfo is None else self.torchinfo.params,
                **self._training_totals(),
            },
            "training": None if self.training is None else self.training.memory.to_dict(),
            "memory_timeline": None if self.memory_timeline is None else self.memory_timeline.to_dict(),
            "arithmetic": {"checked": len(self.checks), "failed": self.failed},
            "receptive_field": self.fields.to_json() if self.fields is not None else None,
            "layers": layers,
        }

    def _training_totals(self) -> dict[str, Any]:
        training = self.training
        keys = ("backward_macs", "backward_flops", "saved_bytes", "saved_tensors", "grad_bytes", "train_peak_bytes",
                "recompute_macs")
        if training is None:
            return dict.fromkeys(keys)
        return {"backward_macs": training.backward_macs, "backward_flops": training.backward_flops,
                "recompute_macs": training.recompute_macs,
                "saved_bytes": training.saved_bytes, "saved_tensors": training.saved_tensors,
                "grad_bytes": training.grad_bytes, "train_peak_bytes": training.memory.peak_bytes}

    def document(self) -> Document:
        capture = self.capture
        shown = [layer for layer in capture.layers if self.max_depth is None or layer.depth <= self.max_depth]
        table = column_table(f"{self.model}: input {shape_text(capture.input_shape)}", self._columns(), shown,
                             self._footer())
        return Document((table,), notes=self._notes())

    def _columns(self) -> list[TableColumn[LayerRecord]]:
        """The layer table's columns, each beside the rule for its cell; the options add theirs."""
        layer_macs = self.counts.layer_macs
        runs = {run.record: run for run in self.padding_runs}
        columns: list[TableColumn[LayerRecord]] = [
            TableColumn(Column("layer"), lambda layer: Cell("  " * (layer.depth - 1) + self._relative_name(layer),
                                                            data=layer.name)),
            TableColumn(Column("type"), lambda layer: layer.type),
            TableColumn(Column("input", "right"), lambda layer: shape_text(layer.input_shape)),
            TableColumn(Column("output", "right"), lambda layer: shape_text(layer.output_shape)),
            TableColumn(Column("kernel/stride/pad"), lambda layer: _geometry_cell(layer, runs.get(layer.index))),
            TableColumn(Column("check", "center"), lambda layer: check_cell(self._layer_check(layer))),
            TableColumn(Column("RF", "right"), self._field_text),
            TableColumn(Column("params", "right"), lambda layer: _count_text(layer.params)),
            TableColumn(Column("MACs", "right"), lambda layer: _count_text(layer_macs.get(layer.index, 0))),
        ]
        if self.fvcore is not None:
            columns.append(TableColumn(Column("fvcore", "right"), lambda layer: _count_text(self._fvcore_layer(layer))))
        if self.torchinfo is not None:
            params, mult_adds = self.torchinfo.params_by_module, self.torchinfo.by_module
            columns += [
                TableColumn(Column("torchinfo params", "right"), lambda layer: _count_text(params.get(layer.name))),
                TableColumn(Column("torchinfo Mult-Adds", "right"),
                            lambda layer: _count_text(mult_adds.get(layer.name))),
            ]
        if self.training is not None:
            columns += [
                TableColumn(Column("bwd MACs", "right"), lambda layer: _count_text(self._train_values(layer)[0])),
                TableColumn(Column("saved", "right", unit="bytes"),
                            lambda layer: _bytes_cell(self._train_values(layer)[1])),
                TableColumn(Column("grads", "right", unit="bytes"),
                            lambda layer: _bytes_cell(self._train_values(layer)[2])),
            ]
        if self.layer_times_ms is not None:
            times = self.layer_times_ms
            columns.append(TableColumn(Column("ms", "right"), lambda layer: _milliseconds_text(times.get(layer.name))))
        return columns

    def _field_text(self, layer: LayerRecord) -> str:
        field_json = self.layer_fields.get(layer.index)
        if not field_json:
            return ""
        if field_json.get("constant"):
            return "constant"
        return pair_text(field_json["size"]) + (MEASURED_MARK if field_json.get("method") == "measured" else "")

    def to_html(self, path: str | os.PathLike[str] | None = None) -> str:
        """One self-contained HTML page: the layer tree (every layer, expanded down to ``max_depth``), the totals,
        the receptive-field picture and MACs and parameters per stage; also written to ``path`` as ``-o`` writes
        it, when one is given."""
        rf = RfReport(self.model, self.capture.input_shape, self.fields).to_dict() if self.fields else None
        return written(summary_html(self.to_dict(), replace(self, max_depth=None).document(), rf, self.max_depth),
                       path)

    def _relative_name(self, layer: LayerRecord) -> str:
        """The name below the enclosing call's: `layers.0` under `encoder` (ModuleLists make no call of their own)."""
        if layer.parent is None:
            return layer.name
        return layer.name.removeprefix(f"{self.capture.layers[layer.parent].name}.")

    def _footer(self) -> tuple[str, ...]:
        capture, counts = self.capture, self.counts
        convolutions = sum(1 for node in capture.nodes if node.geometry.kind is OpKind.CONV)
        lines = [
            f"output shape: {shape_text(capture.output_shape)}",
            f"parameters: {counts.params:,} (trainable {counts.trainable_params:,}, frozen {counts.frozen_params:,}; "
            f"{bytes_text(counts.param_bytes)})",
            f"MACs: {counts.macs:,} ({counts.macs / 1e9:.3f} G)   FLOPs = 2 x MACs: {counts.flops:,}",
        ]
        if self.fvcore is not None:
            lines.append(f"fvcore flops (one fused multiply-add = one flop): {self.fvcore.total_flops:,}")
        if self.torchinfo is not None:
            lines.append(f"torchinfo: {self.torchinfo.params:,} parameters, {self.torchinfo.mult_adds:,} Mult-Adds "
                         f"= our MACs {counts.macs:,}")
            lines += self.torchinfo.explanation(counts.macs)
        lines.append(f"activation memory: {bytes_text(counts.activation_bytes)}   "
                     f"estimated peak inference memory: {bytes_text(counts.peak_memory_bytes)}")
        if self.training is not None:
            lines += self._training_footer()
        if self.fields is not None and self.fields.output is not None:
            output = self.fields.output
            extra = "".join(text for flag, text in (
                (output.whole, "; every unit sees that whole region (token mixing)"),
                (output.global_context and not output.whole, "; plus global context through a pooled branch"),
                (output.union, "; the hull of unaligned paths"),
            ) if flag)
            lines.append(f"receptive field at the encoder output: {field_size_text(output)}, effective stride "
                         f"{pair_text(output.stride)}, effective padding {pair_text(output.padding)}{extra}")
        lines.append(f"convolutions: {convolutions}   layers checked: {len(self.checks)}   failed: {self.failed}")
        return tuple(lines)

    def _training_footer(self) -> list[str]:
        training = self.training
        assert training is not None
        memory = training.memory
        precision = memory.dtype + (f", autocast {memory.amp}" if memory.amp else "") + f", {memory.loop}"
        lines = [
            f"training ({memory.optimizer}, {precision}): backward MACs {training.backward_macs:,} "
            f"({training.backward_macs / 1e9:.3f} G)   forward + backward MACs "
            f"{self.counts.macs + training.backward_macs:,}" + (
                f"   recomputed (activation checkpointing) MACs {training.recompute_macs:,}"
                if training.recompute_macs else ""),
            f"saved for backward: {bytes_text(training.saved_bytes)} of activations   gradients: "
            + (f"{bytes_text(memory.gradient_bytes)}   optimizer state: {bytes_text(memory.optimizer_state_bytes)}"
               + (f" (per device of {memory.shard})" if memory.shard > 1 else "")),
        ]
        per = f" per device of {memory.shard}" if memory.shard > 1 else ""
        breakdown = (f"weights {bytes_text(memory.weights_bytes)} + buffers {bytes_text(memory.buffer_bytes)} + "
                     f"optimizer state {bytes_text(memory.optimizer_state_bytes)} + input "
                     f"{bytes_text(memory.input_bytes)}")
        if memory.gathered_bytes:
            held = "FSDP's gathered units and buffers" if memory.shard_units else "gathered layer"
            breakdown += f" + {held} {bytes_text(memory.gathered_bytes)}"
        if memory.shard_units:
            lines.append(f"fully_shard units: {memory.shard_units}; the largest, "
                         f"{memory.largest_unit}, gathers {bytes_text(memory.largest_unit_bytes)}")
        if memory.peak_bytes is None:
            lines.append(f"training step memory{per}: {memory.note}")
        else:
            lines.append(f"estimated peak of a training step{per}: {bytes_text(memory.peak_bytes)} in {memory.where} "
                         f"({breakdown}, then activations and gradients as they live)")
        return lines

    @property
    def warnings(self) -> tuple[str, ...]:
        """What the forward pass could not see (data-dependent branches, values read back), and the modules whose
        forward pads other than they declare."""
        return tuple(run.message for run in self.padding_runs) + self.capture.warnings

    def _notes(self) -> tuple[str, ...]:
        notes = [f"{item.node.name}: {warning}" for item in self.checks for warning in item.check.warnings
                 if not item.check.ok]
        notes += list(self.warnings)
        if len(self.capture.output_shapes) > 1:
            outputs = ", ".join(f"{name or 'output'} {shape_text(shape)}" for name, shape in
                                zip(self.capture.output_names, self.capture.output_shapes, strict=True))
            notes.append(f"outputs: {outputs}")
        if self.counts.uncounted_ops:
            unknown = ", ".join(f"{op} x{count}" for op, count in sorted(self.counts.uncounted_ops.items()))
            notes.append(f"no counting rule (0 MACs assumed) for: {unknown}")
        if self.fvcore_note:
            notes.append(self.fvcore_note)
        if self.fvcore is not None and self.fvcore.unsupported_ops:
            skipped = ", ".join(f"{op} x{count}" for op, count in sorted(self.fvcore.unsupported_ops.items()))
            notes.append(f"fvcore did not count: {skipped}")
        if self.fields is not None:
            notes += [f"receptive field: {reason}" for reason in (*self.fields.reasons, *self.fields.remarks)]
            if self.fields.output is not None and self.fields.output.method == "measured":
                notes.append(measured_note(self.fields.output, "receptive field at the encoder output"))
        return tuple(notes)


