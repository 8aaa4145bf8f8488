"""`arith`: the convolution-arithmetic calculator for one axis."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from resnet_inspect.errors import BadInputError
from resnet_inspect.ops.arithmetic import (
    AxisArithmetic,
    conv_output,
    conv_transpose_output,
    pool_output,
    solve_padding,
    solve_transposed_padding,
)
from resnet_inspect.render.document import Column, Document, Table
from resnet_inspect.report.view import ReportView
from resnet_inspect.schemas import SCHEMA_VERSION


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
        rows = (
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


def arith_report(i: int, k: int, s: int = 1, p: int = 0, d: int = 1, *, pool: bool = False, ceil_mode: bool = False,
                 transposed: bool = False, output_padding: int = 0, solve: bool = False) -> ArithReport:
    """Compute one axis of a convolution, pooling or transposed convolution."""
    if pool and transposed:
        raise BadInputError("--pool and --transposed cannot be combined")
    if ceil_mode and not pool:
        raise BadInputError("--ceil-mode applies to pooling only (add --pool)")
    if output_padding and not transposed:
        raise BadInputError("--output-padding applies to transposed convolutions only (add --transposed)")
    if transposed and output_padding >= max(s, d):
        raise BadInputError(f"output padding must be smaller than the stride or the dilation, got {output_padding}")
    if pool and 2 * p > k:
        raise BadInputError(f"pooling padding must be at most half the kernel size (PyTorch), got p={p}, k={k}")
    try:
        if transposed:
            layer, result = "transposed convolution", conv_transpose_output(i, k, s, p, d, output_padding)
        elif pool:
            layer, result = "pooling", pool_output(i, k, s, p, d, ceil_mode)
        else:
            layer, result = "convolution", conv_output(i, k, s, p, d)
    except ValueError as exc:
        raise BadInputError(str(exc)) from exc
    if result.output < 1:
        raise BadInputError(f"output size would be {result.output}: the input {i} is too small for a kernel "
                            f"of {d * (k - 1) + 1} with padding {p}")
    inputs: dict[str, int | bool] = {"i": i, "k": k, "s": s, "p": p, "d": d}
    if pool:
        inputs["ceil_mode"] = ceil_mode
    if transposed:
        inputs["output_padding"] = output_padding
    if solve and transposed:  # the transposed relation's inverse: o = s*i, with the output padding that gives it
        pairs = solve_transposed_padding(i, k, s, d)
        return ArithReport(layer, inputs, result, tuple(p for p, _ in pairs), s * i, tuple(a for _, a in pairs))
    solutions = tuple(solve_padding(i, k, s, d)) if solve else None
    target = (i if s == 1 else -(-i // s)) if solve else None
    return ArithReport(layer, inputs, result, solutions, target)
