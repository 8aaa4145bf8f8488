"""Specifications for the convolution arithmetic.

The published relations of Dumoulin & Visin (2016, arXiv:1603.07285) on their own figures' numbers and on
ResNet's layers, then property tests against what PyTorch actually returns. torch is imported here only:
the module under test is pure Python.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from resnet_inspect.ops.arithmetic import (
    CEIL_MODE_DROPPED_WINDOW,
    DROPPED,
    EVEN_KERNEL_AUTO_PADDING,
    SIZE_PRESERVING,
    ZERO_ONLY_WINDOWS,
    adaptive_pool_output,
    check_layer,
    conv_output,
    conv_transpose_output,
    pool_output,
    solve_padding,
)
from resnet_inspect.records import Geometry, OpKind

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """The tensors here are tiny: starting a second thread costs more than the work, far more on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def examples(count: int) -> settings:
    """Hypothesis settings: ``count`` examples, no deadline (torch's first call is slow), nothing saved."""
    return settings(max_examples=count, deadline=None, database=None)


# --- The relations on the paper's figures (Dumoulin & Visin 2016) ---------------------------------------------


@pytest.mark.parametrize(
    ("arithmetic", "relation", "formula"),
    [
        (conv_output(4, 3), 1, "o = 4 - 3 + 1 = 2"),
        (conv_output(5, 4, p=2), 2, "o = (5 - 4) + 2*2 + 1 = 6"),
        (conv_output(5, 3, p=1), 3, "o = i = 5"),
        (conv_output(5, 3, p=2), 4, "o = 5 + (3 - 1) = 7"),
        (conv_output(5, 3, s=2), 5, "o = floor((5 - 3) / 2) + 1 = 2"),
        (conv_output(5, 3, s=2, p=1), 6, "o = floor((5 + 2*1 - 3) / 2) + 1 = 3"),
        (conv_output(6, 3, s=2, p=1), 6, "o = floor((6 + 2*1 - 3) / 2) + 1 = 3"),
        (conv_output(7, 3, d=2), 15, "o = floor((7 - 3 - (3 - 1)*(2 - 1)) / 1) + 1 = 3"),
        (conv_transpose_output(2, 3), 8, "o = 2 + (3 - 1) = 4"),
        (conv_transpose_output(6, 4, p=2), 9, "o = 6 + (4 - 1) - 2*2 = 5"),
        (conv_transpose_output(5, 3, p=1), 10, "o = i = 5"),
        (conv_transpose_output(7, 3, p=2), 11, "o = 7 - (3 - 1) = 5"),
        (conv_transpose_output(2, 3, s=2), 12, "o = 2*(2 - 1) + 3 = 5"),
        (conv_transpose_output(3, 3, s=2, p=1, output_padding=1), 14, "o = 2*(3 - 1) + 1 + 3 - 2*1 = 6"),
    ],
)
def test_each_relation_is_numbered_and_filled_in_as_in_the_paper(arithmetic, relation, formula):
    assert (arithmetic.relation, arithmetic.formula) == (relation, formula)


def test_relation_2_is_the_unit_stride_case_that_is_neither_half_nor_full_padding():
    arithmetic = conv_output(56, 5, p=1)
    assert (arithmetic.output, arithmetic.relation) == (54, 2)
    assert arithmetic.formula == "o = (56 - 5) + 2*1 + 1 = 54"


def test_the_general_strided_case_on_a_resnet_downsampling_conv():
    arithmetic = conv_output(56, 3, s=2, p=1)
    assert (arithmetic.output, arithmetic.relation) == (28, 6)
    assert arithmetic.formula == "o = floor((56 + 2*1 - 3) / 2) + 1 = 28"


def test_the_resnet_stem_halves_224_to_112():
    arithmetic = conv_output(224, 7, s=2, p=3)
    assert (arithmetic.output, arithmetic.relation) == (112, 6)
    assert arithmetic.formula == "o = floor((224 + 2*3 - 7) / 2) + 1 = 112"


