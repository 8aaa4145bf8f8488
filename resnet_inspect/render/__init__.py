"""Renderers: a report becomes a rich table, JSON, CSV or Markdown. They see only the report."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from typing import Any, Protocol

from resnet_inspect.render.document import Document, cell_style, cell_text

FORMATS = ("table", "json", "csv", "markdown")


class Report(Protocol):
    def to_dict(self) -> Any: ...

    def document(self) -> Document: ...


def render_json(report: Report) -> str:
    return json.dumps(report.to_dict(), indent=2, sort_keys=False) + "\n"


def render_csv(report: Report) -> str:
    """Each table as CSV; several tables are separated by a blank line and a `# title` line."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    tables = report.document().tables
    for position, table in enumerate(tables):
        if len(tables) > 1:
            if position:
                buffer.write("\n")
            buffer.write(f"# {table.title}\n")
        writer.writerow([column.header for column in table.columns])
        for row in table.rows:
            writer.writerow([cell_text(cell) for cell in row])
    return buffer.getvalue()


def _markdown_escape(text: str) -> str:
    return text.replace("|", "\\|")


def render_markdown(report: Report) -> str:
    document = report.document()
    lines: list[str] = []
    for table in document.tables:
        lines += [f"### {table.title}", ""]
        lines.append("| " + " | ".join(_markdown_escape(c.header) for c in table.columns) + " |")
        align = {"left": ":---", "right": "---:", "center": ":---:"}
        lines.append("|" + "|".join(align[c.justify] for c in table.columns) + "|")
        for row in table.rows:
            lines.append("| " + " | ".join(_markdown_escape(cell_text(cell)) for cell in row) + " |")
        lines.append("")
        lines += [f"- {line}" for line in table.footer]
        if table.footer:
            lines.append("")
    lines += [f"> {note}" for note in document.notes]
    return "\n".join(lines).rstrip() + "\n"


def rich_renderables(report: Report) -> list[Any]:
    """Rich objects for the terminal: one Table per document table, then totals and notes."""
    from rich.table import Table as RichTable
    from rich.text import Text

    document = report.document()
    renderables: list[Any] = []
    for table in document.tables:
        # Text, not str: a title holds model names and paths, and rich would read `[/x]` or `:rocket:` in a str
        # as markup. Columns fold instead of cutting a cell with an ellipsis, so a narrow terminal never
        # shows a shortened number.
        rich_table = RichTable(title=Text(table.title), title_justify="left", header_style="bold", show_lines=False)
        for column in table.columns:
            rich_table.add_column(Text(column.header), justify=column.justify, overflow="fold")
        for row in table.rows:
            rich_table.add_row(*(Text(cell_text(cell), style=cell_style(cell) or "") for cell in row))
        renderables.append(rich_table)
        renderables += [Text(line) for line in table.footer]
    renderables += [Text(note, style="yellow") for note in document.notes]
    return renderables


def render_table(report: Report, width: int = 200) -> str:
    """The rich table as plain text (for files and tests)."""
    from rich.console import Console

    console = Console(file=io.StringIO(), width=width, color_system=None, force_terminal=False)
    for renderable in rich_renderables(report):
        console.print(renderable)
    return console.file.getvalue()  # type: ignore[attr-defined]


RENDERERS: dict[str, Callable[[Report], str]] = {
    "table": render_table,
    "json": render_json,
    "csv": render_csv,
    "markdown": render_markdown,
}


def render(report: Report, fmt: str) -> str:
    return RENDERERS[fmt](report)
