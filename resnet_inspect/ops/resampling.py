"""Which input units an interpolated output unit reads: the source-coordinate arithmetic of torch's upsampling
kernels (nearest, nearest-exact, linear, cubic, antialiased), exact in fractions. Pure arithmetic, no torch."""

from __future__ import annotations

from fractions import Fraction


def _source_step(before: int, after: int, align: bool) -> Fraction:
    """How far the source coordinate moves per output unit, in input units."""
    if align:
        return Fraction(before - 1, after - 1) if after > 1 else Fraction(0)
    return Fraction(before, after)


def _source_span(before: int, after: int, mode: str, reach: int, align: bool,
                 antialias: bool = False) -> tuple[Fraction, Fraction]:
    """(low, high): for output unit u, the input units read lie in [u step + low, u step + high].

    The source coordinate x = u step + offset is a multiple of 1 / grain, so floor(x) >= x - (grain - 1) / grain.
    With ``antialias`` (linear and cubic modes) torch's kernel reads the units j with |j - x| below its support,
    x = (u + 1/2) step - 1/2 whatever ``align_corners``; the support is (reach + 1) / 2 units, widened by the step
    when downsampling (step > 1): the field given is that closed interval.
    """
    step = _source_step(before, after, align and reach > 0)
    if reach == 0:
        return _nearest_span(before, after, step, mode)
    if antialias:
        support = Fraction(reach + 1, 2) * max(step, Fraction(1))
        centre = step / 2 - Fraction(1, 2)
        return centre - support, centre + support
    offset = Fraction(0) if align else Fraction(1, 2) * step - Fraction(1, 2)
    grain = step.denominator if align else 2 * step.denominator
    extra = reach // 2  # bicubic reads one more unit on each side
    return offset - Fraction(grain - 1, grain) - extra, offset + 1 + extra


# torch computes the nearest modes' source coordinate in single precision: scale = i / o rounded, then one
# product rounded. Each rounding is relative and below 2^-24, so the coordinate computed for x <= i is off by
# less than i * 2^-22 (a generous bound).
_FLOAT_SLACK = Fraction(1, 2**22)


def _nearest_span(before: int, after: int, step: Fraction, mode: str) -> tuple[Fraction, Fraction]:
    """(low, high) for the nearest modes: unit u reads floor(x) with x = u step (+ step / 2 for nearest-exact),
    as torch computes x in floating point.

    x is a multiple of 1 / grain, so floor(x) >= x - (grain - 1) / grain exactly. A rounding error smaller than
    1 / grain moves floor(x) only where x is a whole number, one unit down; so the low end drops to x - 1 when some
    output unit lands on a whole source coordinate through an inexact scale. Larger errors (huge maps) widen both
    ends by the error bound.
    """
    offset = step / 2 if mode == "nearest-exact" else Fraction(0)
    grain = 2 * step.denominator if mode == "nearest-exact" else step.denominator
    slack = before * _FLOAT_SLACK
    if slack >= Fraction(1, grain):
        return offset - 1 - slack, offset + slack
    if step.denominator & (step.denominator - 1) == 0:  # a dyadic scale (1/2, 3/4) is exact, so are its products
        return offset - Fraction(grain - 1, grain), offset
    lands_whole = any((unit * step + offset).denominator == 1 for unit in range(1, min(after, grain + 1)))
    low = offset - 1 if lands_whole else offset - Fraction(grain - 1, grain)
    return low, offset
