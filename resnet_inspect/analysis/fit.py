"""The largest batch size whose estimated peak memory fits a budget, from as few estimates as possible.

Pure: the search sees only an ``estimate(batch_size)`` function (one meta pass per call in practice), so it is
tested without building a model. An estimate is the peak in bytes, or better the bytes live at each moment of
the step (the peak is the largest). For most networks each moment's bytes are affine in the batch size:
weights, gradients and optimizer state are fixed, activations grow with the batch. The peak is then the upper
envelope of those lines (at batch 1 it may sit in the optimizer step, at batch 40 in the backward pass), which
two estimates (batch 1 and 2) give exactly. A third, at the largest batch the lines allow, confirms them, and the
lines put the next batch over the budget. When the third estimate is off the lines (a batch-dependent branch in
the model) the search says so and bisects instead.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum

from resnet_inspect.errors import BadInputError, InspectError

MAX_BATCH = 1 << 20  # the largest batch size considered (as for --batch-size)
EXIT_DOES_NOT_FIT = 3

# Units of a memory size: SI (GB = 10**9 bytes), IEC (GiB = 2**30), and docker's one-letter binary ones (24g).
_UNITS = {"": 1, "b": 1}
for _power, _letter in enumerate("kmgt", start=1):
    _UNITS[f"{_letter}b"] = 1000**_power
    _UNITS[f"{_letter}ib"] = _UNITS[_letter] = 1024**_power
_SIZE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*", re.IGNORECASE)
SIZE_EXAMPLES = "24GiB, 24GB, 1.5GiB, 512MiB or a number of bytes"


class DoesNotFitError(InspectError):
    """Not even batch size 1 fits the memory budget (exit code 3, so scripts can tell it from bad input)."""

    exit_code = EXIT_DOES_NOT_FIT

    def __init__(self, message: str, peak_bytes: int) -> None:
        super().__init__(message)
        self.peak_bytes = peak_bytes  # the estimated peak at batch size 1


def parse_bytes(text: str, what: str = "--memory", allow_zero: bool = False) -> int:
    """'24GiB' -> 25769803776; '24GB' -> 24 * 10**9; '1.5GiB', '512MiB', '24g' (GiB) or a plain number of bytes.

    Anything else, a negative size, or zero (unless ``allow_zero``) raises BadInputError naming ``what``.
    """
    match = _SIZE.fullmatch(str(text))
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
        raise BadInputError(f"{what} must look like {SIZE_EXAMPLES}, got '{text}'")
    number = match.group(1)
    if unit in ("", "b") and not number.isdigit():
        raise BadInputError(f"{what} in bytes must be a whole number, got '{text}'")
    size = int(float(number) * _UNITS[unit]) if "." in number else int(number) * _UNITS[unit]
    if size == 0 and not allow_zero:
        raise BadInputError(f"{what} must be more than 0 bytes, got '{text}'")
    return size


class SearchMethod(StrEnum):
    line = "line"  # two estimates gave the line, a third confirmed it
    bisection = "bisection"  # the estimates were not on one line: bracketed, then bisected


Estimate = Callable[[int], "int | Sequence[int]"]  # batch size -> the peak, or the bytes live at each moment


@dataclass(frozen=True)
class FitSearch:
    """What the search found: the batch, its peak and the next batch's, and how it got there."""

    batch_size: int  # the largest batch size whose peak fits (at least 1)
    peak_bytes: int  # the estimated peak at ``batch_size``
    next_peak_bytes: int | None  # at ``batch_size + 1`` (None when ``batch_size`` is the limit)
    next_estimated: bool  # ``next_peak_bytes`` comes from an estimate of its own, not from the confirmed lines
    passes: int  # calls of the estimate: meta passes
    method: SearchMethod
    affine: bool | None  # the third estimate lay on the lines of the first two (None: not needed, batch 1 or 2)
    fixed_bytes: int  # the line of the moment that holds the peak near the answer, from batches 1 and 2:
    bytes_per_sample: int  # peak = fixed_bytes + bytes_per_sample * batch
    limited: bool = False  # every batch up to the limit fits
    first_batch: int = 1  # the smallest batch size tried (2 where a step cannot run at batch 1)