def test_the_stem_max_pool_is_relation_7_and_halves_112_to_56():
    arithmetic = pool_output(112, 3, s=2, p=1)
    assert (arithmetic.output, arithmetic.relation) == (56, 7)
    assert arithmetic.formula == "o = floor((112 + 2*1 - 3) / 2) + 1 = 56"


def test_pooling_stride_defaults_to_the_kernel_as_in_pytorch():
    arithmetic = pool_output(56, 2)
    assert arithmetic.output == 28
    assert arithmetic.formula == "o = floor((56 - 2) / 2) + 1 = 28"


def test_dilated_pooling_counts_the_effective_kernel():
    arithmetic = pool_output(8, 3, s=2, p=1, d=2)
    assert arithmetic.output == 3
    assert arithmetic.formula == "o = floor((8 + 2*1 - 3 - (3 - 1)*(2 - 1)) / 2) + 1 = 3"


def test_dilated_transposed_convolution_keeps_its_relation_number_with_the_effective_kernel():
    assert conv_transpose_output(2, 3, d=2).formula == "o = 2 + 2*(3 - 1) = 6"
    # k' = 5, so p = 2 is half padding: relation 10 keeps the size.
    half = conv_transpose_output(5, 3, p=2, d=2)
    assert (half.relation, half.output) == (10, 5)
    assert conv_transpose_output(4, 3, s=2, d=2).formula == "o = 2*(4 - 1) + 2*(3 - 1) + 1 = 11"


def test_a_decoder_upsampling_layer_doubles_28_to_56_with_output_padding():
    arithmetic = conv_transpose_output(28, 3, s=2, p=1, output_padding=1)
    assert (arithmetic.output, arithmetic.relation) == (56, 14)
    assert arithmetic.formula == "o = 2*(28 - 1) + 1 + 3 - 2*1 = 56"


def test_adaptive_pooling_has_no_relation_and_returns_its_target():
    global_pool = adaptive_pool_output(7, 1)
    assert (global_pool.output, global_pool.relation, global_pool.formula) == (1, None, "o = 1 (adaptive target)")
    assert adaptive_pool_output(13, None).output == 13


def test_nonsensical_parameters_are_refused():
    with pytest.raises(ValueError, match="s must be at least 1"):
        conv_output(56, 3, s=0)
    with pytest.raises(ValueError, match="p must be at least 0"):
        conv_output(56, 3, p=-1)


# --- Flags --------------------------------------------------------------------------------------------------------


def test_half_padding_with_an_odd_kernel_preserves_the_size():
    assert conv_output(56, 3, p=1).flags == (SIZE_PRESERVING,)
    assert conv_output(56, 7, p=3).flags == (SIZE_PRESERVING,)


