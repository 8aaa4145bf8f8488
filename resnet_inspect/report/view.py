"""How a report shows itself in Python: the table as its repr, rich and Jupyter forms, JSON, data frames.

``ReportView`` is a mixin for every report class (they keep ``to_dict()`` and ``document()``); it adds nothing
to what the report holds, only ways to read it. ``SummaryView`` adds the queries of the summary report.

pandas is imported inside ``to_dataframe`` alone: it is optional, and its import takes more than a second.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from rich.console import Group

from resnet_inspect.render import render_csv, render_json, render_markdown, render_table, rich_renderables
from resnet_inspect.render.document import Cell, Column, Document, Table, cell_style, cell_text
from resnet_inspect.render.files import write_output
from resnet_inspect.render.text import escape

Row = TypeVar("Row")


@dataclass(frozen=True)
class TableColumn(Generic[Row]):
    """A column as torchinfo declares one: its header beside the rule that fills its cell from a row, so that an
    option adding a column adds both at once."""

    column: Column
    cell: Callable[[Row], Cell | str]


def column_table(title: str, columns: Sequence[TableColumn[Row]], rows: Iterable[Row],
                 footer: tuple[str, ...] = ()) -> Table:
    """The table of ``rows`` with one cell per column, in the columns' order."""
    return Table(title, tuple(column.column for column in columns),
                 tuple(tuple(column.cell(row) for column in columns) for row in rows), footer)

# Rich style words -> CSS, for the cells the tables colour (check marks, best values).
_CSS = {"green": "color: green", "red": "color: #c00", "yellow": "color: #a60", "bold": "font-weight: bold"}


def _css(style: str | None) -> str:
    if not style:
        return ""
    return "; ".join(_CSS[word] for word in style.split() if word in _CSS)


def _html_cell(tag: str, cell: Cell | str, justify: str) -> str:
    css = "; ".join(part for part in (f"text-align: {justify}", "white-space: pre", _css(cell_style(cell))) if part)
    return f'<{tag} style="{css}">{escape(cell_text(cell))}</{tag}>'


def document_html(document: Document) -> str:
    """Each table of ``document`` as an HTML ``<table>``: title as caption, footer and notes in ``<tfoot>``."""
    parts = []
    for position, table in enumerate(document.tables):
        span = len(table.columns)
        lines = [*table.footer, *(document.notes if position == len(document.tables) - 1 else ())]
        header = "".join(_html_cell("th", column.header, column.justify) for column in table.columns)
        body = "".join(
            "<tr>" + "".join(_html_cell("td", cell, column.justify) for cell, column in zip(row, table.columns,
                                                                                               strict=True)) + "</tr>"
            for row in table.rows
        )
        foot = "".join(f'<tr><td colspan="{span}" style="text-align: left">{escape(line)}</td></tr>'
                       for line in lines)
        parts.append(
            f'<table class="resnet-inspect"><caption style="text-align: left">{escape(table.title)}</caption>'
            f"<thead><tr>{header}</tr></thead><tbody>{body}</tbody>"
            + (f"<tfoot>{foot}</tfoot>" if foot else "") + "</table>"
        )
    return "\n".join(parts)


def written(text: str, path: str | os.PathLike[str] | None) -> str:
    """``text``, also written to ``path`` when one is given, exactly as the command line's ``-o`` writes it: whole
    or not at all, through links, never replacing a device (see ``render.files.write_output``)."""
    if path is not None:
        write_output(path if path == "-" else Path(path), text)  # "-" is standard output, as for -o
    return text


