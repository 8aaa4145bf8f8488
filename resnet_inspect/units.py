"""The one byte formatter: the same bytes read the same in every command, table, note and error message."""

from __future__ import annotations

BINARY_UNITS = ("B", "KiB", "MiB", "GiB")  # each 1024 times the one before


def bytes_text(count: float, decimals: int = 1) -> str:
    """The largest binary unit that keeps the figure at 1 or more: '512 B', '207.9 KiB', '143.3 MiB', '2.5 GiB'.

    ``decimals`` stays 1 except where a figure is set against a budget it may miss by less than a tenth (fit's
    peaks and budget), so that the unit a figure gets never depends on the command that prints it."""
    value = float(count)
    for unit in BINARY_UNITS[:-1]:
        if abs(value) < 1024:
            return f"{int(value)} B" if unit == "B" else f"{value:.{decimals}f} {unit}"
        value /= 1024
    return f"{value:.{decimals}f} {BINARY_UNITS[-1]}"


__all__ = ["BINARY_UNITS", "bytes_text"]