def test_conv2d_auto_padding_with_an_even_kernel_grows_the_output_by_one():
    arithmetic = conv_output(56, 4, p=4 // 2)
    assert (arithmetic.output, arithmetic.relation) == (57, 2)
    assert arithmetic.flags == (EVEN_KERNEL_AUTO_PADDING,)


def test_the_floor_drops_the_last_padded_row_of_a_stride_2_layer_on_an_even_input():
    # (224 + 2*1 - 3) mod 2 = 1: one row is never covered ...
    assert (conv_output(224, 3, s=2, p=1).dropped, conv_output(224, 3, s=2, p=1).flags) == (1, (DROPPED,))
    # ... while (225 + 2*1 - 3) mod 2 = 0 covers everything.
    assert (conv_output(225, 3, s=2, p=1).output, conv_output(225, 3, s=2, p=1).dropped) == (113, 0)
    assert conv_output(225, 3, s=2, p=1).flags == ()


def test_the_floor_can_drop_several_rows():
    assert conv_output(20, 3, s=4).dropped == (20 - 3) % 4 == 1
    assert conv_output(21, 2, s=4).dropped == (21 - 2) % 4 == 3


def test_ceil_mode_rounds_up():
    arithmetic = pool_output(112, 3, s=2, p=1, ceil_mode=True)
    assert arithmetic.output == 57
    assert arithmetic.formula == "o = ceil((112 + 2*1 - 3) / 2) + 1 = 57"
    assert (arithmetic.dropped, arithmetic.flags) == (0, ())


def test_ceil_mode_drops_a_last_window_that_would_start_in_the_right_padding():
    arithmetic = pool_output(5, 2, s=2, p=1, ceil_mode=True)
    assert arithmetic.output == 3
    assert arithmetic.formula == (
        "o = ceil((5 + 2*1 - 2) / 2) + 1 - 1 = 3, dropping the last window, which would start in the right "
        "padding: (4 - 1)*2 = 6 >= 5 + 1"
    )
    assert (arithmetic.dropped, arithmetic.flags) == (1, (CEIL_MODE_DROPPED_WINDOW,))


def test_padding_as_wide_as_the_kernel_makes_windows_of_zeros_only():
    assert ZERO_ONLY_WINDOWS in conv_output(56, 3, p=3).flags
    assert ZERO_ONLY_WINDOWS in conv_output(56, 1, p=1).flags
    assert ZERO_ONLY_WINDOWS not in conv_output(56, 3, p=2).flags


def test_a_dilated_window_can_step_over_a_small_input():
    # i = 1, k = 2, d = 3, p = 2: taps at -2, 1 and -1, 2 around the single input row 0.
    assert ZERO_ONLY_WINDOWS in conv_output(1, 2, p=2, d=3).flags


def test_a_transposed_convolution_with_stride_above_the_kernel_leaves_outputs_without_input():
    assert ZERO_ONLY_WINDOWS in conv_transpose_output(5, 2, s=3).flags
    assert ZERO_ONLY_WINDOWS not in conv_transpose_output(5, 3, s=3).flags


# --- solve_padding ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "dilation", "paddings"),
    [
        (56, 3, 1, 1, [1]),  # relation 3
        (56, 7, 1, 1, [3]),
        (56, 3, 1, 2, [2]),  # k' = 5
        (56, 4, 1, 1, []),  # an even kernel cannot keep the size with symmetric padding
        (224, 7, 2, 1, [3]),  # the ResNet stem
        (112, 3, 2, 1, [1]),  # the stem max pool's padding
        (56, 3, 2, 1, [1]),
        (56, 1, 2, 1, [0]),  # the 1x1 downsampling shortcut
        (56, 4, 4, 1, [0, 1]),  # several paddings give 14
    ],
)
def test_solve_padding_finds_the_published_paddings(size, kernel, stride, dilation, paddings):
    assert solve_padding(size, kernel, stride, dilation) == paddings


def test_solve_padding_leaves_out_padding_that_only_adds_windows_of_zeros():
    # p = 1 would also give ceil(5 / 4) = 2, but its first window sees only padding.
    assert conv_output(5, 1, s=4, p=1).output == 2
    assert solve_padding(5, 1, s=4) == [0]


# --- check_layer --------------------------------------------------------------------------------------------------


def test_check_layer_confirms_the_resnet_stem_and_explains_the_dropped_row():
    stem = Geometry(OpKind.CONV, kernel=(7, 7), stride=(2, 2), padding=(3, 3), padding_end=(3, 3))
    result = check_layer(stem, (224, 224), (112, 112))
    assert result is not None
    assert (result.relation, result.expected, result.observed, result.ok) == (6, (112, 112), (112, 112), True)
    assert result.dropped == (1, 1)
    assert result.formulas == ("o = floor((224 + 2*3 - 7) / 2) + 1 = 112",) * 2
    assert result.flags == (DROPPED,)
    assert result.remarks == ("dropped 1 row and column by the floor: (224 + 2*3 - 7) mod 2 = 1, padding only",)
    assert result.warnings == ()  # only padding is lost: a remark, not a warning


def test_check_layer_says_when_the_floor_drops_real_input():
    shortcut = Geometry(OpKind.CONV, kernel=(1, 1), stride=(2, 2))
    result = check_layer(shortcut, (56, 55), (28, 28))
    assert result is not None and result.ok
    assert result.dropped == (1, 0)
    assert result.warnings == ("dropped 1 row by the floor: (56 - 1) mod 2 = 1, 1 row of real input",)