class ReportView:
    """The table as ``repr()`` and ``str()``, ``rich.print`` and Jupyter forms, JSON and a data frame.

    A report class using it defines ``to_dict()`` and ``document()``, and is a dataclass with ``repr=False``
    (a dataclass otherwise writes its own ``__repr__`` over this one).
    """

    TEXT_WIDTH = 240  # wide tables stay on one line per row; rich does not pad narrower ones

    def to_dict(self) -> Any:
        raise NotImplementedError

    def document(self) -> Document:
        raise NotImplementedError

    def __repr__(self) -> str:
        return "\n".join(line.rstrip() for line in render_table(self, width=self.TEXT_WIDTH).splitlines())

    def __str__(self) -> str:
        return self.__repr__()

    def __rich__(self) -> Any:
        return Group(*rich_renderables(self))

    def _repr_html_(self) -> str:
        return document_html(self.document())

    def to_json(self, path: str | os.PathLike[str] | None = None) -> str:
        """The JSON of ``--format json``; also written to ``path`` as ``-o`` writes it, when one is given."""
        return written(render_json(self), path)

    def to_csv(self, path: str | os.PathLike[str] | None = None) -> str:
        """The CSV of ``--format csv``; also written to ``path`` as ``-o`` writes it, when one is given."""
        return written(render_csv(self), path)

    def to_markdown(self, path: str | os.PathLike[str] | None = None) -> str:
        """The Markdown of ``--format markdown``; also written to ``path`` as ``-o`` writes it, when one is given."""
        return written(render_markdown(self), path)

    def records(self) -> list[dict[str, Any]]:
        """The report's rows as JSON objects: its layers, stages or results, or the whole report as one row."""
        data = self.to_dict()
        if isinstance(data, list):
            return data
        for key in ("layers", "stages", "results"):
            if isinstance(data.get(key), list):
                return data[key]
        return [data]

    def to_dataframe(self) -> Any:
        """``records()`` as a pandas DataFrame, nested objects flattened (``arithmetic.relation``); needs pandas."""
        try:
            import pandas  # optional
        except ImportError:
            raise ImportError("to_dataframe() needs pandas, which resnet-inspect does not install: "
                              "pip install pandas") from None
        return pandas.json_normalize(self.records())


class SummaryView(ReportView):
    """Queries of the summary report: totals, one layer, modules at a depth, stages, receptive field."""

    def total(self, key: str) -> Any:
        """One total of the report, by its JSON name: ``total("macs")``, ``total("params")``, ..."""
        totals = self.to_dict()["totals"]
        if key not in totals:
            raise KeyError(f"no total named {key!r}; the totals are {', '.join(totals)}")
        return totals[key]

    def layer(self, name: str) -> dict[str, Any]:
        """One layer's record (its first call), as in the JSON ``layers`` list: ``layer("encoder.layers.0")``."""
        layers = self.to_dict()["layers"]
        for entry in layers:
            if entry["name"] == name:
                return entry
        close = difflib.get_close_matches(name, [entry["name"] for entry in layers], n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise KeyError(f"no layer named {name!r}{hint}")

    def by_module(self, depth: int = 1) -> dict[str, dict[str, Any]]:
        """Modules down to ``depth``: name -> type, depth, params, MACs, FLOPs, activation bytes.

        MACs include the module's children; a module called several times adds up its calls.
        """
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        modules: dict[str, dict[str, Any]] = {}
        for entry in self.to_dict()["layers"]:
            if entry["depth"] > depth:
                continue
            row = modules.get(entry["name"])
            if row is None:
                modules[entry["name"]] = {key: entry[key] for key in
                                          ("type", "depth", "params", "macs", "flops", "activation_bytes")}
                continue
            for key in ("macs", "flops", "activation_bytes"):  # parameters are shared between the calls
                row[key] += entry[key]
        return modules

    @property
    def stages(self) -> list[dict[str, Any]]:
        """The stem, each stage and the head: residual blocks, output shape, receptive field, MACs and share."""
        total_macs = self.counts.macs  # type: ignore[attr-defined]
        return [stage.to_dict(total_macs) for stage in self.stage_rows]  # type: ignore[attr-defined]

    @property
    def receptive_field(self) -> dict[str, Any] | None:
        """The receptive field at the encoder output (size, stride, padding), None when undefined."""
        return self.to_dict()["receptive_field"]

    def records(self) -> list[dict[str, Any]]:
        return self.to_dict()["layers"]
