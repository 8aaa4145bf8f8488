"""Pictures as inline SVG written by our own code (no matplotlib): for the self-contained HTML report.

The receptive-field picture uses input pixels as its user units (``viewBox``), so a box's ``x``, ``y``, ``width``
and ``height`` are the field's first column, first row and size: the numbers of the arithmetic, scaled by the
browser. Strokes keep their width whatever the scale (``vector-effect``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from resnet_inspect.render.fields import BOX_COLOURS, FieldBox, drawable_axes, input_size, stage_boxes, view_extent
from resnet_inspect.render.text import escape

DISPLAY_WIDTH = 520  # CSS pixels the picture is drawn at


def _number(value: float) -> str:
    return f"{value:.4g}" if isinstance(value, float) and not value.is_integer() else str(int(value))


DEFS = (
    '<defs>'
    '<pattern id="rf-padding" width="6" height="6" patternUnits="userSpaceOnUse" '
    'patternTransform="scale({unit})"><rect width="6" height="6" fill="#ececec"/>'
    '<circle cx="3" cy="3" r="0.8" fill="#c8c8c8"/></pattern>'
    '<pattern id="rf-hatch" width="6" height="6" patternUnits="userSpaceOnUse" '
    'patternTransform="scale({unit}) rotate(45)"><line x1="0" y1="0" x2="0" y2="6" stroke="#555" '
    'stroke-width="1"/></pattern>'
    '</defs>'
)


def _box_attributes(box: FieldBox) -> str:
    if box.global_context:
        return ' stroke-dasharray="6 3" fill="url(#rf-hatch)" fill-opacity="0.35"'
    if box.union:
        return ' stroke-dasharray="1.5 3" fill="none"'
    return ' fill="none"'


def _kind(box: FieldBox) -> str:
    return "global-context" if box.global_context else "union" if box.union else "local"


def _fields_2d(rf: Mapping[str, Any], boxes: Sequence[FieldBox]) -> str:
    size = input_size(rf)
    (top, bottom), (left, right) = view_extent(boxes, size)
    width, height = right - left, bottom - top
    unit = width / DISPLAY_WIDTH  # one CSS pixel in input pixels
    font = 11 * unit
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="rf-picture" role="img" '
        f'viewBox="{_number(left)} {_number(top)} {_number(width)} {_number(height)}" '
        f'width="{DISPLAY_WIDTH}" height="{round(DISPLAY_WIDTH * height / width)}" '
        f'aria-label="receptive fields of {escape(str(rf["model"]))} to scale">',
        DEFS.format(unit=_number(unit)),
        f'<rect class="padding" x="{_number(left)}" y="{_number(top)}" width="{_number(width)}" '
        f'height="{_number(height)}" fill="url(#rf-padding)"><title>zero padding</title></rect>',
        f'<rect class="input" x="0" y="0" width="{size[1]}" height="{size[0]}" fill="#fff" stroke="#333" '
        f'stroke-width="1.2" vector-effect="non-scaling-stroke"><title>input {size[0]}x{size[1]}</title></rect>',
    ]
    for position, box in enumerate(boxes):
        colour = BOX_COLOURS[position % len(BOX_COLOURS)]
        (first_row, last_row), (first_column, last_column) = box.covered(size)
        label = escape(f"{box.label}: {box.geometry_text}")
        parts.append(f'<g class="field {_kind(box)}" data-stage="{escape(box.label)}">')
        parts.append(f"<title>{label}; centre unit {tuple(box.unit)}</title>")
        if first_row <= last_row and first_column <= last_column:
            parts.append(f'<rect class="covered" x="{_number(first_column)}" y="{_number(first_row)}" '
                         f'width="{_number(last_column - first_column + 1)}" '
                         f'height="{_number(last_row - first_row + 1)}" fill="{colour}" fill-opacity="0.1"/>')
        parts.append(
            f'<rect class="box" x="{_number(box.start[1])}" y="{_number(box.start[0])}" '
            f'width="{_number(box.end[1] - box.start[1] + 1)}" height="{_number(box.end[0] - box.start[0] + 1)}" '
            f'stroke="{colour}" stroke-width="2" vector-effect="non-scaling-stroke"{_box_attributes(box)}/>'
        )
        if position % 2:  # alternate corners, so that boxes sharing a corner do not stack their labels
            x, y, anchor = box.end[1] + 1 - 4 * unit, box.end[0] + 1 - 4 * unit, "end"
        else:
            x, y, anchor = box.start[1] + 4 * unit, box.start[0] + font + 2 * unit, "start"
        parts.append(f'<text x="{_number(x)}" y="{_number(y)}" text-anchor="{anchor}" font-size="{_number(font)}" '
                     f'fill="{colour}">{escape(box.label)}</text>')
        parts.append("</g>")
    parts.append("</svg>")
    return "".join(parts)


def _fields_1d(rf: Mapping[str, Any], boxes: Sequence[FieldBox]) -> str:
    length = input_size(rf)[0]
    ((left, right),) = view_extent(boxes, (length,))
    width = right - left
    unit = width / DISPLAY_WIDTH
    row = 24 * unit
    height = row * (len(boxes) + 2)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="rf-picture" role="img" '
        f'viewBox="{_number(left)} 0 {_number(width)} {_number(height)}" width="{DISPLAY_WIDTH}" '
        f'height="{round(DISPLAY_WIDTH * height / width)}" aria-label="receptive fields to scale">',
        DEFS.format(unit=_number(unit)),
        f'<rect class="padding" x="{_number(left)}" y="0" width="{_number(width)}" height="{_number(height)}" '
        f'fill="url(#rf-padding)"/>',
        f'<rect class="input" x="0" y="{_number(row * 0.3)}" width="{length}" height="{_number(row * 0.4)}" '
        f'fill="#333"><title>input {length}</title></rect>',
    ]
    for position, box in enumerate(boxes, start=1):
        colour = BOX_COLOURS[(position - 1) % len(BOX_COLOURS)]
        parts.append(f'<g class="field {_kind(box)}" data-stage="{escape(box.label)}">'
                     f"<title>{escape(box.label)}: {escape(box.geometry_text)}</title>"
                     f'<rect class="box" x="{_number(box.start[0])}" y="{_number(row * position + row * 0.3)}" '
                     f'width="{_number(box.end[0] - box.start[0] + 1)}" height="{_number(row * 0.4)}" '
                     f'stroke="{colour}" stroke-width="2" vector-effect="non-scaling-stroke"'
                     f'{_box_attributes(box).replace("none", colour)}/>'
                     f'<text x="{_number(box.start[0])}" y="{_number(row * position + row * 0.25)}" '
                     f'font-size="{_number(11 * unit)}" fill="{colour}">{escape(box.label)}</text></g>')
    parts.append("</svg>")
    return "".join(parts)


def fields_svg(rf: Mapping[str, Any]) -> str:
    """The `rf` JSON's stages as nested boxes over the input, to scale; '' when no stage has a field."""
    axes = drawable_axes(rf)
    boxes = stage_boxes(rf)
    if not boxes:
        return ""
    return _fields_1d(rf, boxes) if axes == 1 else _fields_2d(rf, boxes)


