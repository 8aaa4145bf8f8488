"""Small text forms shared by the reports' tables: shapes, (height, width) pairs, yes/no cells, byte counts."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

from resnet_inspect.names import shown
from resnet_inspect.render.document import Cell
from resnet_inspect.units import bytes_text as bytes_text  # the one byte formatter, beside the other text forms


def escape(text: str) -> str:
    """Text for HTML and SVG, shown as it is: without control sequences or bidirectional formatting
    (``names.shown``), then with ``& < > " '`` escaped."""
    return html.escape(shown(text))


def shape_text(shape: Sequence[int] | None) -> str:
    """'1x64x112x112'; '-' for no shape."""
    return "x".join(str(size) for size in shape) if shape else "-"


def pair_text(values: Sequence[Any] | None, float_format: str = "g") -> str:
    """'43' when both axes agree, '43x45' (height x width) otherwise, '-' when undefined."""
    if values is None:
        return "-"
    texts = [format(value, float_format) if isinstance(value, float) else str(value) for value in values]
    return texts[0] if len(set(texts)) == 1 else "x".join(texts)


MEASURED_MARK = "*"


def field_size_text(field: Any) -> str:
    """A receptive field's size as ``pair_text`` gives it, marked ``*`` when it was measured, not derived."""
    if field is None:
        return "-"
    text = pair_text(field.size)
    return text + MEASURED_MARK if field.method == "measured" else text


def measured_note(field: Any, where: str = "") -> str:
    """What the ``*`` of a measured field means, at which unit and input size, and why the rules ran out."""
    unit = ", ".join(map(str, field.unit))
    size = "x".join(map(str, field.input_size))
    subject = f"{where}: " if where else ""
    return (f"{MEASURED_MARK} {subject}measured, not analytic: the input-gradient support of output unit ({unit}) "
            f"at {size} in a linearised copy of the model (positive weights, float64); the rules ran out: "
            f"{field.reason}")


def yes_no(value: bool | None) -> Cell:
    """A green 'yes', a plain 'no', or '-' when unknown."""
    if value is None:
        return Cell("-")
    return Cell("yes", "green") if value else Cell("no")


