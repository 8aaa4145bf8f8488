"""`arith`: the convolution-arithmetic calculator for one axis."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from resnet_inspect.render.document import Column, Document, Table
from resnet_inspect.report.view import ReportView
from resnet_inspect.schemas import SCHEMA_VERSION

if TYPE_CHECKING:
    from resnet_inspect.ops.arithmetic import AxisArithmetic


@dataclass(frozen=True, repr=False)
class ArithReport(ReportView):
    """One axis: the layer's numbers, its output size, relation and formula (and paddings that keep the size)."""

    layer: str
    inputs: dict[str, int | bool]
    result: AxisArithmetic
    solutions: tuple[int, ...] | None = None
    solve_target: int | None = None
    solution_output_paddings: tuple[int, ...] | None = None  # transposed: the output padding of each solution

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "output": self.result.output, "relation": self.result.relation, "formula": self.result.formula,
            "dropped": self.result.dropped, "layer": self.layer, "flags": list(self.result.flags),
        }
        if self.solutions is not None:
            data["solve"] = {"target": self.solve_target, "paddings": list(self.solutions)}
            if self.solution_output_paddings is not None:
                data["solve"]["output_paddings"] = list(self.solution_output_paddings)
        return data

    def document(self) -> Document:
        settings = ", ".join(f"{key}={value}" for key, value in self.inputs.items())
        rows: tuple[tuple[str, str], ...] = (
            ("output size", str(self.result.output)),
            ("relation", "adaptive" if self.result.relation is None else str(self.result.relation)),
            ("formula", self.result.formula),
            ("dropped rows/columns", str(self.result.dropped)),
        )
        if self.solutions is not None:
            found = ", ".join(map(str, self.solutions)) if self.solutions else "none"
            if self.solution_output_paddings is not None and self.solutions:
                found = ", ".join(f"{p} (output padding {a})"
                                  for p, a in zip(self.solutions, self.solution_output_paddings, strict=True))
            rows += ((f"paddings giving o = {self.solve_target}", found),)
        tables = [Table(f"{self.layer}: {settings}", (Column("quantity"), Column("value")), rows)]
        flags = tuple(f"flag: {flag}" for flag in self.result.flags)
        return Document(tuple(tables), notes=flags)


