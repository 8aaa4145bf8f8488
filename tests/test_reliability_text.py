"""What users see printed: names as they are, ASCII where the terminal wants it, no number ever cut."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from resnet_inspect.cli.app import app
from resnet_inspect.models import get_model
from resnet_inspect.pipeline.build import inspect, verify
from resnet_inspect.pipeline.compare import compare
from resnet_inspect.pipeline.registry import registry_report
from resnet_inspect.pipeline.rf import rf_report
from resnet_inspect.render import rich_renderables
from resnet_inspect.render.document import cell_text

REPOSITORY = Path(__file__).resolve().parent.parent
runner = CliRunner()


# --------------------------------------------------------------------------------------- markup in names


@pytest.fixture
def marked_up_model(tmp_path) -> str:
    """A model file under directories whose names rich would read as markup and as an emoji code."""
    directory = tmp_path / "a[/x]b" / ":rocket:" / "[bold]"
    directory.mkdir(parents=True)
    (directory / "m.py").write_text("from torch import nn\n\ndef model():\n"
                                    "    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1))\n")
    return f"{directory}/m.py:model"


@pytest.mark.parametrize("command", ["summary", "verify", "rf", "compare"])
def test_markup_in_a_model_name_is_printed_literally(command, marked_up_model):
    result = runner.invoke(app, [command, marked_up_model, "-i", "16"])
    assert result.exit_code == 0, result.stderr
    assert marked_up_model in result.stdout.replace("\n", "") or "a[/x]b/:rocket:/[bold]/m.py" in result.stdout
    assert "🚀" not in result.stdout


def test_markup_in_an_error_is_printed_literally(tmp_path):
    spec = f"{tmp_path}/[red]missing[/red]/:rocket:.py:model"
    result = runner.invoke(app, ["summary", spec])
    assert result.exit_code == 2
    assert result.stderr == f"error: factory file not found: {tmp_path}/[red]missing[/red]/:rocket:.py\n"


# ------------------------------------------------------------------------------------ non-UTF-8 terminals


@pytest.mark.parametrize(("args", "encoding"), [
    pytest.param(["verify", "resnet20"], "ascii", id="verify (check marks), ascii"),
    pytest.param(["verify", "resnet20"], "cp1252", id="verify (check marks), cp1252"),
    pytest.param(["verify", "resnet20"], "latin-1", id="verify (check marks), latin-1"),
    pytest.param(["rf", "resnet20", "--erf", "--erf-samples", "1"], "cp1252", id="rf --erf (shaded heatmap)"),
    pytest.param(["summary", "resnet20", "-f", "markdown"], "ascii", id="summary markdown"),
])
def test_a_terminal_that_cannot_show_unicode_gets_ascii_marks(args, encoding):
    finished = subprocess.run([sys.executable, "-m", "resnet_inspect", *args], capture_output=True, cwd=REPOSITORY,
                              env={**os.environ, "PYTHONPATH": str(REPOSITORY), "PYTHONIOENCODING": encoding},
                              timeout=120)
    assert finished.returncode == 0, finished.stderr.decode(errors="replace")
    assert finished.stderr == b""
    text = finished.stdout.decode("ascii")  # nothing but ASCII, whatever the encoding could have shown
    if args[0] == "verify":
        assert "ok" in text and "all layers agree" in text
    if args[0] == "rf":
        assert "@" in text  # the heaviest shade


def test_a_utf8_terminal_keeps_the_marks():
    finished = subprocess.run([sys.executable, "-m", "resnet_inspect", "verify", "resnet20"], capture_output=True,
                              cwd=REPOSITORY, env={**os.environ, "PYTHONPATH": str(REPOSITORY),
                                                   "PYTHONIOENCODING": "utf-8"}, timeout=120)
    assert finished.returncode == 0
    assert "✓" in finished.stdout.decode("utf-8")


# ------------------------------------------------------------------------------------------ narrow terminals


def digits(text: str) -> Counter[str]:
    return Counter(character for character in text if character.isdigit())


def document_digits(report) -> Counter[str]:
    document = report.document()
    parts = [*document.notes]
    for table in document.tables:
        parts += [table.title, *(column.header for column in table.columns), *table.footer]
        parts += [cell_text(cell) for row in table.rows for cell in row]
    return digits("".join(parts))


def printed(report, width: int) -> str:
    console = Console(file=io.StringIO(), width=width, color_system=None)
    for renderable in rich_renderables(report):
        console.print(renderable)
    return console.file.getvalue()  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def reports() -> dict[str, object]:
    with torch.device("meta"):
        resnet18 = get_model("resnet18")
    return {
        "summary": inspect(resnet18, 224, model_name="resnet18"),
        "verify": verify(resnet18, 224, model_name="resnet18"),
        "rf": rf_report(resnet18, "resnet18", (224, 224)),
        "compare": compare(["resnet18", "resnet50"], show_stages=True),
        "list": registry_report(),
    }


@pytest.mark.parametrize("width", [60, 80])
@pytest.mark.parametrize("name", ["summary", "verify", "rf", "compare", "list"])
def test_a_narrow_terminal_folds_columns_and_never_cuts_a_number(reports, name, width):
    output = printed(reports[name], width)
    assert "…" not in output
    assert max(len(line) for line in output.splitlines()) <= width
    assert digits(output) == document_digits(reports[name])  # every digit of every cell, title and note


# ------------------------------------------------------------------------------------------ --family twice


def test_repeated_family_options_combine():
    result = runner.invoke(app, ["compare", "--family", "cifar", "--family", "imagenet", "-f", "json"])
    assert result.exit_code == 0, result.stderr
    models = [row["model"] for row in json.loads(result.stdout)]
    assert models == ["resnet20", "resnet32", "resnet44", "resnet56", "resnet110",
                      "resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]


def test_a_family_given_twice_adds_its_models_once():
    result = runner.invoke(app, ["compare", "--family", "cifar", "--family", "CIFAR", "-f", "json"])
    assert result.exit_code == 0, result.stderr
    assert len(json.loads(result.stdout)) == 5


def test_an_unknown_family_among_several_is_one_error_line():
    result = runner.invoke(app, ["compare", "--family", "cifar", "--family", "vgg"])
    assert result.exit_code == 2
    assert result.stderr == "error: unknown family 'vgg': use one of imagenet, cifar, all\n"


@pytest.mark.parametrize("command", ["summary", "verify", "rf", "time", "compare"])
def test_the_help_says_that_a_model_spec_runs_code(command):
    result = runner.invoke(app, [command, "--help"], terminal_width=200)
    text = " ".join(result.stdout.split())
    assert "A spec imports and runs that code, like `python file.py`: never take one from untrusted input." in text
    assert "torchvision:NAME, timm:NAME" in text
