"""A format-neutral view of a report: titled tables and notes. Renderers turn it into text."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Justify = Literal["left", "right", "center"]


@dataclass(frozen=True)
class Cell:
    """A table cell; ``style`` is a rich style name ("green", "bold red") that plain formats ignore."""

    text: str
    style: str | None = None
    data: int | float | str | None = None  # the exact value behind ``text``, for CSV ("25.56 M" -> 25557032)


@dataclass(frozen=True)
class Column:
    header: str
    justify: Justify = "left"
    unit: str | None = None  # of the cells' ``data`` when the text shows another ("bytes" behind "143.3 MiB")


@dataclass(frozen=True)
class Table:
    title: str
    columns: tuple[Column, ...]
    rows: tuple[tuple[Cell | str, ...], ...]
    footer: tuple[str, ...] = ()  # summary lines printed under the table (totals)


@dataclass(frozen=True)
class Document:
    tables: tuple[Table, ...]
    notes: tuple[str, ...] = field(default=())  # warnings and remarks printed after the tables


def cell_text(cell: Cell | str) -> str:
    return cell.text if isinstance(cell, Cell) else cell


def cell_style(cell: Cell | str) -> str | None:
    return cell.style if isinstance(cell, Cell) else None
