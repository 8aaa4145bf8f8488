"""Convolution arithmetic: the expected output size of every windowed layer, relation by relation.

Relation numbers follow Dumoulin & Visin 2016, "A guide to convolution arithmetic for deep learning"
(arXiv:1603.07285), per spatial axis, with PyTorch's additions: asymmetric padding (``padding='same'``),
pooling ``ceil_mode`` and transposed ``output_padding``. Pure Python: no torch here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from resnet_inspect.records import Geometry, OpKind

# Flag names, in the order they are reported.
DROPPED = "dropped"
SIZE_PRESERVING = "size_preserving"
EVEN_KERNEL_AUTO_PADDING = "even_kernel_auto_padding"
ZERO_ONLY_WINDOWS = "zero_only_windows"
CEIL_MODE_DROPPED_WINDOW = "ceil_mode_dropped_window"
FLAGS = (DROPPED, SIZE_PRESERVING, EVEN_KERNEL_AUTO_PADDING, ZERO_ONLY_WINDOWS, CEIL_MODE_DROPPED_WINDOW)


@dataclass(frozen=True)
class AxisArithmetic:
    """The expected output size on one spatial axis and the relation that gives it."""

    output: int  # expected output size; below 1 where PyTorch rejects the layer
    relation: int | None  # Dumoulin & Visin relation number; None for adaptive pooling
    formula: str  # the relation with this layer's numbers filled in
    dropped: int  # trailing rows/columns of the padded input that no window covers
    flags: tuple[str, ...]


@dataclass(frozen=True)
class LayerArithmetic:
    """A layer's expected output size (h, w) checked against what the forward pass produced."""

    relation: int | None  # the most general (largest) of the axes' relations
    expected: tuple[int, ...]
    observed: tuple[int, ...]
    ok: bool
    dropped: tuple[int, ...]
    formulas: tuple[str, ...]
    flags: tuple[str, ...]  # union of the axes' flags
    warnings: tuple[str, ...]  # sentences for the flags worth a warning (lost input, even-kernel padding, ...)
    remarks: tuple[str, ...] = ()  # one sentence per flag (per axis where the axes differ), warnings included


def conv_output(i: int, k: int, s: int = 1, p: int = 0, d: int = 1, p_end: int | None = None) -> AxisArithmetic:
    """Output size of a convolution: relations 1-6, or 15 when dilated (``p_end`` defaults to ``p``)."""
    p_end = p if p_end is None else p_end
    _validate(i=i, k=k, s=s, p=p, p_end=p_end, d=d)
    effective = _effective_kernel(k, d)
    span = i + p + p_end - effective
    output = span // s + 1
    relation = _conv_relation(k, s, p, p_end, d)
    match relation:
        case 1:
            formula = f"o = {i} - {k} + 1 = {output}"
        case 2:
            formula = f"o = ({i} - {k}){_padding_terms(p, p_end)} + 1 = {output}"
        case 3:
            formula = f"o = i = {output}"
        case 4:
            formula = f"o = {i} + ({k} - 1) = {output}"
        case _:  # 5, 6 and 15 share the floor form; 15 adds the dilation term
            formula = f"o = floor(({i}{_padding_terms(p, p_end)}{_minus_kernel(k, d)}) / {s}) + 1 = {output}"
    flags = []
    dropped = span % s if output >= 1 else 0
    if dropped:
        flags.append(DROPPED)
    if output == i:
        flags.append(SIZE_PRESERVING)
    if d == 1 and k % 2 == 0 and p == p_end == k // 2:
        flags.append(EVEN_KERNEL_AUTO_PADDING)
    if output >= 1 and _windows_without_input(i, k, s, p, d, output):
        flags.append(ZERO_ONLY_WINDOWS)
    return AxisArithmetic(output, relation, formula, dropped, tuple(flags))