def test_check_layer_reports_a_mismatch():
    conv = Geometry(OpKind.CONV, kernel=(3, 3), stride=(2, 2), padding=(1, 1), padding_end=(1, 1))
    result = check_layer(conv, (56, 56), (27, 28))
    assert result is not None
    assert (result.expected, result.observed, result.ok) == ((28, 28), (27, 28), False)


def test_check_layer_takes_the_more_general_relation_of_a_non_square_layer():
    conv = Geometry(OpKind.CONV, kernel=(1, 7), padding=(0, 3), padding_end=(0, 3))
    result = check_layer(conv, (17, 17), (17, 17))
    assert result is not None and result.ok
    assert result.relation == 3
    assert result.formulas == ("o = 17 - 1 + 1 = 17", "o = i = 17")
    assert result.remarks == ("keeps the height: o = i = 17", "keeps the width: o = i = 17")
    assert result.warnings == ()


def test_check_layer_uses_asymmetric_same_padding():
    same = Geometry(OpKind.CONV, kernel=(4, 4), padding=(1, 1), padding_end=(2, 2))
    result = check_layer(same, (56, 56), (56, 56))
    assert result is not None and result.ok
    assert result.formulas == ("o = (56 - 4) + 1 + 2 + 1 = 56",) * 2


def test_check_layer_derives_same_padding_from_the_padding_mode():
    same = Geometry(OpKind.CONV, kernel=(4, 5), dilation=(1, 2), padding_mode="same")
    result = check_layer(same, (9, 10), (9, 10))
    assert result is not None and result.ok


def test_check_layer_words_the_even_kernel_and_ceil_mode_warnings():
    auto = Geometry(OpKind.CONV, kernel=(2, 2), padding=(1, 1), padding_end=(1, 1))
    assert check_layer(auto, (8, 8), (9, 9)).warnings == (
        "even kernel 2 with p = k // 2 = 1 (Conv2dAuto-style) is not 'same' padding: at stride 1 the height and "
        "width grows by one (relation 3 needs an odd kernel)",
    )
    pool = Geometry(OpKind.MAX_POOL, kernel=(2, 2), stride=(2, 2), padding=(1, 1), padding_end=(1, 1), ceil_mode=True)
    assert check_layer(pool, (5, 6), (3, 4)).warnings == (
        "ceil_mode dropped the last window along the height, which would start in the right padding: 6 >= 5 + 1",
    )


def test_check_layer_words_windows_of_zeros_for_both_kinds_of_convolution():
    padded = Geometry(OpKind.CONV, kernel=(1, 1), padding=(2, 0), padding_end=(2, 0))
    assert "4 rows of the output see only padding: their windows (k' = 1) miss the input" in (
        check_layer(padded, (4, 4), (8, 4)).warnings
    )
    gappy = Geometry(OpKind.CONV_TRANSPOSE, kernel=(2, 2), stride=(3, 3))
    assert check_layer(gappy, (5, 5), (14, 14)).warnings == (
        "4 rows and columns of the output receive no input, only the bias (stride 3, k' = 2)",
    )


def test_check_layer_handles_adaptive_pooling():
    pool = Geometry(OpKind.ADAPTIVE_POOL, output_size=(1, None))
    result = check_layer(pool, (7, 9), (1, 9))
    assert result is not None and result.ok
    assert result.relation is None
    assert result.formulas == ("o = 1 (adaptive target)", "o = i = 9 (adaptive, size kept)")


def test_check_layer_skips_layers_without_a_window():
    assert check_layer(Geometry(OpKind.ELEMENTWISE), (56, 56), (56, 56)) is None


def test_importing_the_arithmetic_does_not_import_torch():
    code = "import sys, resnet_inspect.ops.arithmetic; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True)


# --- Agreement with PyTorch ---------------------------------------------------------------------------------------


class Axis(NamedTuple):
    """One spatial axis of a windowed layer."""

    size: int
    kernel: int
    stride: int = 1
    padding: int = 0
    dilation: int = 1
    output_padding: int = 0