def fields_legend(rf: Mapping[str, Any]) -> list[tuple[str, str, str, str]]:
    """(colour, label, geometry, kind) per drawn box, for a legend beside the picture."""
    return [(BOX_COLOURS[position % len(BOX_COLOURS)], box.label, box.geometry_text, _kind(box))
            for position, box in enumerate(stage_boxes(rf))]


def _count_text(count: int) -> str:
    """'118.0 M', '55.3 k', '32': a MAC count in SI units."""
    for scale, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return str(count)


def bar_chart_svg(stages: Sequence[tuple[str, int, int]]) -> str:
    """Horizontal bars per stage: MACs and parameters, each as a share of its total, with the values written."""
    if not stages:
        return ""
    total_macs = sum(macs for _, macs, _ in stages) or 1
    total_params = sum(params for _, _, params in stages) or 1
    label_width, bar_width, row_height = 130, 300, 34
    width, height = label_width + bar_width + 150, row_height * len(stages) + 30
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="stage-chart" role="img" width="{width}" '
             f'height="{height}" viewBox="0 0 {width} {height}" aria-label="MACs and parameters per stage">',
             f'<rect x="{label_width}" y="4" width="10" height="10" fill="#4c72b0"/>'
             f'<text x="{label_width + 14}" y="13" font-size="11">MACs</text>'
             f'<rect x="{label_width + 70}" y="4" width="10" height="10" fill="#dd8452"/>'
             f'<text x="{label_width + 84}" y="13" font-size="11">parameters</text>']
    for position, (name, macs, params) in enumerate(stages):
        y = 24 + position * row_height
        mac_length, param_length = bar_width * macs / total_macs, bar_width * params / total_params
        parts.append(
            f'<g class="stage-bar" data-stage="{escape(name)}" data-macs="{macs}" data-params="{params}">'
            f"<title>{escape(name)}: {macs:,} MACs ({macs / total_macs:.1%}), {params:,} parameters "
            f"({params / total_params:.1%})</title>"
            f'<text x="{label_width - 6}" y="{y + 16}" font-size="11" text-anchor="end">{escape(name)}</text>'
            f'<rect x="{label_width}" y="{y + 2}" width="{mac_length:.1f}" height="12" fill="#4c72b0"/>'
            f'<text x="{label_width + mac_length + 4:.1f}" y="{y + 12}" font-size="10">{_count_text(macs)}</text>'
            f'<rect x="{label_width}" y="{y + 16}" width="{param_length:.1f}" height="12" fill="#dd8452"/>'
            f'<text x="{label_width + param_length + 4:.1f}" y="{y + 26}" font-size="10">{params:,}</text></g>'
        )
    parts.append("</svg>")
    return "".join(parts)


