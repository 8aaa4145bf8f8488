"""The receptive-field report: one row per stage, optionally checked with gradients, and the effective field."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from resnet_inspect.render.document import Cell, Column, Document, Table
from resnet_inspect.render.heatmap import erf_heatmap
from resnet_inspect.render.text import pair_text, shape_text, yes_no
from resnet_inspect.report.view import ReportView
from resnet_inspect.schemas import SCHEMA_VERSION

if TYPE_CHECKING:
    from resnet_inspect.analysis.empirical import ErfResult, SupportCheck
    from resnet_inspect.analysis.receptive_field import ReceptiveFieldResult, StageField

HEATMAP_COLUMNS = 32


def _list(values: tuple[Any, ...] | None) -> list[Any] | None:
    return list(values) if values is not None else None


@dataclass(frozen=True, repr=False)
class RfReport(ReportView):
    """Receptive fields of one model at one input size, per stage; the check and the ERF when asked for."""

    model: str
    input_shape: tuple[int, ...]
    result: ReceptiveFieldResult
    empirical: SupportCheck | None = None
    erf: ErfResult | None = None
    png: str | None = None  # where the ERF's grayscale PNG was written
    plot: str | None = None  # where the receptive-field picture was written

    @property
    def stages(self) -> tuple[StageField, ...]:
        return self.result.stages

    def _stage_dict(self, stage: StageField) -> dict[str, Any]:
        field = stage.field
        values = field.to_json() if field else {"size": None, "stride": None, "padding": None,
                                                 "global_context": None}
        return {
            "name": stage.name, **values, "output_size": list(stage.output_size),
            "covers_input": stage.covers_input, "centre": _list(field.centre) if field else None,
            "modules": list(stage.modules), "reason": stage.reason,
        }

    def _empirical_dict(self) -> dict[str, Any] | None:
        if self.empirical is None:
            return None
        return {
            "size": _list(self.empirical.size), "agrees": self.empirical.agrees,
            "input_size": list(self.empirical.input_size),
            "stages": [
                {"name": check.name, "size": _list(check.measured_size), "analytic": _list(check.analytic_size),
                 "unit": list(check.unit), "inside": check.inside, "agrees": check.agrees, "reason": check.reason,
                 "input_size": list(check.input_size)}
                for check in self.empirical.stages
            ],
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "model": self.model,
            "input_shape": list(self.input_shape),
            "stages": [self._stage_dict(stage) for stage in self.stages],
            "output": self.result.to_json(),
            "aligned": self.result.aligned,
            "union": self.result.union,
            "remarks": list(self.result.remarks),
            "reasons": list(self.result.reasons),
            "empirical": self._empirical_dict(),
            "erf": {**self.erf.to_dict(), "png": self.png} if self.erf else None,
        }

    def _stage_table(self) -> Table:
        checks = {check.name: check for check in self.empirical.stages} if self.empirical else {}
        columns = [Column("stage"), Column("size", "right"), Column("stride", "right"), Column("padding", "right"),
                   Column("output", "right"), Column("covers input")]
        if self.empirical:
            columns += [Column("measured", "right"), Column("agrees")]
        rows = []
        for stage in self.stages:
            row: list[Cell | str] = [
                stage.name, pair_text(stage.size), pair_text(stage.stride), pair_text(stage.padding),
                shape_text(stage.output_size), yes_no(stage.covers_input),
            ]
            if self.empirical:
                check = checks.get(stage.name)
                agrees = check.agrees if check else None
                row += [pair_text(check.measured_size if check else None),
                        yes_no(agrees) if agrees is not False else Cell("NO", "bold red")]
            rows.append(tuple(row))
        footer = (
            "size, stride, padding: effective, per axis (one number when height = width); Distill 2019",
            "output unit u sees input [-padding + u*stride, -padding + u*stride + size - 1] on each axis",
            "covers input: every output unit, border units included, sees the whole input",
        )
        size = "x".join(map(str, self.input_shape[2:]))
        return Table(f"Receptive field of {self.model} at {size}", tuple(columns), tuple(rows), footer)

    def _erf_tables(self) -> tuple[Table, ...]:
        if self.erf is None:
            return ()
        erf = self.erf
        rows = (
            ("r50", f"{erf.r50:g} px"), ("r90", f"{erf.r90:g} px"), ("r99", f"{erf.r99:g} px"),
            ("ratio r99 / field half-width", "-" if erf.ratio is None else f"{erf.ratio:.3f}"),
            ("theoretical field", pair_text(erf.field_size)),
            ("centre (row, column)", f"({erf.centre[0]:g}, {erf.centre[1]:g})"),
            ("samples", str(erf.samples)), ("weights", erf.weights),
        )
        summary = Table(
            f"Effective receptive field of the encoder output's centre unit ({erf.unit[0]}, {erf.unit[1]}) "
            "(Luo et al. 2016)",
            (Column("quantity"), Column("value", "right")), rows,
            ("rq: half-width (px) of the smallest square around the centre holding q of the gradient mass",
             "ratio: r99 / ((size - 1) / 2), the theoretical field's half-width (larger axis)"),
        )
        heatmap = Table(
            "Gradient mass over the input (shade = sqrt of mass)", (Column("heatmap"),),
            tuple((line,) for line in erf_heatmap(erf.mass, HEATMAP_COLUMNS)),
        )
        return (summary, heatmap)

    def _notes(self) -> tuple[str, ...]:
        notes = [f"undefined: {reason}" for reason in self.result.reasons]
        notes += list(self.result.remarks)
        if self.result.union:
            notes.append("the network is not aligned: paths with the same stride but different centres merge, and "
                         "each field is the hull (union) of their intervals")
        elif not self.result.aligned:
            notes.append("the network is not aligned: its receptive field depends on the position")
        whole = [stage.name for stage in self.stages if stage.field is not None and stage.field.whole]
        context = [stage.name for stage in self.stages if stage.field is not None and stage.field.global_context
                   and not stage.field.whole]
        if whole:
            notes.append(f"from {whole[0]} on, every unit sees the same region, the whole input: attention (or "
                         "another token mixer) mixes every position with every other")
        if context:
            notes.append(f"global context from {context[0]} on: besides the local field shown, each unit depends on "
                         "the whole input through a pooled branch (a gate or normalisation statistics)")
        inexact = [stage for stage in self.stages if stage.field is not None and not stage.field.exact]
        if inexact:
            notes.append(f"from {inexact[0].name} on: {inexact[0].reason}")
        if self.empirical:
            compared = sum(check.agrees is not None for check in self.empirical.stages)
            total = len(self.empirical.stages)
            scope = "every stage" if compared == total else f"{compared} of {total} stages (the others have no field)"
            verdict = {True: f"agrees with the analysis on {scope}", False: "DISAGREES with the analysis",
                       None: "could not be compared with the analysis"}[self.empirical.agrees]
            sizes = sorted({"x".join(map(str, check.input_size)) for check in self.empirical.stages})
            notes.append(f"check: input-gradient support of each stage's centre unit in a linear one-channel replay "
                         f"at {', '.join(sizes)} {verdict}")
            notes += [f"check of {check.name}: {check.reason}" for check in self.empirical.stages
                      if check.reason and check.field is not None]
        if self.png:
            notes.append(f"ERF picture written to {self.png}")
        if self.plot:
            notes.append(f"receptive-field picture written to {self.plot}")
        return tuple(notes)

    def document(self) -> Document:
        return Document((self._stage_table(), *self._erf_tables()), self._notes())


# --------------------------------------------------------------------------------------------- building


__all__ = ["RfReport"]
