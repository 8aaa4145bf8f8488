"""The step's memory timeline as inline SVG written by our own code (no matplotlib), for the HTML report: live
bytes stacked by kind, one column per module stretch, the phases shaded, the peak marked and named."""

from __future__ import annotations

from collections.abc import Mapping
from html import escape
from typing import Any

from resnet_inspect.render.timeline_plot import KIND_COLOURS, KIND_LABELS, PHASE_SHADES

WIDTH, HEIGHT, LEFT, TOP, BOTTOM = 720, 300, 56, 22, 28
MIB = 2**20


def _columns(points: list[Mapping[str, Any]], kinds: list[str], scale: float, column: float) -> list[str]:
    """One rectangle per kind and point, stacked from the bottom (the stretch's highest moment)."""
    shapes = []
    for index, point in enumerate(points):
        base = 0.0
        for kind in kinds:
            size = point["bytes"].get(kind, 0) * scale
            if size > 0:
                y = TOP + HEIGHT - base - size
                shapes.append(f'<rect x="{LEFT + index * column:.2f}" y="{y:.2f}" width="{column:.2f}" '
                              f'height="{size:.2f}" fill="{KIND_COLOURS.get(kind, "#999")}"/>')
            base += size
    return shapes


def _phases(points: list[Mapping[str, Any]], column: float) -> list[str]:
    shapes, start = [], 0
    for index in range(1, len(points) + 1):
        if index == len(points) or points[index]["phase"] != points[start]["phase"]:
            phase = points[start]["phase"]
            x = LEFT + start * column
            shapes.append(f'<rect x="{x:.2f}" y="{TOP}" width="{(index - start) * column:.2f}" height="{HEIGHT}" '
                          f'fill="{PHASE_SHADES.get(phase, "#fff")}"/>'
                          f'<text x="{x + (index - start) * column / 2:.2f}" y="{TOP - 6}" '
                          f'text-anchor="middle" font-size="11">{escape(phase)}</text>')
            start = index
    return shapes


def timeline_svg(timeline: Mapping[str, Any]) -> str:
    """The ``memory_timeline`` JSON drawn as one SVG with its legend."""
    points = list(timeline["points"])
    kinds = [kind for kind in timeline["kinds"] if any(point["bytes"].get(kind, 0) for point in points)]
    peak_bytes = max(timeline["peak_bytes"], 1)
    scale, column = HEIGHT / (peak_bytes * 1.08), WIDTH / max(len(points), 1)
    peak_x = LEFT + (timeline["peak_index"] + 0.5) * column
    peak_y = TOP + HEIGHT - peak_bytes * scale
    label = f"peak {peak_bytes / MIB:,.1f} MiB in {timeline['peak']}"
    anchor = "end" if peak_x > LEFT + WIDTH / 2 else "start"
    ticks = [f'<text x="{LEFT - 4}" y="{TOP + HEIGHT - value * MIB * scale + 4:.2f}" text-anchor="end" '
             f'font-size="10">{value:,.0f}</text>' for value in _tick_values(peak_bytes / MIB)]
    legend = "".join(f'<tspan fill="{KIND_COLOURS.get(kind, "#999")}">■</tspan> {escape(KIND_LABELS.get(kind, kind))}'
                     "   " for kind in kinds)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {LEFT + WIDTH + 10} {TOP + HEIGHT + BOTTOM + 18}" '
        f'width="{LEFT + WIDTH + 10}" role="img" aria-label="{escape(label)}">'
        + "".join(_phases(points, column)) + "".join(_columns(points, kinds, scale, column)) + "".join(ticks)
        + f'<line x1="{peak_x:.2f}" y1="{TOP}" x2="{peak_x:.2f}" y2="{TOP + HEIGHT}" stroke="#222" '
        f'stroke-dasharray="4 3"/><text x="{peak_x + (-4 if anchor == "end" else 4):.2f}" y="{peak_y + 12:.2f}" '
        f'text-anchor="{anchor}" font-size="11">{escape(label)}</text>'
        f'<text x="{LEFT - 44}" y="{TOP + HEIGHT / 2}" font-size="10" transform="rotate(-90 {LEFT - 44} '
        f'{TOP + HEIGHT / 2})" text-anchor="middle">live MiB</text>'
        f'<text x="{LEFT}" y="{TOP + HEIGHT + 16}" font-size="10">{legend}</text>'
        f'<text x="{LEFT}" y="{TOP + HEIGHT + 32}" font-size="10">the step, module by module</text></svg>'
    )


def _tick_values(top_mib: float) -> list[float]:
    step = 10 ** max(0, len(str(int(top_mib))) - 1)
    while top_mib / step < 3 and step > 1:
        step /= 2
    return [step * index for index in range(int(top_mib // step) + 1)]


__all__ = ["timeline_svg"]
