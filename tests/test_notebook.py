"""examples/walkthrough.ipynb runs top to bottom in a fresh kernel, and its answers are the tool's numbers."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "examples" / "walkthrough.ipynb"


@pytest.fixture(scope="module")
def executed() -> nbformat.NotebookNode:
    """The notebook run in a new kernel from examples/ (as a reader runs it), with this checkout importable."""
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    path = os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH"))))
    previous = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = path  # the kernel is a subprocess: it reads the environment when it starts
    try:
        # A failing cell raises CellExecutionError, which fails the test with the cell and its traceback.
        NotebookClient(notebook, timeout=300, kernel_name="python3",
                       resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    finally:
        if previous is None:
            os.environ.pop("PYTHONPATH")
        else:
            os.environ["PYTHONPATH"] = previous
    return notebook


def outputs(notebook: nbformat.NotebookNode, mime: str = "text/plain") -> list[str]:
    texts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            texts.append(output.get("text") or output.get("data", {}).get(mime, ""))
    return texts


@pytest.mark.slow
def test_the_notebook_runs_top_to_bottom_without_an_error(executed):
    errors = [output for cell in executed.cells for output in cell.get("outputs", [])
              if output.output_type == "error"]
    assert not errors


@pytest.mark.slow
def test_each_answer_is_a_table_rendered_as_html(executed):
    tables = [text for text in outputs(executed, "text/html") if "<table" in text]
    assert len(tables) >= 10
    assert all(text.count("<table") == text.count("</table>") for text in tables)


@pytest.mark.slow
def test_the_resnets_built_class_by_class_have_torchvisions_numbers(executed):
    comparison = next(text for text in outputs(executed) if "resnet18 (this notebook)" in text)
    assert "│ resnet18 (this notebook) │   224 │    18 │ 2-2-2-2 │        11.69 M │        1.814 G" in comparison
    summary = next(text for text in outputs(executed) if text.startswith("ResNet: input 1x3x224x224"))
    assert "parameters: 11,689,512" in summary and "MACs: 1,814,073,344" in summary


@pytest.mark.slow
def test_the_seed_style_padding_is_caught_and_output_padding_is_relation_14(executed):
    texts = outputs(executed)
    assert "1 layer disagrees with its own geometry\n" in texts
    assert any("│ relation             │ 14" in text for text in texts)


def test_the_notebook_is_the_only_copy_of_the_walkthrough():
    assert not (ROOT / "examples" / "walkthrough.md").exists()