def conv_axes(max_size: int = 24) -> st.SearchStrategy[Axis]:
    return st.tuples(
        st.integers(1, max_size), st.integers(1, 7), st.integers(1, 4), st.integers(0, 6), st.integers(1, 3)
    ).map(lambda drawn: Axis(*drawn))


def pool_axes(max_size: int = 24, dilation: bool = True) -> st.SearchStrategy[Axis]:
    """PyTorch pooling refuses padding above half the kernel, so the drawn padding is folded below it."""
    dilations = st.integers(1, 3) if dilation else st.just(1)
    return st.tuples(st.integers(1, max_size), st.integers(1, 7), st.integers(1, 4), st.integers(0, 3), dilations).map(
        lambda drawn: Axis(drawn[0], drawn[1], drawn[2], drawn[3] % (drawn[1] // 2 + 1), drawn[4])
    )


def transposed_axes(max_size: int = 16) -> st.SearchStrategy[Axis]:
    """PyTorch refuses output_padding that is not below the stride or the dilation, so it is folded below."""
    return st.tuples(
        st.integers(1, max_size),
        st.integers(1, 6),
        st.integers(1, 4),
        st.integers(0, 6),
        st.integers(1, 3),
        st.integers(0, 3),
    ).map(lambda drawn: Axis(*drawn[:5], output_padding=drawn[5] % max(drawn[2], drawn[4])))


def image(h: Axis, w: Axis, device: str = "cpu") -> torch.Tensor:
    return torch.zeros(1, 1, h.size, w.size, device=device)


def kernel(h: Axis, w: Axis, device: str = "cpu") -> torch.Tensor:
    return torch.zeros(1, 1, h.kernel, w.kernel, device=device)


def torch_conv2d(h: Axis, w: Axis, device: str = "cpu") -> tuple[int, ...]:
    output = F.conv2d(
        image(h, w, device),
        kernel(h, w, device),
        stride=(h.stride, w.stride),
        padding=(h.padding, w.padding),
        dilation=(h.dilation, w.dilation),
    )
    return tuple(output.shape[2:])


def torch_max_pool2d(h: Axis, w: Axis, ceil_mode: bool, device: str = "cpu") -> tuple[int, ...]:
    output = F.max_pool2d(
        image(h, w, device),
        (h.kernel, w.kernel),
        (h.stride, w.stride),
        (h.padding, w.padding),
        (h.dilation, w.dilation),
        ceil_mode=ceil_mode,
    )
    return tuple(output.shape[2:])


def torch_conv_transpose2d(h: Axis, w: Axis, device: str = "cpu") -> tuple[int, ...]:
    output = F.conv_transpose2d(
        image(h, w, device),
        kernel(h, w, device),
        stride=(h.stride, w.stride),
        padding=(h.padding, w.padding),
        output_padding=(h.output_padding, w.output_padding),
        dilation=(h.dilation, w.dilation),
    )
    return tuple(output.shape[2:])


def expected_conv(h: Axis, w: Axis) -> tuple[int, ...]:
    return tuple(conv_output(a.size, a.kernel, a.stride, a.padding, a.dilation).output for a in (h, w))


def expected_pool(h: Axis, w: Axis, ceil_mode: bool) -> tuple[int, ...]:
    return tuple(pool_output(a.size, a.kernel, a.stride, a.padding, a.dilation, ceil_mode).output for a in (h, w))


def expected_transposed(h: Axis, w: Axis) -> tuple[int, ...]:
    return tuple(
        conv_transpose_output(a.size, a.kernel, a.stride, a.padding, a.dilation, a.output_padding).output
        for a in (h, w)
    )


def rejects(run, *args) -> bool:
    """Whether torch refuses the layer (it raises RuntimeError when an output size is below one)."""
    try:
        run(*args)
    except RuntimeError:
        return True
    return False


def trailing_zeros(values: torch.Tensor) -> int:
    nonzero = values.nonzero()
    return len(values) if len(nonzero) == 0 else len(values) - 1 - int(nonzero[-1])


@pytest.mark.parametrize(
    ("run", "args"),
    [
        (torch_conv2d, (Axis(224, 7, 2, 3), Axis(224, 7, 2, 3))),
        (torch_conv2d, (Axis(9, 3, 1, 2, 2), Axis(8, 2, 3, 0, 1))),
        (torch_max_pool2d, (Axis(5, 2, 2, 1), Axis(112, 3, 2, 1), True)),
        (torch_conv_transpose2d, (Axis(28, 3, 2, 1, 1, 1), Axis(5, 2, 3, 0, 2, 1))),
    ],
)
def test_the_meta_device_agrees_with_the_cpu_on_output_shapes(run, args):
    # The meta device computes shapes without data, but it skips some checks (output_padding against the
    # stride), so the properties below run on tiny CPU tensors.
    assert run(*args, device="meta") == run(*args)


@examples(1000)
@given(conv_axes(), conv_axes())
def test_conv2d_output_size_matches_torch(h, w):
    expected = expected_conv(h, w)
    assume(min(expected) >= 1)
    assert torch_conv2d(h, w) == expected


@examples(600)
@given(conv_axes(max_size=8), conv_axes(max_size=8))
def test_conv2d_is_rejected_exactly_when_an_output_size_is_below_one(h, w):
    assert rejects(torch_conv2d, h, w) == (min(expected_conv(h, w)) < 1)


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@examples(400)
@given(st.integers(1, 24), st.integers(1, 24), st.integers(1, 8), st.integers(1, 8), st.integers(1, 3))
def test_conv2d_same_padding_keeps_the_size_with_the_odd_padding_on_the_right(height, width, kh, kw, dilation):
    output = F.conv2d(torch.zeros(1, 1, height, width), torch.zeros(1, 1, kh, kw), padding="same", dilation=dilation)
    for size, k, observed in zip((height, width), (kh, kw), output.shape[2:], strict=True):
        total = dilation * (k - 1)
        arithmetic = conv_output(size, k, 1, total // 2, dilation, p_end=total - total // 2)
        assert arithmetic.output == observed == size
        assert SIZE_PRESERVING in arithmetic.flags


@examples(1000)
@given(pool_axes(), pool_axes(), st.booleans())
def test_max_pool2d_output_size_matches_torch(h, w, ceil_mode):
    expected = expected_pool(h, w, ceil_mode)
    assume(min(expected) >= 1)
    assert torch_max_pool2d(h, w, ceil_mode) == expected


@examples(600)
@given(pool_axes(max_size=6), pool_axes(max_size=6), st.booleans())
def test_max_pool2d_is_rejected_exactly_when_an_output_size_is_below_one(h, w, ceil_mode):
    assert rejects(torch_max_pool2d, h, w, ceil_mode) == (min(expected_pool(h, w, ceil_mode)) < 1)


@examples(600)
@given(pool_axes(dilation=False), pool_axes(dilation=False), st.booleans(), st.booleans())
def test_avg_pool2d_output_size_matches_torch_whatever_counts_the_padding(h, w, ceil_mode, count_include_pad):
    expected = expected_pool(h, w, ceil_mode)
    assume(min(expected) >= 1)
    output = F.avg_pool2d(
        image(h, w),
        (h.kernel, w.kernel),
        (h.stride, w.stride),
        (h.padding, w.padding),
        ceil_mode=ceil_mode,
        count_include_pad=count_include_pad,
    )
    assert tuple(output.shape[2:]) == expected


@examples(800)
@given(transposed_axes(), transposed_axes())
def test_conv_transpose2d_output_size_matches_torch(h, w):
    expected = expected_transposed(h, w)
    assume(min(expected) >= 1)
    assert torch_conv_transpose2d(h, w) == expected


@examples(500)
@given(transposed_axes(max_size=4), transposed_axes(max_size=4))
def test_conv_transpose2d_is_rejected_only_when_an_output_size_is_below_one(h, w):
    # At o = 0 exactly, torch 2.13 on the CPU sometimes returns an empty tensor instead of raising, depending on
    # the backend it picks (compare kernels 4x4 and 1x4); the size it then returns is still the formula's.
    expected = expected_transposed(h, w)
    try:
        observed = torch_conv_transpose2d(h, w)
    except RuntimeError:
        assert min(expected) < 1
    else:
        assert observed == expected
        assert min(expected) >= 0


@examples(300)
@given(
    st.integers(1, 24),
    st.integers(1, 24),
    st.none() | st.integers(1, 30),
    st.none() | st.integers(1, 30),
    st.sampled_from([F.adaptive_avg_pool2d, F.adaptive_max_pool2d]),
)
def test_adaptive_pool2d_output_size_matches_torch(height, width, target_h, target_w, pool):
    output = pool(torch.zeros(1, 1, height, width), (target_h, target_w))
    expected = (adaptive_pool_output(height, target_h).output, adaptive_pool_output(width, target_w).output)
    assert tuple(output.shape[2:]) == expected


# --- What the flags claim, checked with data ----------------------------------------------------------------------


@examples(400)
@given(st.integers(1, 8), st.integers(1, 4), st.integers(1, 4), st.integers(0, 8), st.integers(1, 3))
def test_zero_only_windows_flags_exactly_the_convolutions_with_an_output_that_sees_no_input(i, k, s, p, d):
    arithmetic = conv_output(i, k, s, p, d)
    assume(arithmetic.output >= 1)
    output = F.conv1d(torch.ones(1, 1, i), torch.ones(1, 1, k), stride=s, padding=p, dilation=d)
    assert (ZERO_ONLY_WINDOWS in arithmetic.flags) == bool((output == 0).any())


@examples(400)
@given(transposed_axes(max_size=8))
def test_zero_only_windows_flags_exactly_the_transposed_convolutions_with_an_output_no_input_reaches(a):
    arithmetic = conv_transpose_output(a.size, a.kernel, a.stride, a.padding, a.dilation, a.output_padding)
    assume(arithmetic.output >= 1)
    output = F.conv_transpose1d(
        torch.ones(1, 1, a.size),
        torch.ones(1, 1, a.kernel),
        stride=a.stride,
        padding=a.padding,
        output_padding=a.output_padding,
        dilation=a.dilation,
    )
    assert (ZERO_ONLY_WINDOWS in arithmetic.flags) == bool((output == 0).any())


@examples(400)
@given(
    st.integers(1, 24), st.integers(1, 5), st.integers(1, 5), st.integers(0, 3), st.integers(0, 3), st.integers(1, 3)
)
def test_dropped_counts_the_trailing_padded_rows_no_convolution_window_reaches(i, k, s, p, p_end, d):
    arithmetic = conv_output(i, k, s, p, d, p_end)
    assume(arithmetic.output >= 1)
    padded = torch.ones(1, 1, i + p + p_end, requires_grad=True)
    F.conv1d(padded, torch.ones(1, 1, k), stride=s, dilation=d).sum().backward()
    assert trailing_zeros(padded.grad[0, 0]) == arithmetic.dropped
    assert (DROPPED in arithmetic.flags) == (arithmetic.dropped > 0)


@examples(400)
@given(pool_axes(dilation=False), st.booleans())
def test_pooling_leaves_no_input_row_uncovered_beyond_the_dropped_rows(a, ceil_mode):
    arithmetic = pool_output(a.size, a.kernel, a.stride, a.padding, ceil_mode=ceil_mode)
    assume(arithmetic.output >= 1)
    row = torch.ones(1, 1, a.size, requires_grad=True)
    F.avg_pool1d(row, a.kernel, a.stride, a.padding, ceil_mode=ceil_mode).sum().backward()
    assert trailing_zeros(row.grad[0, 0]) == max(0, arithmetic.dropped - a.padding)


@examples(300)
@given(st.integers(1, 40), st.integers(1, 7), st.integers(1, 4), st.integers(1, 3))
def test_solve_padding_lists_exactly_the_useful_paddings_that_give_the_target_size(i, k, s, d):
    target = -(-i // s)
    solutions = solve_padding(i, k, s, d)
    for p in range(d * (k - 1) + s + 2):  # beyond this every padding overshoots the target
        arithmetic = conv_output(i, k, s, p, d)
        assert (p in solutions) == (arithmetic.output == target and ZERO_ONLY_WINDOWS not in arithmetic.flags)
    for p in solutions:
        assert F.conv1d(torch.zeros(1, 1, i), torch.zeros(1, 1, k), stride=s, padding=p, dilation=d).shape[2] == target


# --- check_layer against real modules -----------------------------------------------------------------------------


@st.composite
def windowed_layers(draw) -> tuple[torch.nn.Module, Geometry, tuple[int, int]]:
    """A PyTorch layer, the geometry a capture would record for it, and an input size it accepts."""
    kind = draw(st.sampled_from([OpKind.CONV, OpKind.CONV_TRANSPOSE, OpKind.MAX_POOL, OpKind.AVG_POOL]))
    if kind is OpKind.CONV:
        h, w = draw(conv_axes()), draw(conv_axes())
        expected = expected_conv(h, w)
    elif kind is OpKind.CONV_TRANSPOSE:
        h, w = draw(transposed_axes()), draw(transposed_axes())
        expected = expected_transposed(h, w)
    else:
        dilated = kind is OpKind.MAX_POOL
        h, w = draw(pool_axes(dilation=dilated)), draw(pool_axes(dilation=dilated))
        ceil_mode = draw(st.booleans())
        expected = expected_pool(h, w, ceil_mode)
    assume(min(expected) >= 1)
    geometry = Geometry(
        kind,
        kernel=(h.kernel, w.kernel),
        stride=(h.stride, w.stride),
        padding=(h.padding, w.padding),
        padding_end=(h.padding, w.padding),
        dilation=(h.dilation, w.dilation),
        ceil_mode=kind.is_pool and ceil_mode,
        output_padding=(h.output_padding, w.output_padding),
    )
    options = {"kernel_size": geometry.kernel, "stride": geometry.stride, "padding": geometry.padding}
    if kind is OpKind.CONV:
        layer = torch.nn.Conv2d(1, 1, dilation=geometry.dilation, **options)
    elif kind is OpKind.CONV_TRANSPOSE:
        layer = torch.nn.ConvTranspose2d(
            1, 1, dilation=geometry.dilation, output_padding=geometry.output_padding, **options
        )
    elif kind is OpKind.MAX_POOL:
        layer = torch.nn.MaxPool2d(dilation=geometry.dilation, ceil_mode=ceil_mode, **options)
    else:
        layer = torch.nn.AvgPool2d(ceil_mode=ceil_mode, **options)
    return layer, geometry, (h.size, w.size)


@examples(300)
@given(windowed_layers())
def test_check_layer_accepts_what_torch_modules_return(layer):
    module, geometry, input_hw = layer
    with torch.no_grad():
        output = module(torch.zeros(1, 1, *input_hw))
    result = check_layer(geometry, input_hw, tuple(output.shape[2:]))
    assert result is not None and result.ok
    assert len(result.remarks) >= len(result.flags) and set(result.warnings) <= set(result.remarks)


def _blind_windows_by_brute_force(i, k, s, p, d, output):
    return sum(
        not any(0 <= j * s - p + t * d <= i - 1 for t in range(k)) for j in range(output)
    )


def _unreached_outputs_by_brute_force(i, k, s, p, d, output):
    return sum(
        not any((x + p - t * d) % s == 0 and 0 <= (x + p - t * d) // s < i for t in range(k)) for x in range(output)
    )


@examples(2000)
@given(st.integers(1, 30), st.integers(1, 7), st.integers(1, 5), st.integers(0, 12), st.integers(1, 3))
def test_zero_window_counts_equal_a_tap_by_tap_count(i, k, s, p, d):
    from resnet_inspect.ops.arithmetic import _outputs_without_input, _windows_without_input

    output = (i + 2 * p - d * (k - 1) - 1) // s + 1
    if output >= 1:
        assert _windows_without_input(i, k, s, p, d, output) == _blind_windows_by_brute_force(i, k, s, p, d, output)
    transposed = (i - 1) * s - 2 * p + d * (k - 1) + 1 + (s - 1)
    if transposed >= 1:
        assert _outputs_without_input(i, k, s, p, d, transposed) == _unreached_outputs_by_brute_force(
            i, k, s, p, d, transposed)
