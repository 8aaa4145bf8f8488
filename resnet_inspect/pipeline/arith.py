"""`arith`: one axis of a convolution, pooling or transposed convolution, from the user's numbers."""

from __future__ import annotations

from resnet_inspect.errors import BadInputError
from resnet_inspect.ops.arithmetic import (
    conv_output,
    conv_transpose_output,
    pool_output,
    solve_padding,
    solve_transposed_padding,
)
from resnet_inspect.report.arith import ArithReport


def _check_arith_options(k: int, s: int, p: int, d: int, pool: bool, ceil_mode: bool, transposed: bool,
                         output_padding: int) -> None:
    """The options that only make sense together, and PyTorch's limits on them (BadInputError)."""
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


def arith_report(i: int, k: int, s: int = 1, p: int = 0, d: int = 1, *, pool: bool = False, ceil_mode: bool = False,
                 transposed: bool = False, output_padding: int = 0, solve: bool = False) -> ArithReport:
    """Compute one axis of a convolution, pooling or transposed convolution."""
    _check_arith_options(k, s, p, d, pool, ceil_mode, transposed, output_padding)
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


__all__ = ["arith_report"]
