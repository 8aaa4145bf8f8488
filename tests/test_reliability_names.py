"""Names and messages reach every output safely: errors blamed on the module that raised, one-line messages that
keep their text, names that no spreadsheet, Markdown viewer, terminal or math-text parser can misread, and file
names that are not valid UTF-8."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import sys
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import resnet_inspect
from resnet_inspect.cli.app import app
from resnet_inspect.cli.common import one_line
from resnet_inspect.errors import ForwardError, InputTooSmallError
from resnet_inspect.render import csv_value, render_csv, render_markdown, render_table
from resnet_inspect.render.document import Cell

runner = CliRunner()


# -------------------------------------------------------------------- blame and classification (item 12)


class RaisesAfterD(nn.Module):
    """The model's own forward raises after its layer `d` has returned."""

    def __init__(self) -> None:
        super().__init__()
        self.d = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.d(x)
        raise RuntimeError("the model gave up")


class Inner(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        raise ValueError("scale must be greater than 0, and the window too small")


class RaisesInInner(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.inner, self.head = nn.Conv2d(3, 4, 3), Inner(), nn.Conv2d(4, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.inner(self.stem(x)))


def test_an_error_in_the_models_own_forward_is_not_blamed_on_the_last_layer_that_finished():
    with pytest.raises(ForwardError) as failed:
        resnet_inspect.summary(RaisesAfterD(), 16)
    message = str(failed.value)
    assert "in d " not in message and "(Conv2d)" not in message, message
    assert message == ("forward pass failed in the model's forward (RaisesAfterD) with input 1x3x16x16: the model "
                       "gave up")


def test_an_error_in_a_submodules_forward_is_blamed_on_that_submodule_and_classified_by_its_type():
    with pytest.raises(ForwardError) as failed:
        resnet_inspect.summary(RaisesInInner(), 16)
    assert not isinstance(failed.value, InputTooSmallError)  # the words "greater than", "too small" do not decide
    assert str(failed.value) == ("forward pass failed in inner (Inner) with input 1x4x14x14: scale must be "
                                 "greater than 0, and the window too small")


def test_an_input_too_small_is_still_found_by_the_layers_arithmetic():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.MaxPool2d(4))
    with pytest.raises(InputTooSmallError, match=r"^input too small: 1 \(MaxPool2d\) with input 1x4x2x2 would give"):
        resnet_inspect.summary(model, 4)


class FunctionalPool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.max_pool2d(x, 5)


def test_a_functional_window_too_large_for_its_input_is_input_too_small_by_its_arithmetic():
    with pytest.raises(InputTooSmallError, match=r"^input too small: max_pool2d in the model's forward with input "
                                                 r"1x3x4x4 would give an output of 0x0"):
        resnet_inspect.summary(FunctionalPool(), 4)


# ------------------------------------------------------------------------------- one-line messages (item 13)


def test_one_line_keeps_the_text_of_a_message_that_starts_with_a_newline():
    assert one_line("\n  the real reason\nsecond line") == "the real reason"
    assert one_line("ValueError: \nthe real reason\nsecond line") == "ValueError: the real reason"


def test_an_unexpected_error_keeps_its_text_and_the_debug_hint(tmp_path, monkeypatch):
    from resnet_inspect.pipeline import summary

    def broken(*args, **kwargs):
        raise ArithmeticError("\nthe analysis broke\nin two lines")

    monkeypatch.delenv("RESNET_INSPECT_DEBUG", raising=False)
    monkeypatch.setattr(summary, "summary_from_capture", broken)
    result = runner.invoke(app, ["summary", "resnet20"])
    assert result.exit_code == 2
    assert result.stderr == ("error: ArithmeticError: the analysis broke (set RESNET_INSPECT_DEBUG=1 for the "
                             "traceback)\n")


def test_a_factory_error_that_starts_with_a_newline_keeps_its_text(tmp_path):
    path = tmp_path / "model.py"
    path.write_text("def model():\n    raise ValueError('\\nno weights here\\nsecond line')\n")
    result = runner.invoke(app, ["summary", f"{path}:model"])
    assert result.stderr == f"error: {path}:model raised ValueError: no weights here\n"


# ------------------------------------------------------------------------ names in every output (item 14)

HOSTILE = OrderedDict([
    ("=HYPERLINK(\"http://x\")", nn.Conv2d(3, 4, 3)),
    ("+cmd|' /C calc'!A0", nn.ReLU()),
    ("-2+3", nn.Conv2d(4, 4, 1)),
    ("@SUM(1)", nn.ReLU()),
    ("\tTab", nn.Identity()),
    ("a|b<img src=x onerror=alert(1)>\nnext", nn.Conv2d(4, 4, 1)),
    ("\x1b]0;owned\x07\x1b[31mred\x1b[0m\x9bX\x08", nn.Conv2d(4, 4, 1)),
])


@pytest.fixture(scope="module")
def hostile_report():
    return resnet_inspect.summary(nn.Sequential(HOSTILE), 8)


def test_csv_text_cells_that_a_spreadsheet_would_run_are_prefixed(hostile_report):
    rows = list(csv.reader(io.StringIO(render_csv(hostile_report))))
    names = [row[0] for row in rows[1:]]
    for name in list(HOSTILE)[:5]:
        assert f"'{name}" in names, names
    assert not any(cell[:1] in ("=", "+", "-", "@", "\t", "\r") for row in rows for cell in row
                   if not re.fullmatch(r"-?\d+(\.\d+)?", cell)), rows


def test_csv_numbers_are_never_prefixed():
    assert csv_value(Cell("-1", data=-1)) == -1
    assert csv_value("-1") == "-1" and csv_value("-0.25") == "-0.25" and csv_value("-1,024") == "-1024"
    assert csv_value("-2x-2") == "'-2x-2" and csv_value("=1+1") == "'=1+1"
    assert csv_value("\r=1") == "'=1"  # the carriage return is a control character: removed, then guarded


def test_markdown_keeps_one_row_per_layer_and_no_raw_html(hostile_report):
    text = render_markdown(hostile_report)
    assert "<img" not in text and "&lt;img src=x onerror=alert(1)&gt;" in text
    table = [line for line in text.splitlines() if line.startswith("|")]
    columns = {len(re.split(r"(?<!\\)\|", line)) for line in table}
    assert len(columns) == 1, table  # every row has the header's cells: no | in a name opens a new one
    assert len(table) == 2 + len(hostile_report.to_dict()["layers"])  # no newline in a name starts a new row


def test_the_terminal_table_carries_no_control_sequences(hostile_report):
    for text in (render_table(hostile_report), repr(hostile_report)):
        assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]", text), repr(text)
        assert "owned" not in text and "│ red " in text  # the OSC's body is a command; the text after it stays