@dataclass(frozen=True)
class _Lines:
    """Each moment's bytes as a line in the batch size, through its bytes at two consecutive batches."""

    fixed: tuple[int, ...]
    per_sample: tuple[int, ...]

    @classmethod
    def through(cls, first: tuple[int, ...], second: tuple[int, ...], at: int = 1) -> _Lines:
        """The lines through ``first`` (the bytes at batch ``at``) and ``second`` (at batch ``at + 1``)."""
        lines = cls.spanning(first, second, at, 1)
        assert lines is not None  # any change is a whole number of bytes per sample over one sample
        return lines

    @classmethod
    def spanning(cls, first: tuple[int, ...], second: tuple[int, ...], at: int, span: int) -> _Lines | None:
        """The lines through ``first`` (the bytes at batch ``at``) and ``second`` (at batch ``at + span``); None
        unless every moment's bytes change by a whole number per sample."""
        changes = [b - a for a, b in zip(first, second, strict=True)]
        if any(change % span for change in changes):
            return None
        per_sample = tuple(change // span for change in changes)
        return cls(tuple(a - slope * at for a, slope in zip(first, per_sample, strict=True)), per_sample)

    def at(self, batch: int) -> tuple[int, ...]:
        return tuple(fixed + slope * batch for fixed, slope in zip(self.fixed, self.per_sample, strict=True))

    def largest_within(self, budget_bytes: int, limit: int) -> int:
        """The largest batch (up to ``limit``) at which every moment is within the budget."""
        bounds = [(budget_bytes - fixed) // slope for fixed, slope in zip(self.fixed, self.per_sample, strict=True)
                  if slope > 0]
        return min([limit, *bounds])

    def binding(self, batch: int) -> tuple[int, int]:
        """(fixed, per sample) of the moment that holds the peak at ``batch``."""
        values = self.at(batch)
        moment = max(range(len(values)), key=values.__getitem__)
        return self.fixed[moment], self.per_sample[moment]


def _profile(value: int | Sequence[int]) -> tuple[int, ...]:
    return (int(value),) if isinstance(value, int) else tuple(int(item) for item in value)


def largest_batch(estimate: Estimate, budget_bytes: int, limit: int = MAX_BATCH, first_batch: int = 1
                  ) -> FitSearch:
    """The largest batch size ``first_batch <= b <= limit`` whose estimated peak is within ``budget_bytes`` (peaks
    grow with ``b``); the lines go through ``first_batch`` and the next (2 where a step cannot run at batch 1).

    ``estimate(b)`` gives the peak at batch ``b``, or the bytes live at each moment of the step. Raises
    DoesNotFitError when ``first_batch`` is over the budget. No batch is estimated twice.
    """
    search = _line_search(estimate, budget_bytes, limit, first_batch)
    return replace(search, first_batch=first_batch)


def largest_batch_through(estimate: Estimate, budget_bytes: int, first: int, second: int, limit: int = MAX_BATCH
                          ) -> FitSearch:
    """``largest_batch``, from the lines through two batches already estimated (``first < second``, any two, so a
    caller that holds them spends one estimate, at the guess, instead of three): each moment's bytes must change by
    a whole number per sample between them, and the guess must lie on the lines and fit. Otherwise the search of
    ``largest_batch`` from batch 1."""
    low, high = _profile(estimate(first)), _profile(estimate(second))
    lines = _Lines.spanning(low, high, first, second - first) if len(low) == len(high) and second > first else None
    if lines is not None:
        guess = lines.largest_within(budget_bytes, limit)
        if guess >= 1:
            at_guess = _profile(estimate(guess))
            fixed, per_sample = lines.binding(guess)
            if at_guess == lines.at(guess) and max(at_guess) <= budget_bytes:
                return FitSearch(guess, max(at_guess), None if guess == limit else max(lines.at(guess + 1)), False,
                                 3, SearchMethod.line, True, fixed, per_sample, limited=guess == limit)
    return largest_batch(estimate, budget_bytes, limit)


def _line_search(estimate: Estimate, budget_bytes: int, limit: int, start: int) -> FitSearch:
    profiles: dict[int, tuple[int, ...]] = {}
    known: dict[int, int] = {}  # batch -> peak

    def peak(batch: int) -> int:
        if batch not in known:
            profiles[batch] = _profile(estimate(batch))
            known[batch] = max(profiles[batch])
        return known[batch]

    first = peak(start)
    if first > budget_bytes:
        raise DoesNotFitError(f"batch size {start} needs {first} bytes, more than the budget of {budget_bytes}",
                              first)
    if limit == start:
        return FitSearch(start, first, None, False, len(known), SearchMethod.line, None, first, 0, limited=True)
    found = _along_lines(peak, profiles, known, budget_bytes, limit, start)
    if isinstance(found, _OffTheLine) and start == 1 and limit > 2 and peak(2) <= budget_bytes:
        # a batch of one lays tensors out as no other batch does (a size-1 axis makes a transpose contiguous, so
        # a copy is skipped): the lines through batches 2 and 3 are the next guess
        found = _along_lines(peak, profiles, known, budget_bytes, limit, 2)
    if isinstance(found, FitSearch):
        return found
    return _bisect(peak, known, budget_bytes, limit, found.affine, found.fixed, found.per_sample)


@dataclass(frozen=True)
class _OffTheLine:
    """The lines did not hold (or ended too soon): bisect, with what they said."""

    affine: bool | None
    fixed: int
    per_sample: int


def _along_lines(peak: Callable[[int], int], profiles: dict[int, tuple[int, ...]], known: dict[int, int],
                 budget_bytes: int, limit: int, start: int) -> FitSearch | _OffTheLine:
    """The answer from the lines through batches ``start`` and ``start + 1``, confirmed at the guess; or why
    not."""
    first, second = peak(start), peak(start + 1)
    whole = len(profiles[start]) == len(profiles[start + 1])  # else the step changes with the batch: its peaks
    lines = _Lines.through(profiles[start] if whole else (first,), profiles[start + 1] if whole else (second,), start)
    fixed, per_sample = lines.binding(start + 1)
    if second > budget_bytes:
        return FitSearch(start, first, second, True, len(known), SearchMethod.line, None, fixed, per_sample)
    guess = max(lines.largest_within(budget_bytes, limit), start + 1)
    fixed, per_sample = lines.binding(guess)
    if guess == start + 1 and limit > guess:  # the lines end at the second batch: the third checks the next
        if peak(guess + 1) > budget_bytes:
            return FitSearch(guess, second, known[guess + 1], True, len(known), SearchMethod.line, None, fixed,
                             per_sample)
        return _OffTheLine(False, fixed, per_sample)
    guessed = peak(guess)
    affine = None if guess <= start + 1 else (profiles[guess] if whole else (guessed,)) == lines.at(guess)
    if affine is not False and guessed <= budget_bytes:
        if guess == limit:
            return FitSearch(guess, guessed, None, False, len(known), SearchMethod.line, affine, fixed, per_sample,
                             limited=True)
        return FitSearch(guess, guessed, max(lines.at(guess + 1)), False, len(known), SearchMethod.line, affine,
                         fixed, per_sample)
    return _OffTheLine(affine, fixed, per_sample)


def _bisect(peak: Callable[[int], int], known: dict[int, int], budget_bytes: int, limit: int, affine: bool | None,
            fixed: int, per_sample: int) -> FitSearch:
    """Bracket the answer between the largest batch known to fit and the smallest known over (doubling until one
    is over), then bisect."""
    low = max(batch for batch, value in known.items() if value <= budget_bytes)
    over = [batch for batch, value in known.items() if value > budget_bytes and batch > low]
    high = min(over) if over else None
    while high is None:
        candidate = min(limit, 2 * low)
        if candidate == low:  # the limit fits
            return FitSearch(low, known[low], None, False, len(known), SearchMethod.bisection, affine, fixed,
                             per_sample, limited=True)
        if peak(candidate) > budget_bytes:
            high = candidate
        else:
            low = candidate
    while high - low > 1:
        middle = (low + high) // 2
        if peak(middle) > budget_bytes:
            high = middle
        else:
            low = middle
    return FitSearch(low, known[low], known[high], True, len(known), SearchMethod.bisection, affine, fixed,
                     per_sample)


__all__ = [
    "MAX_BATCH", "DoesNotFitError", "Estimate", "FitSearch", "SearchMethod", "largest_batch", "largest_batch_through",
    "parse_bytes",
]