def pool_output(
    i: int,
    k: int,
    s: int | None = None,
    p: int = 0,
    d: int = 1,
    ceil_mode: bool = False,
    p_end: int | None = None,
) -> AxisArithmetic:
    """Output size of max/average pooling: relation 7 (``s=None`` means ``s = k``, as in PyTorch)."""
    s = k if s is None else s
    p_end = p if p_end is None else p_end
    _validate(i=i, k=k, s=s, p=p, p_end=p_end, d=d)
    effective = _effective_kernel(k, d)
    padded = i + p + p_end
    span = padded - effective
    body = f"({i}{_padding_terms(p, p_end)}{_minus_kernel(k, d)}) / {s}"
    flags = []
    if not ceil_mode:
        output = span // s + 1
        formula = f"o = floor({body}) + 1 = {output}"
    else:
        output = -(-span // s) + 1
        formula = f"o = ceil({body}) + 1 = {output}"
        # PyTorch drops a last window that would start in the right padding.
        last_start = (output - 1) * s
        if last_start >= i + p:
            output -= 1
            formula = (
                f"o = ceil({body}) + 1 - 1 = {output}, dropping the last window, which would start in the right "
                f"padding: ({output + 1} - 1)*{s} = {last_start} >= {i} + {p}"
            )
            flags.append(CEIL_MODE_DROPPED_WINDOW)
    # Rows after the last window's end; in ceil mode only a dropped window leaves any.
    dropped = max(0, padded - ((output - 1) * s + effective)) if output >= 1 else 0
    if dropped and not ceil_mode:
        flags.append(DROPPED)
    if output == i:
        flags.append(SIZE_PRESERVING)
    if output >= 1 and _windows_without_input(i, k, s, p, d, output):
        flags.append(ZERO_ONLY_WINDOWS)
    return AxisArithmetic(output, 7, formula, dropped, _ordered(flags))


def conv_transpose_output(
    i: int, k: int, s: int = 1, p: int = 0, d: int = 1, output_padding: int = 0
) -> AxisArithmetic:
    """Output size of a transposed convolution: relations 8-14, PyTorch's ``(i - 1)s - 2p + d(k - 1) + a + 1``."""
    _validate(i=i, k=k, s=s, p=p, d=d, output_padding=output_padding)
    effective = _effective_kernel(k, d)
    output = (i - 1) * s - 2 * p + effective + output_padding
    relation = _transposed_relation(effective, s, p, output_padding)
    # With dilation the relation keeps its number and k' = d(k - 1) + 1 takes the place of k.
    reach = f"({k} - 1)" if d == 1 else f"{d}*({k} - 1)"  # k' - 1
    match relation:
        case 8:
            formula = f"o = {i} + {reach} = {output}"
        case 9:
            formula = f"o = {i} + {reach} - 2*{p} = {output}"
        case 10:
            formula = f"o = i = {output}"
        case 11:
            formula = f"o = {i} - {reach} = {output}"
        case 12:
            formula = f"o = {s}*({i} - 1) + {_transposed_kernel(k, d)} = {output}"
        case _:
            formula = f"o = {s}*({i} - 1) + {output_padding} + {_transposed_kernel(k, d)} - 2*{p} = {output}"
    flags = []
    if output == i:
        flags.append(SIZE_PRESERVING)
    if output >= 1 and _outputs_without_input(i, k, s, p, d, output):
        flags.append(ZERO_ONLY_WINDOWS)
    return AxisArithmetic(output, relation, formula, 0, tuple(flags))


def adaptive_pool_output(i: int, target: int | None) -> AxisArithmetic:
    """Output size of adaptive pooling: the target itself, or the input size when the target is None."""
    _validate(i=i)
    if target is None:
        return AxisArithmetic(i, None, f"o = i = {i} (adaptive, size kept)", 0, (SIZE_PRESERVING,))
    flags = (SIZE_PRESERVING,) if target == i else ()
    return AxisArithmetic(target, None, f"o = {target} (adaptive target)", 0, flags)


def solve_padding(i: int, k: int, s: int = 1, d: int = 1) -> list[int]:
    """Every symmetric padding p >= 0 giving o = i (s = 1) or o = ceil(i / s) (s > 1).

    Paddings where some window would see only zeros are left out. An even effective kernel at s = 1 has no
    symmetric solution (PyTorch's ``padding='same'`` then pads one more on the right).
    """
    _validate(i=i, k=k, s=s, d=d)
    effective = _effective_kernel(k, d)
    target = -(-i // s)
    # floor((i + 2p - k') / s) = target - 1  <=>  (target - 1)s <= i + 2p - k' <= (target - 1)s + s - 1
    low = (target - 1) * s - i + effective
    high = low + s - 1
    candidates = range(max(0, -(-low // 2)), high // 2 + 1)
    return [p for p in candidates if not _windows_without_input(i, k, s, p, d, target)]


def solve_transposed_padding(i: int, k: int, s: int = 1, d: int = 1) -> list[tuple[int, int]]:
    """Every (padding, output padding) of a transposed convolution giving o = s*i, the inverse of a stride-s
    convolution's o = ceil(i / s): ``(i - 1)s - 2p + d(k - 1) + 1 + a = s*i``, so ``2p = d(k - 1) + 1 - s + a``.

    PyTorch takes an output padding ``a`` below the stride or the dilation. Solutions where some output is
    reached by no input (gaps between strided taps) are left out.
    """
    _validate(i=i, k=k, s=s, d=d)
    twice_padding = _effective_kernel(k, d) - s
    return [
        (p, a) for a in range(max(s, d)) if (twice_padding + a) >= 0 and (twice_padding + a) % 2 == 0
        for p in [(twice_padding + a) // 2] if not _outputs_without_input(i, k, s, p, d, s * i)
    ]


def check_layer(geometry: Geometry, input_sizes: Sequence[int], output_sizes: Sequence[int]) -> LayerArithmetic | None:
    """Check a windowed layer's observed spatial sizes against the arithmetic, one axis at a time.

    None for kinds without a window, or when the observed sizes have another number of axes than the geometry.
    """
    if not geometry.kind.has_window or len(input_sizes) != geometry.rank or len(output_sizes) != geometry.rank:
        return None
    axes = tuple(_axis(geometry, axis, input_sizes[axis]) for axis in range(geometry.rank))
    relations = [axis.relation for axis, _ in axes if axis.relation is not None]
    expected = tuple(axis.output for axis, _ in axes)
    observed = tuple(output_sizes)
    flags = {flag for axis, _ in axes for flag in axis.flags}
    remarks = _remarks(geometry.kind, axes)
    return LayerArithmetic(
        relation=max(relations) if relations else None,
        expected=expected,
        observed=observed,
        ok=expected == observed,
        dropped=tuple(axis.dropped for axis, _ in axes),
        formulas=tuple(axis.formula for axis, _ in axes),
        flags=tuple(flag for flag in FLAGS if flag in flags),
        warnings=tuple(sentence for sentence, is_warning in remarks if is_warning),
        remarks=tuple(sentence for sentence, _ in remarks),
    )


@dataclass(frozen=True)
class _Window:
    """One axis's numbers, kept to word the warnings."""

    i: int
    k: int = 1
    s: int = 1
    p: int = 0
    p_end: int = 0
    d: int = 1


def _axis(geometry: Geometry, axis: int, size: int) -> tuple[AxisArithmetic, _Window]:
    kind = geometry.kind
    if kind is OpKind.ADAPTIVE_POOL:
        target = (geometry.output_size or (None, None))[axis]
        return adaptive_pool_output(size, target), _Window(size)
    k, s, d = geometry.kernel[axis], geometry.stride[axis], geometry.dilation[axis]
    p, p_end = geometry.padding[axis], geometry.padding_end[axis]
    if geometry.padding_mode == "same":
        # As PyTorch does: d(k - 1) in all, the odd one on the right.
        p = d * (k - 1) // 2
        p_end = d * (k - 1) - p
    elif geometry.padding_mode == "valid":
        p = p_end = 0
    window = _Window(size, k, s, p, p_end, d)
    if kind is OpKind.CONV:
        return conv_output(size, k, s, p, d, p_end), window
    if kind is OpKind.CONV_TRANSPOSE:
        return conv_transpose_output(size, k, s, p, d, geometry.output_padding[axis]), window
    return pool_output(size, k, s, p, d, geometry.ceil_mode, p_end), window


# (singular, plural, dimension) per axis, by the number of spatial axes; and for all axes at once.
_NOUNS = {
    1: (("position", "positions", "length"),),
    2: (("row", "rows", "height"), ("column", "columns", "width")),
    3: (("slice", "slices", "depth"), ("row", "rows", "height"), ("column", "columns", "width")),
}
_ALL = {
    1: ("position", "positions", "length"),
    2: ("row and column", "rows and columns", "height and width"),
    3: ("slice, row and column", "slices, rows and columns", "depth, height and width"),
}


def _remarks(kind: OpKind, axes: tuple[tuple[AxisArithmetic, _Window], ...]) -> tuple[tuple[str, bool], ...]:
    """One (sentence, is_warning) per flag; a layer equal on every axis gets one sentence for all of them.

    Keeping the size and a floor that drops only padding are remarks, not warnings: every ResNet does both.
    """
    rank = len(axes)
    same = all(axis == axes[0] for axis in axes)
    nouns = _NOUNS.get(rank) or tuple((f"axis-{a} unit", f"axis-{a} units", f"axis {a}") for a in range(rank))
    named = [(axes[0], _ALL.get(rank, nouns[0]))] if same else list(zip(axes, nouns, strict=True))
    return tuple(
        (_sentence(flag, kind, arithmetic, window, nouns), _is_warning(flag, arithmetic, window))
        for flag in FLAGS
        for (arithmetic, window), nouns in named
        if flag in arithmetic.flags
    )


def _is_warning(flag: str, arithmetic: AxisArithmetic, window: _Window) -> bool:
    if flag == SIZE_PRESERVING:
        return False
    return not (flag == DROPPED and arithmetic.dropped <= window.p_end)


def _sentence(flag: str, kind: OpKind, arithmetic: AxisArithmetic, window: _Window, nouns: tuple[str, ...]) -> str:
    singular, plural, dimension = nouns
    i, k, s, p, p_end, d = window.i, window.k, window.s, window.p, window.p_end, window.d

    def count(n: int) -> str:
        return f"{n} {singular if n == 1 else plural}"

    if flag == DROPPED:
        n = arithmetic.dropped
        lost = n - p_end
        where = "padding only" if lost <= 0 else f"{count(lost)} of real input"
        return (
            f"dropped {count(n)} by the floor: ({i}{_padding_terms(p, p_end)}{_minus_kernel(k, d)}) mod {s} = {n}, "
            f"{where}"
        )
    if flag == SIZE_PRESERVING:
        return f"keeps the {dimension}: o = i = {i}"
    if flag == EVEN_KERNEL_AUTO_PADDING:
        return (
            f"even kernel {k} with p = k // 2 = {p} (Conv2dAuto-style) is not 'same' padding: at stride 1 the "
            f"{dimension} grows by one (relation 3 needs an odd kernel)"
        )
    if flag == ZERO_ONLY_WINDOWS:
        if kind is OpKind.CONV_TRANSPOSE:
            n = _outputs_without_input(i, k, s, p, d, arithmetic.output)
            return f"{count(n)} of the output receive no input, only the bias (stride {s}, k' = {d * (k - 1) + 1})"
        n = _windows_without_input(i, k, s, p, d, arithmetic.output)
        return f"{count(n)} of the output see only padding: their windows (k' = {d * (k - 1) + 1}) miss the input"
    last_start = arithmetic.output * s
    return (
        f"ceil_mode dropped the last window along the {dimension}, which would start in the right padding: "
        f"{last_start} >= {i} + {p}"
    )


def _conv_relation(k: int, s: int, p: int, p_end: int, d: int) -> int:
    # Dilation first: relations 1-6 count k, which is wrong once the taps spread out.
    if d > 1:
        return 15
    if s == 1:
        if p == p_end == 0:
            return 1
        if p == p_end == k // 2 and k % 2 == 1:
            return 3
        if p == p_end == k - 1:
            return 4
        return 2
    return 5 if p == p_end == 0 else 6


def _transposed_relation(effective: int, s: int, p: int, output_padding: int) -> int:
    # k' stands for k so that the unit-stride cases keep their meaning when dilated.
    if s == 1 and output_padding == 0:
        if p == 0:
            return 8
        if effective % 2 == 1 and p == effective // 2:
            return 10
        if p == effective - 1:
            return 11
        return 9
    if output_padding:
        return 14  # D&V's a = (i + 2p - k) mod s extra rows: PyTorch's output_padding
    return 12 if p == 0 else 13


def _windows_without_input(i: int, k: int, s: int, p: int, d: int, output: int) -> int:
    """How many of the first ``output`` windows have every tap in the padding.

    A window whose first tap lies inside the input sees it; one starting after the input's end is blind; only
    the windows starting in the left padding (at most ceil(p / s) of them) need their taps looked at.
    """
    starts_inside_or_left = min(output, (i - 1 + p) // s + 1)  # first tap j*s - p <= i - 1
    blind = output - starts_inside_or_left
    for j in range(min(output, -(-p // s))):  # first tap j*s - p < 0
        first_tap = j * s - p
        first_inside = -(first_tap // d)  # the first tap at or after the input's start
        if first_inside > k - 1 or first_tap + first_inside * d > i - 1:
            blind += 1
    return blind


def _outputs_without_input(i: int, k: int, s: int, p: int, d: int, output: int) -> int:
    """How many outputs of a transposed convolution no input reaches (gaps, or output_padding past the kernel).

    Input m reaches output x = m*s + t*d - p through tap t. For each residue x mod s the taps give intervals of
    m; merged, they count the reached outputs in O(k log k) instead of O(output * k).
    """
    intervals: dict[int, list[tuple[int, int]]] = {}
    for t in range(k):
        offset = t * d - p  # x = m*s + offset, m in [0, i)
        residue, base = offset % s, offset // s  # x = (m + base)*s + residue
        intervals.setdefault(residue, []).append((base, base + i - 1))
    reached = 0
    for residue, spans in intervals.items():
        # x = q*s + residue in [0, output)  <=>  q in [ceil(-residue / s), floor((output - 1 - residue) / s)]
        low, high = -(residue // s), (output - 1 - residue) // s
        end = low - 1
        for start, stop in sorted(spans):
            start, stop = max(start, end + 1, low), min(stop, high)
            if start <= stop:
                reached += stop - start + 1
                end = stop
    return output - reached


def _effective_kernel(k: int, d: int) -> int:
    return d * (k - 1) + 1


def _padding_terms(p: int, p_end: int) -> str:
    """' + 2*1' for symmetric padding, ' + 1 + 2' for asymmetric, nothing without padding."""
    if p == p_end:
        return f" + 2*{p}" if p else ""
    return f" + {p} + {p_end}"


def _minus_kernel(k: int, d: int) -> str:
    """' - k', or relation 15's ' - k - (k - 1)(d - 1)' when dilated."""
    return f" - {k}" if d == 1 else f" - {k} - ({k} - 1)*({d} - 1)"


def _transposed_kernel(k: int, d: int) -> str:
    """k, or k' = d(k - 1) + 1 when dilated."""
    return f"{k}" if d == 1 else f"{d}*({k} - 1) + 1"


def _ordered(flags: list[str]) -> tuple[str, ...]:
    return tuple(flag for flag in FLAGS if flag in flags)


def _validate(**values: int) -> None:
    minimum = {"p": 0, "p_end": 0, "output_padding": 0}
    for name, value in values.items():
        if value < minimum.get(name, 1):
            raise ValueError(f"{name} must be at least {minimum.get(name, 1)}, got {value}")
