"""Receptive fields unit by unit: the first and last input position of every unit, per axis. Pure Python.

Distill's triple (size, stride, padding) says that unit ``u`` sees ``[-P + uS, -P + uS + r - 1]``: the field steps
by one stride from unit to unit. Windowed attention breaks that: every unit of a window sees the union of the
window's fields, so the field is constant over the window and jumps at its edge, and a roll moves units around the
map. Spans hold each unit's interval instead, one list per axis (the axes stay separable: a window of a 2-D map is
the product of one window per axis). A union of intervals is given as their hull, as for every other merge.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from fractions import Fraction

Span = tuple[int, int]  # first and last input position
Spans = tuple[tuple[Span, ...], ...]  # per axis, per unit
EMPTY: Span = (0, -1)  # a unit that reads no input position (explicit padding added to a map)


def is_empty(span: Span) -> bool:
    return span[1] < span[0]


def _integer(value: int | Fraction) -> int:
    if isinstance(value, Fraction):
        if value.denominator != 1:
            raise ValueError(f"not a whole number of input positions: {value}")
        return int(value)
    return int(value)


def affine(size: Sequence[int | Fraction], stride: Sequence[int | Fraction], padding: Sequence[int | Fraction],
           grid: Sequence[int]) -> Spans:
    """Every unit's span of an ordinary field: ``[-P + uS, -P + uS + r - 1]``."""
    result = []
    for r, s, p, n in zip(size, stride, padding, grid, strict=True):
        r, s, p = _integer(r), _integer(s), _integer(p)
        result.append(tuple((-p + u * s, -p + u * s + r - 1) for u in range(n)))
    return tuple(result)


def hull(spans: Iterable[Span]) -> Span:
    """The smallest interval that holds every span (empty spans hold nothing; all empty gives an empty one)."""
    spans = [span for span in spans if not is_empty(span)]
    if not spans:
        return EMPTY
    return min(first for first, _ in spans), max(last for _, last in spans)


def summary(spans: Spans, stride: Sequence[int | Fraction]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(size, padding) of the centre unit, so that ``[-P + uS, -P + uS + r - 1]`` is its span."""
    size, padding = [], []
    for axis_spans, s in zip(spans, stride, strict=True):
        centre = (len(axis_spans) - 1) // 2
        first, last = axis_spans[centre]
        size.append(last - first + 1)
        padding.append(_integer(centre * s) - first)
    return tuple(size), tuple(padding)


def window(spans: Spans, kernel: Sequence[int | Fraction], stride: Sequence[int | Fraction],
           padding: Sequence[int | Fraction]) -> Spans:
    """A window (effective kernel ``k``, stride ``s``, padding ``p``): output unit ``v`` reads units
    ``vs - p .. vs - p + k - 1``; its span is the hull of theirs (padding positions read nothing)."""
    result = []
    for axis_spans, k, s, p in zip(spans, kernel, stride, padding, strict=True):
        k, s, p = _integer(k), _integer(s), _integer(p)
        n = len(axis_spans)
        count = max((n + 2 * p - k) // s + 1, 0)
        axis_result = []
        for v in range(count):
            read = [axis_spans[u] for u in range(v * s - p, v * s - p + k) if 0 <= u < n]
            axis_result.append(hull(read) if read else _nothing(axis_spans, v * s - p))
        result.append(tuple(axis_result))
    return tuple(result)


def _nothing(axis_spans: Sequence[Span], unit: int) -> Span:
    """A unit made only of padding: the span its position would have (an empty read stays in place)."""
    nearest = axis_spans[min(max(unit, 0), len(axis_spans) - 1)]
    return nearest


def merge(fields: Sequence[Spans]) -> Spans:
    """Paths joined position by position: per unit, the hull of the paths' spans."""
    rank = len(fields[0])
    result = []
    for axis in range(rank):
        count = min(len(spans[axis]) for spans in fields)
        result.append(tuple(hull(spans[axis][u] for spans in fields) for u in range(count)))
    return tuple(result)


def fit(spans: Spans, grid: Sequence[int]) -> Spans:
    """Spans for a map of ``grid`` units: cut, or continued with the last unit's stride (ceil_mode, asymmetric
    padding add a window at the end)."""
    result = []
    for axis_spans, n in zip(spans, grid, strict=True):
        units = list(axis_spans[:n])
        while len(units) < n:
            if is_empty(units[-1]) or (len(units) > 1 and is_empty(units[-2])):
                units.append(EMPTY)
                continue
            step = units[-1][0] - units[-2][0] if len(units) > 1 else 0
            units.append((units[-1][0] + step, units[-1][1] + step))
        result.append(tuple(units))
    return tuple(result)


__all__ = ["EMPTY", "Span", "Spans", "affine", "fit", "hull", "is_empty", "merge", "summary", "window"]
