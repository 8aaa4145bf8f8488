"""One byte formatter: its units, and the same bytes printed the same way by two commands."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from resnet_inspect.cli.app import app
from resnet_inspect.models import get_model
from resnet_inspect.units import bytes_text

KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30


@pytest.mark.parametrize(("count", "text"), [
    (0, "0 B"), (1023, "1023 B"), (KIB, "1.0 KiB"), (212_889, f"{212_889 / KIB:.1f} KiB"),
    (MIB - 1, f"{(MIB - 1) / KIB:.1f} KiB"), (MIB, "1.0 MiB"), (3 * GIB // 2, "1.5 GiB"),
    (12_048 * GIB, "12048.0 GiB"),
])
def test_each_figure_takes_the_largest_binary_unit_that_keeps_it_at_one_or_more(count: int, text: str):
    assert bytes_text(count) == text


def test_more_decimals_change_the_figure_never_the_unit():
    assert bytes_text(int(7.6 * GIB), 2) == "7.60 GiB" and bytes_text(38_656, 2) == f"{38_656 / KIB:.2f} KiB"


def _figure(pattern: str, text: str) -> str:
    match = re.search(pattern, text)
    assert match, f"{pattern!r} not in:\n{text}"
    return match.group(1)


def test_summary_and_fit_print_a_models_buffers_as_the_same_figure():
    """The buffers of resnet20 (its BatchNorm statistics) are kilobytes: `fit` once printed them as '0.0 MiB'
    while `summary --train` printed KiB."""
    buffers = sum(buffer.numel() * buffer.element_size() for buffer in get_model("resnet20").buffers())
    runner = CliRunner()
    summary = runner.invoke(app, ["summary", "resnet20", "--train", "--depth", "1"], env={"COLUMNS": "240"})
    fit = runner.invoke(app, ["fit", "resnet20", "--train", "--memory", "256MiB"], env={"COLUMNS": "240"})
    assert summary.exit_code == 0 and fit.exit_code == 0, summary.output + fit.output
    in_summary = _figure(r"buffers (\d[\d.]* [KMG]?i?B)", summary.stdout)
    in_fit = _figure(r"│\s+buffers\s+│\s+(\d[\d.]* [KMG]?i?B) │", fit.stdout)
    assert in_summary == in_fit == bytes_text(buffers)
    assert in_summary.endswith(" KiB")