def saved_chart_svg(stages: Sequence[tuple[str, int, int]]) -> str:
    """Horizontal bars per stage: bytes saved for the backward (share of the total), and MiB saved per GMAC that
    recomputing the stage's forward would cost."""
    if not stages:
        return ""
    total_saved = sum(saved for _, saved, _ in stages) or 1
    label_width, bar_width, row_height = 130, 300, 22
    width, height = label_width + bar_width + 260, row_height * len(stages) + 30
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="saved-chart" role="img" width="{width}" '
             f'height="{height}" viewBox="0 0 {width} {height}" aria-label="bytes saved for backward per stage">',
             f'<rect x="{label_width}" y="4" width="10" height="10" fill="#55a868"/>'
             f'<text x="{label_width + 14}" y="13" font-size="11">saved for backward (MiB, share, MiB per GMAC '
             "recomputed)</text>"]
    for position, (name, saved, macs) in enumerate(stages):
        y = 24 + position * row_height
        length = bar_width * saved / total_saved
        per_gmac = f"{saved / 2**20 / (macs / 1e9):,.1f} MiB/GMAC" if macs else "no MACs"
        parts.append(
            f'<g class="saved-bar" data-stage="{escape(name)}" data-saved-bytes="{saved}" data-macs="{macs}">'
            f"<title>{escape(name)}: {saved:,} bytes saved for backward ({saved / total_saved:.1%}); recomputing it "
            f"costs {macs:,} MACs</title>"
            f'<text x="{label_width - 6}" y="{y + 12}" font-size="11" text-anchor="end">{escape(name)}</text>'
            f'<rect x="{label_width}" y="{y + 2}" width="{length:.1f}" height="14" fill="#55a868"/>'
            f'<text x="{label_width + length + 4:.1f}" y="{y + 13}" font-size="10">{saved / 2**20:,.1f} MiB '
            f"({saved / total_saved:.0%}), {per_gmac}</text></g>"
        )
    parts.append("</svg>")
    return "".join(parts)


__all__ = ["bar_chart_svg", "fields_legend", "fields_svg", "saved_chart_svg"]
