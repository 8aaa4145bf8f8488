"""The fit search over a peak-memory function (no model needed), and memory sizes as the user writes them."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resnet_inspect.analysis.fit import (
    DoesNotFitError,
    SearchMethod,
    largest_batch,
    largest_batch_through,
    parse_bytes,
)
from resnet_inspect.errors import BadInputError

GIB = 1 << 30


def brute_force(peak, budget: int, limit: int = 4096) -> int:
    """The largest batch within the budget, by trying every batch (the peaks grow with the batch)."""
    return max(batch for batch in range(1, limit + 1) if peak(batch) <= budget)


class Counted:
    """A peak function that counts its calls (each would be one meta pass)."""

    def __init__(self, peak) -> None:
        self.peak, self.calls = peak, []

    def __call__(self, batch: int) -> int:
        self.calls.append(batch)
        return self.peak(batch)


def test_an_affine_peak_takes_three_passes_and_the_next_batch_is_over():
    peak = Counted(lambda batch: 500_000_000 + 40_000_000 * batch)
    found = largest_batch(peak, 2 * GIB)
    assert found.batch_size == brute_force(peak.peak, 2 * GIB) == 41
    assert peak.calls == [1, 2, 41] and found.passes == 3
    assert found.method is SearchMethod.line and found.affine is True
    assert found.peak_bytes == peak.peak(41) <= 2 * GIB < found.next_peak_bytes == peak.peak(42)
    assert (found.fixed_bytes, found.bytes_per_sample) == (500_000_000, 40_000_000)


@given(fixed=st.integers(0, 10 * GIB), per_sample=st.integers(1, GIB), budget=st.integers(1, 40 * GIB))
def test_on_any_line_the_answer_is_the_largest_batch_that_fits_in_at_most_three_passes(fixed, per_sample, budget):
    peak = Counted(lambda batch: fixed + per_sample * batch)
    if peak.peak(1) > budget:
        with pytest.raises(DoesNotFitError):
            largest_batch(peak, budget)
        return
    found = largest_batch(peak, budget)
    expected = min((budget - fixed) // per_sample, 1 << 20)
    assert found.batch_size == expected and found.passes <= 3
    assert peak.peak(found.batch_size) <= budget
    assert found.limited or peak.peak(found.batch_size + 1) > budget


@given(fixed=st.integers(0, 10 * GIB), per_sample=st.integers(1, GIB), budget=st.integers(1, 40 * GIB),
       second=st.integers(3, 500))
def test_through_two_known_batches_on_a_line_one_more_pass_gives_the_answer(fixed, per_sample, budget, second):
    """A caller holding batches 2 and ``second`` (the checkpoint planner's) spends one pass, at the answer."""
    peak = Counted(lambda batch: (fixed + per_sample * batch, fixed // 2))  # two moments: the peak and a lower one
    if peak.peak(1)[0] > budget:
        with pytest.raises(DoesNotFitError):
            largest_batch_through(peak, budget, 2, second)
        return
    found = largest_batch_through(peak, budget, 2, second)
    assert found.batch_size == min((budget - fixed) // per_sample, 1 << 20)
    assert peak.calls[2:] == [found.batch_size] and found.method is SearchMethod.line


def test_through_two_batches_off_one_line_the_search_starts_again_from_batch_1():
    """Above batch 8 another path keeps twice the activations: the line through batches 2 and 12 (120 and 340
    bytes) puts batch 14 at 384 bytes, which measures 380, and the answer is the one the full search finds."""
    branch = lambda batch: 100 + 10 * batch + (10 * batch if batch > 8 else 0)  # noqa: E731
    peak = Counted(branch)
    found = largest_batch_through(peak, 400, 2, 12)
    assert found.batch_size == brute_force(branch, 400) == largest_batch(branch, 400).batch_size
    assert peak.calls[:4] == [2, 12, 14, 1]


def test_a_batch_dependent_branch_is_found_off_the_line_and_bisected():
    """Above batch 8 the model takes another path that keeps twice the activations: not one line."""
    peak = Counted(lambda batch: 100 + 10 * batch + (10 * batch if batch > 8 else 0))
    found = largest_batch(peak, 1000)
    assert found.affine is False and found.method is SearchMethod.bisection
    assert found.batch_size == brute_force(peak.peak, 1000) == 45
    assert found.passes == len(set(peak.calls)) == len(peak.calls)  # no batch estimated twice
    assert found.next_estimated and found.next_peak_bytes == peak.peak(46) > 1000


def test_a_line_that_overshoots_is_bisected_back():
    """Cheaper per sample at small batches (a workspace that only large batches need): the line overshoots."""
    peak = lambda batch: 100 + 10 * batch + (500 if batch > 20 else 0)  # noqa: E731
    found = largest_batch(peak, 1000)
    assert found.batch_size == brute_force(peak, 1000) == 40 and found.affine is False


def test_a_peak_that_moves_from_the_optimizer_step_to_backward_is_found_in_three_passes():
    """Bytes live at two moments: the optimizer step (fixed, larger at batch 1) and the start of backward (grows
    with the batch). The peak is their upper envelope, not one line; per-moment lines still give it exactly."""
    def moments(batch: int) -> tuple[int, int]:
        return (300, 100 + 20 * batch)  # optimizer step, backward

    peak = Counted(moments)
    found = largest_batch(peak, 1000)
    assert found.batch_size == brute_force(lambda batch: max(moments(batch)), 1000) == 45
    assert peak.calls == [1, 2, 45] and found.affine is True and found.method is SearchMethod.line
    assert (found.fixed_bytes, found.bytes_per_sample) == (100, 20)  # the backward moment holds the peak at 45
    assert found.next_peak_bytes == max(moments(46)) > 1000


def test_estimates_off_the_line_by_a_few_bytes_are_searched_to_the_exact_answer():
    """Each of 50 tensors rounded up to 512 bytes (an allocator's granularity): not exactly affine."""
    def rounded(batch: int) -> int:
        return 4096 + sum(512 * math.ceil(1000 * batch * (index + 1) / 512) for index in range(50))

    for budget in (10**7, 3 * 10**7, 10**8 + 12345):
        found = largest_batch(rounded, budget)
        assert found.batch_size == brute_force(rounded, budget)
        assert rounded(found.batch_size + 1) > budget


def test_when_the_line_ends_at_batch_two_the_third_pass_checks_batch_three():
    peak = Counted(lambda batch: 400 * batch)
    found = largest_batch(peak, 1000)
    assert (found.batch_size, peak.calls, found.next_peak_bytes) == (2, [1, 2, 3], 1200)


def test_batch_one_over_the_budget_is_refused():
    with pytest.raises(DoesNotFitError, match="batch size 1 needs 1500 bytes, more than the budget of 1000"):
        largest_batch(lambda batch: 1000 + 500 * batch, 1000)


def test_when_batch_two_is_over_the_answer_is_one_in_two_passes():
    found = largest_batch(lambda batch: 600 * batch, 1000)
    assert (found.batch_size, found.passes, found.next_peak_bytes) == (1, 2, 1200)


def test_a_peak_that_does_not_grow_stops_at_the_limit():
    found = largest_batch(lambda batch: 1000, 5000, limit=64)
    assert found.batch_size == 64 and found.limited and found.next_peak_bytes is None


@pytest.mark.parametrize(("text", "size"), [
    ("24GiB", 24 * GIB), ("24GB", 24 * 10**9), ("1.5GiB", 3 * GIB // 2), ("512MiB", 512 << 20),
    ("512 mib", 512 << 20), ("24g", 24 * GIB), ("1000", 1000), ("1000B", 1000), ("2TB", 2 * 10**12),
    ("0.5KiB", 512),
])
def test_memory_sizes_are_read_as_users_write_them(text: str, size: int):
    assert parse_bytes(text) == size


@pytest.mark.parametrize(("text", "message"), [
    ("abc", "--memory must look like 24GiB"), ("-1", "--memory must look like"), ("24 GiBs", "must look like"),
    ("0", "must be more than 0 bytes"), ("1.5", "whole number"), ("", "must look like"),
])
def test_malformed_memory_sizes_are_refused(text: str, message: str):
    with pytest.raises(BadInputError, match=message):
        parse_bytes(text)


def test_zero_is_a_size_where_it_is_allowed():
    assert parse_bytes("0", "--reserve", allow_zero=True) == 0


def test_a_batch_of_one_off_the_line_is_followed_by_the_lines_through_batches_2_and_3():
    """A size-1 batch axis lays tensors out as no other batch does (torch's attention transposes a batch-first
    input: at batch 1 no copy is needed): the lines through 1 and 2 miss, the lines through 2 and 3 hold."""
    peak = Counted(lambda batch: 500_000_000 + 40_000_000 * batch - (30_000_000 if batch == 1 else 0))
    found = largest_batch(peak, 2 * GIB)
    assert found.batch_size == brute_force(peak.peak, 2 * GIB)
    assert found.method is SearchMethod.line and found.affine is True and found.passes <= 5


def test_a_vision_transformer_with_torchs_attention_is_fitted_along_its_lines() -> None:
    import resnet_inspect

    spec = "tests/fixtures/real_models.py:vit"
    found = resnet_inspect.fit(spec, "64MiB", 64, train=True, reserve=0)
    batch = found.to_dict()["batch_size"]
    assert found.search.method is SearchMethod.line and found.search.passes <= 5
    assert resnet_inspect.training_memory(spec, 64, batch_size=batch).peak_bytes <= 64 << 20
    assert resnet_inspect.training_memory(spec, 64, batch_size=batch + 1).peak_bytes > 64 << 20