def test_an_error_line_carries_no_control_sequences(tmp_path):
    result = runner.invoke(app, ["summary", f"{tmp_path}/\x1b]0;owned\x07x.py:model"])
    assert result.exit_code == 2
    assert not re.search(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]", result.stderr), repr(result.stderr)


# ------------------------------------------------------------------------ names in pictures (item 13)


@pytest.mark.parametrize("name", ["cost$\\frac{$", "$\\alpha$", "100$ and 200$"])
def test_a_dollar_in_a_name_is_drawn_as_plain_text(name):
    from resnet_inspect.render.plot import compare_picture, rf_picture

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3, stride=2))
    svg = rf_picture(resnet_inspect.receptive_field(model, 16, model_name=name), "svg").decode()
    escaped = name.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    assert escaped in svg and "α" not in svg  # the name's own characters, not a Greek letter or a fraction
    svg = compare_picture(resnet_inspect.compare({name: model}, 16), "svg").decode()
    assert escaped in svg


# ------------------------------------------------------------------- file names that are not UTF-8 (item 13)


@pytest.fixture
def undecodable_spec(tmp_path) -> str:
    directory = Path(os.fsdecode(bytes(tmp_path) + b"/caf\xe9"))
    directory.mkdir()
    (directory / "m.py").write_text("from torch import nn\n\ndef model():\n"
                                    "    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3, stride=2))\n")
    return f"{directory}/m.py:model"


@pytest.mark.skipif(sys.getfilesystemencoding() != "utf-8", reason="the file system encoding decides the name")
@pytest.mark.parametrize("fmt", ["table", "markdown", "html", "json"])
def test_a_spec_path_that_is_not_utf8_is_written_with_the_byte_escaped(fmt, undecodable_spec, tmp_path):
    target = tmp_path / f"report.{fmt}"
    command = ["summary", undecodable_spec, "-i", "16", "-f", fmt, "-o", str(target)]
    result = runner.invoke(app, command)
    assert result.exit_code == 0, result.stderr
    text = target.read_bytes().decode("utf-8")  # valid UTF-8
    shown = json.loads(text)["model"] if fmt == "json" else text
    assert "caf\\xe9/m.py:model" in shown


@pytest.mark.skipif(sys.getfilesystemencoding() != "utf-8", reason="the file system encoding decides the name")
def test_a_spec_path_that_is_not_utf8_can_be_plotted(undecodable_spec, tmp_path):
    pytest.importorskip("matplotlib")
    picture = tmp_path / "rf.svg"
    result = runner.invoke(app, ["rf", undecodable_spec, "-i", "16", "--plot", str(picture)])
    assert result.exit_code == 0, result.stderr
    assert "caf\\xe9" in picture.read_text(encoding="utf-8")
