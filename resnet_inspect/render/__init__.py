"""Renderers: a report becomes a rich table, JSON, CSV or Markdown. They see only the report."""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable
from html import escape as html_escape
from typing import Any, Protocol

from resnet_inspect.names import shown
from resnet_inspect.render.document import Cell, Document, cell_style, cell_text

PASS_MARK, FAIL_MARK = "✓", "✗"  # the check marks of the tables

FORMATS = ("table", "json", "csv", "markdown", "html")


class Report(Protocol):
    def to_dict(self) -> Any: ...

    def document(self) -> Document: ...


def render_json(report: Report) -> str:
    return json.dumps(report.to_dict(), indent=2, sort_keys=False) + "\n"


_GROUPED_NUMBER = re.compile(r"-?\d{1,3}(,\d{3})+(\.\d+)?")
_RATIO_SUFFIX = re.compile(r"\s+x[\d,.]+$")  # "12.30  x1.05": the ratio to the first row, shown in tables only
_CHECK_WORDS = {PASS_MARK: "ok", FAIL_MARK: "failed"}
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
# What a spreadsheet runs as a formula when a text cell starts with it (OWASP's CSV injection rule).
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


PLACEHOLDER = "-"  # what a table shows for a value that does not exist; CSV leaves that cell empty


def csv_text(text: str) -> str:
    """A text cell a spreadsheet shows as text: control sequences and bidirectional formatting removed first
    (``names.shown``), then one starting like a formula gets a leading ``'``; numbers (-1) stay numbers."""
    text = shown(text)
    if text.startswith(_FORMULA_STARTS) and not _NUMBER.fullmatch(text):
        return f"'{text}"
    return text


def csv_value(cell: Cell | str) -> Any:
    """A cell as CSV holds it: numbers without thousands separators, check marks as ok / failed, the placeholder
    of a missing value as an empty cell, text that a spreadsheet would run as a formula neutralised."""
    if isinstance(cell, Cell) and cell.data is not None:
        return csv_text(cell.data) if isinstance(cell.data, str) else cell.data
    text = _RATIO_SUFFIX.sub("", shown(cell_text(cell)))
    if text == PLACEHOLDER:
        return ""
    if text[:1] in _CHECK_WORDS:
        return _CHECK_WORDS[text[0]]
    return text.replace(",", "") if _GROUPED_NUMBER.fullmatch(text) else csv_text(text)


def render_csv(report: Report) -> str:
    """Each table as CSV, numbers and plain words only; several tables are separated by a blank line and a
    `# title` line."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    tables = report.document().tables
    for position, table in enumerate(tables):
        if len(tables) > 1:
            if position:
                buffer.write("\n")
            buffer.write(f"# {' '.join(shown(table.title).splitlines())}\n")
        writer.writerow([csv_text(f"{column.header} ({column.unit})" if column.unit else column.header)
                         for column in table.columns])
        for row in table.rows:
            writer.writerow([csv_value(cell) for cell in row])
    return buffer.getvalue()


def _markdown_escape(text: str) -> str:
    """Text as Markdown shows it literally: control sequences and bidirectional formatting removed, raw HTML
    escaped, ``|`` (a new table cell) escaped, each line break a ``<br>`` (a newline would end the table row)."""
    escaped = html_escape(shown(text), quote=False).replace("|", "\\|")
    return "<br>".join(escaped.splitlines())


def render_markdown(report: Report) -> str:
    document = report.document()
    lines: list[str] = []
    for table in document.tables:
        lines += [f"### {_markdown_escape(table.title)}", ""]
        lines.append("| " + " | ".join(_markdown_escape(c.header) for c in table.columns) + " |")
        align = {"left": ":---", "right": "---:", "center": ":---:"}
        lines.append("|" + "|".join(align[c.justify] for c in table.columns) + "|")
        for row in table.rows:
            lines.append("| " + " | ".join(_markdown_escape(cell_text(cell)) for cell in row) + " |")
        lines.append("")
        lines += [f"- {_markdown_escape(line)}" for line in table.footer]
        if table.footer:
            lines.append("")
    lines += [f"> {_markdown_escape(note)}" for note in document.notes]
    return "\n".join(lines).rstrip() + "\n"


def terminal_text(text: str) -> str:
    """Text a terminal shows as it is: no control sequences or bidirectional formatting, valid UTF-8."""
    return shown(text)


def rich_renderables(report: Report) -> list[Any]:
    """Rich objects for the terminal: one Table per document table, then totals and notes (names without control
    sequences)."""
    from rich.table import Table as RichTable
    from rich.text import Text

    def text(content: str, **style: Any) -> Text:
        return Text(terminal_text(content), **style)

    document = report.document()
    renderables: list[Any] = []
    for table in document.tables:
        # The title is a line of its own above the table: it wraps at the terminal's width, not the table's, so
        # a long title neither wraps mid-word in a narrow table nor gets cut in a narrow terminal. Text, not str:
        # a title holds model names and paths, and rich would read `[/x]` or `:rocket:` in a str as markup.
        # Columns fold instead of cutting a cell with an ellipsis, so a narrow terminal never shows a shortened
        # number.
        renderables.append(text(table.title, style="table.title", overflow="fold"))
        rich_table = RichTable(header_style="bold", show_lines=False)
        for column in table.columns:
            rich_table.add_column(text(column.header), justify=column.justify, overflow="fold")
        for row in table.rows:
            rich_table.add_row(*(text(cell_text(cell), style=cell_style(cell) or "") for cell in row))
        renderables.append(rich_table)
        renderables += [text(line) for line in table.footer]
    renderables += [text(note, style="yellow") for note in document.notes]
    return renderables


def render_table(report: Report, width: int = 200) -> str:
    """The rich table as plain text (for files and tests)."""
    from rich.console import Console

    # force_jupyter=False: in a notebook rich would otherwise send the output to the page, not to the string
    console = Console(file=io.StringIO(), width=width, color_system=None, force_terminal=False, force_jupyter=False)
    for renderable in rich_renderables(report):
        console.print(renderable)
    return console.file.getvalue()  # type: ignore[attr-defined]


def render_html(report: Report) -> str:
    """A self-contained HTML page, for the reports that have one (``to_html()``: the summary)."""
    to_html = getattr(report, "to_html", None)
    if to_html is None:
        from resnet_inspect.errors import BadInputError

        raise BadInputError(f"--format html is not available for {type(report).__name__}")
    return to_html()


RENDERERS: dict[str, Callable[[Report], str]] = {
    "table": render_table,
    "json": render_json,
    "csv": render_csv,
    "markdown": render_markdown,
    "html": render_html,
}


def render(report: Report, fmt: str) -> str:
    return RENDERERS[fmt](report)
