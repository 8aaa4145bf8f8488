"""Pictures with matplotlib (the optional extra `[plot]`): receptive fields to scale, the ERF, compare charts.

matplotlib is imported inside the functions, and figures are made with ``matplotlib.figure.Figure`` (no pyplot,
no global state, no display needed). Every picture is returned as bytes for one writer to put on disk.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from resnet_inspect.errors import BadInputError
from resnet_inspect.render.fields import (
    BOX_COLOURS,
    FieldBox,
    drawable_axes,
    field_box,
    input_size,
    stage_boxes,
    undefined_stages,
    view_extent,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

PLOT_FORMATS = ("png", "svg", "pdf")
INSTALL_HINT = "pip install 'resnet-inspect[plot]'"
DPI = 100
INPUT_COLOUR = "#333333"
PADDING_COLOUR = "#ececec"
PADDING_HATCH_COLOUR = "#c8c8c8"
ERF_LEVEL_STYLES = (("r50", "#00d5ff", "-"), ("r90", "#2fbf4f", "--"), ("r99", "#1e6bff", ":"))


def require_matplotlib() -> None:
    """Fail with one line saying how to install the extra when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise BadInputError(f"pictures need matplotlib: {INSTALL_HINT}") from None


def plot_format(path: Path) -> str:
    """'png', 'svg' or 'pdf' from the file name, or one line naming the choices."""
    suffix = path.suffix.lower().lstrip(".")
    if suffix not in PLOT_FORMATS:
        raise BadInputError(f"cannot draw {path}: the picture's name must end in .png, .svg or .pdf")
    return suffix


def _plain_text(build: Callable[..., Figure]) -> Callable[..., Figure]:
    """Build a figure whose every text is drawn as it is: a model name such as ``$\\alpha$`` or ``cost$\\frac{$``
    reaches no math-text parser (matplotlib reads ``$...$`` as TeX when a text is made)."""

    @functools.wraps(build)
    def plain(*args: Any, **kwargs: Any) -> Figure:
        from matplotlib import rc_context

        with rc_context({"text.parse_math": False}):
            return build(*args, **kwargs)

    return plain


def figure_bytes(figure: Figure, fmt: str) -> bytes:
    """The figure as PNG, SVG or PDF bytes; metadata without dates, so the same picture gives the same bytes."""
    metadata: dict[str, Any] = {"png": {"Software": None}, "svg": {"Date": None},
                                "pdf": {"CreationDate": None, "ModDate": None}}[fmt]
    from matplotlib import rc_context

    buffer = io.BytesIO()
    with rc_context({"svg.fonttype": "none", "svg.hashsalt": "resnet-inspect"}):  # SVG text stays text
        figure.savefig(buffer, format=fmt, dpi=DPI, metadata=metadata, bbox_inches="tight", pad_inches=0.15)
    return buffer.getvalue()


# ------------------------------------------------------------------------------------------ receptive fields


def _box_style(box: FieldBox) -> dict[str, Any]:
    if box.global_context:
        return {"linestyle": "--", "hatch": "//"}
    if box.union:
        return {"linestyle": ":"}
    return {"linestyle": "-"}


def _rectangle(box: FieldBox, **style: Any) -> Any:
    """A box in pixel-edge coordinates: pixel (row, column) spans [column, column + 1] x [row, row + 1]."""
    from matplotlib.patches import Rectangle

    return Rectangle((box.start[1], box.start[0]), box.end[1] - box.start[1] + 1, box.end[0] - box.start[0] + 1,
                     **style)


def _padding_background(axes: Axes, extent: Sequence[tuple[float, float]], size: Sequence[int]) -> None:
    from matplotlib.patches import Rectangle

    (top, bottom), (left, right) = extent
    axes.add_patch(Rectangle((left, top), right - left, bottom - top, facecolor=PADDING_COLOUR,
                             edgecolor=PADDING_HATCH_COLOUR, linewidth=0, hatch="..", zorder=0, label="zero padding"))
    axes.add_patch(Rectangle((0, 0), size[1], size[0], facecolor="white", edgecolor="none", zorder=1))
    # the outline above the fields' tints (zorder 2), below their boxes (3 and up); unsnapped, so it lies exactly
    # on the pixel edges 0 and n like the boxes
    axes.add_patch(Rectangle((0, 0), size[1], size[0], fill=False, edgecolor=INPUT_COLOUR, linewidth=1.2,
                             antialiased=False, snap=False, zorder=2.5, gid="input",
                             label=f"input {size[0]}x{size[1]}"))
    axes.set_xlim(left, right)
    axes.set_ylim(bottom, top)  # row 0 at the top, as in an image
    axes.set_aspect("equal")
    for spine in axes.spines.values():
        spine.set_visible(False)
    axes.set_xlabel("input column (px)")
    axes.set_ylabel("input row (px)")


def _draw_box(axes: Axes, box: FieldBox, colour: str, layer: int, size: Sequence[int], gid: str) -> None:
    """The field's outline (into the padding where it spills over) and a tint on the part inside the input.

    ``layer`` orders the outlines: inner (earlier) fields go on top, so an edge shared with a later field shows.
    """
    from matplotlib.patches import Rectangle

    (top, bottom), (left, right) = box.covered(size)
    if top <= bottom and left <= right:
        axes.add_patch(Rectangle((left, top), right - left + 1, bottom - top + 1, facecolor=colour, alpha=0.10,
                                 edgecolor="none", zorder=2))
    style = _box_style(box)
    axes.add_patch(_rectangle(box, fill=False, edgecolor=colour, linewidth=1.5, antialiased=False, snap=False,
                              zorder=3 + layer,
                              gid=gid, label=f"{box.label}: {box.geometry_text}", **style))
    inset = 0.012 * (axes.get_xlim()[1] - axes.get_xlim()[0])
    if layer % 2:  # alternate corners, so that boxes sharing a corner do not stack their labels
        axes.text(box.start[1] + inset, box.start[0] + inset, box.label, color=colour, fontsize=7, va="top",
                  ha="left", zorder=20, clip_on=True)
    else:
        axes.text(box.end[1] + 1 - inset, box.end[0] + 1 - inset, box.label, color=colour, fontsize=7,
                  va="bottom", ha="right", zorder=20, clip_on=True)


def _legend_extras(boxes: Sequence[FieldBox]) -> list[Any]:
    from matplotlib.patches import Patch

    extras = []
    if any(box.global_context for box in boxes):
        extras.append(Patch(fill=False, hatch="//", linestyle="--", edgecolor="black",
                            label="hatched, dashed: also sees the whole input (global context)"))
    if any(box.union for box in boxes):
        extras.append(Patch(fill=False, linestyle=":", edgecolor="black",
                            label="dotted: union of unaligned paths' fields"))
    return extras


def _fields_panel_2d(axes: Axes, rf: Mapping[str, Any], boxes: Sequence[FieldBox]) -> None:
    size = input_size(rf)
    _padding_background(axes, view_extent(boxes, size), size)
    for position, box in enumerate(boxes):
        _draw_box(axes, box, BOX_COLOURS[position % len(BOX_COLOURS)], len(boxes) - position, size,
                  f"field-{position}")
    handles, _ = axes.get_legend_handles_labels()
    axes.legend(handles=handles + _legend_extras(boxes), loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=7,
                frameon=False, title="centre unit's field per stage", title_fontsize=8)
    axes.set_title(f"Receptive fields of {rf['model']}, to scale", fontsize=10)


def _fields_panel_1d(axes: Axes, rf: Mapping[str, Any], boxes: Sequence[FieldBox]) -> None:
    """1-D nets: the input as a bar, each stage's interval on its own line below it."""
    length = input_size(rf)[0]
    ((low, high),) = view_extent(boxes, (length,))
    axes.axvspan(low, 0, color=PADDING_COLOUR, zorder=0)
    axes.axvspan(length, high, color=PADDING_COLOUR, zorder=0, label="zero padding")
    axes.plot([0, length], [0, 0], color=INPUT_COLOUR, linewidth=6, solid_capstyle="butt", label=f"input {length}")
    for position, box in enumerate(boxes, start=1):
        colour = BOX_COLOURS[(position - 1) % len(BOX_COLOURS)]
        style = _box_style(box)
        axes.plot([box.start[0], box.end[0] + 1], [position, position], color=colour, linewidth=4,
                  linestyle=style["linestyle"], solid_capstyle="butt", label=f"{box.label}: {box.geometry_text}")
        axes.text(box.start[0], position - 0.25, box.label, color=colour, fontsize=7)
    axes.set_xlim(low, high)
    axes.set_ylim(len(boxes) + 1, -1)
    axes.set_yticks([])
    axes.set_xlabel("input position (px)")
    handles, _ = axes.get_legend_handles_labels()
    axes.legend(handles=handles + _legend_extras(boxes), loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=7,
                frameon=False)
    axes.set_title(f"Receptive fields of {rf['model']}, to scale", fontsize=10)


def _erf_panel(figure: Figure, axes: Axes, rf: Mapping[str, Any], mass: Sequence[Sequence[float]]) -> None:
    """The gradient mass on a colour scale, the r50/r90/r99 squares and the theoretical field on top."""
    from matplotlib.colors import PowerNorm
    from matplotlib.patches import Rectangle

    erf = rf["erf"]
    height, width = len(mass), len(mass[0])
    theoretical = None
    if rf.get("output") is not None and rf.get("stages"):
        theoretical = field_box(rf["output"], rf["stages"][-1]["output_size"], "theoretical field", unit=erf["unit"],
                                union=bool(rf.get("union", False)))
    boxes = [theoretical] if theoretical is not None else []
    _padding_background(axes, view_extent(boxes, (height, width)), (height, width))
    image = axes.imshow(mass, cmap="magma", norm=PowerNorm(0.5), extent=(0, width, height, 0), zorder=2,
                        interpolation="nearest")
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04, label="share of the gradient mass (sqrt scale)")
    centre_row, centre_column = erf["centre"]
    for name, colour, linestyle in ERF_LEVEL_STYLES:
        radius = erf[name]
        if radius is None:  # the input gradient is zero everywhere: no square holds any share of nothing
            continue
        # the pixels within Chebyshev distance r of the centre: edges half a pixel outside their centres
        axes.add_patch(Rectangle((centre_column - radius, centre_row - radius), 2 * radius + 1, 2 * radius + 1,
                                 fill=False, edgecolor=colour, linestyle=linestyle, linewidth=1.6, zorder=4,
                                 label=f"{name} = {radius:g} px"))
    if theoretical is not None:
        axes.add_patch(_rectangle(theoretical, fill=False, edgecolor=BOX_COLOURS[0], linewidth=1.5, zorder=5,
                                  label=f"theoretical field: {theoretical.geometry_text}", **_box_style(theoretical)))
    axes.legend(loc="upper left", bbox_to_anchor=(0.0, -0.12), fontsize=7, frameon=False, ncol=2)
    axes.set_title(f"Effective receptive field (Luo et al. 2016), {erf['samples']} samples, "
                   f"weights {erf['weights']}", fontsize=9)


@_plain_text
def rf_figure(rf: Mapping[str, Any], mass: Sequence[Sequence[float]] | None = None) -> Figure:
    """The input to scale with each stage's centre-unit field as nested boxes; beside it the ERF when given.

    ``rf`` is the `rf` report's JSON (``RfReport.to_dict()``); ``mass`` the ERF's per-pixel mass map.
    """
    from matplotlib.figure import Figure

    axes_count = drawable_axes(rf)
    boxes = stage_boxes(rf)
    if not boxes:
        reasons = "; ".join(undefined_stages(rf)) or "no stage"
        raise BadInputError(f"no receptive field to draw: {reasons}")
    with_erf = mass is not None and rf.get("erf") is not None and axes_count == 2
    figure = Figure(figsize=(15.5 if with_erf else 9.5, 6.5 if axes_count == 2 else 3.5), layout="constrained")
    panels = figure.subplots(1, 2 if with_erf else 1, squeeze=False)[0]
    if axes_count == 1:
        _fields_panel_1d(panels[0], rf, boxes)
    else:
        _fields_panel_2d(panels[0], rf, boxes)
    if with_erf and mass is not None:
        _erf_panel(figure, panels[1], rf, mass)
    return figure


def rf_picture(report: Any, fmt: str) -> bytes:
    """The `rf` report's picture as ``fmt`` bytes (the ERF panel too when the report measured it)."""
    erf = getattr(report, "erf", None)
    return figure_bytes(rf_figure(report.to_dict(), erf.mass if erf is not None else None), fmt)


# ------------------------------------------------------------------------------------------------- compare


COMPARE_PANELS = (
    ("params", "parameters (M)", 1e-6),
    ("macs", "MACs (G)", 1e-9),
    ("activation_bytes", "activation memory (MiB)", 1 / 2**20),
    ("receptive_field", "receptive field at the encoder output (px)", 1.0),
)


def _panel_value(row: Mapping[str, Any], key: str, scale: float) -> float | None:
    if key == "receptive_field":
        field = row.get("receptive_field")
        return float(max(field["size"])) if field else None
    value = row.get(key)
    return None if value is None else value * scale


@_plain_text
def compare_figure(rows: Sequence[Mapping[str, Any]]) -> Figure:
    """Parameters, MACs, activation memory and receptive field, one panel each, against depth.

    With several input sizes the x axis is the input size instead, one line per model. ``rows`` is the
    `compare` report's JSON (``CompareReport.to_dict()``).
    """
    from matplotlib.figure import Figure

    if not rows:
        raise BadInputError("nothing to draw: the comparison has no rows")
    models = list(dict.fromkeys(row["model"] for row in rows))
    by_size = len(rows) > len(models)  # some model at several input sizes
    figure = Figure(figsize=(11, 8), layout="constrained")
    panels = figure.subplots(2, 2).flatten()
    for axes, (key, label, scale) in zip(panels, COMPARE_PANELS, strict=True):
        for position, model in enumerate(models):
            points = [(row, _panel_value(row, key, scale)) for row in rows if row["model"] == model]
            points = [(row, value) for row, value in points if value is not None]
            if not points:
                continue
            colour = BOX_COLOURS[position % len(BOX_COLOURS)]
            if by_size:
                xs = [max(row["input_shape"][2:]) for row, _ in points]
                axes.plot(xs, [value for _, value in points], marker="o", color=colour, label=model)
            else:
                row, value = points[0]
                axes.plot([row["depth"]], [value], marker="o", color=colour, linestyle="none", label=model)
                axes.annotate(model, (row["depth"], value), textcoords="offset points", xytext=(4, 4), fontsize=7)
        if not by_size:  # a line through the models in order of depth shows the trend
            ordered = sorted((row["depth"], _panel_value(row, key, scale)) for row in rows
                             if _panel_value(row, key, scale) is not None)
            axes.plot([depth for depth, _ in ordered], [value for _, value in ordered], color="#999999",
                      linewidth=0.8, zorder=0)
        axes.set_xlabel("input size (px, larger side)" if by_size else "depth (weighted layers)")
        axes.set_ylabel(label)
        axes.grid(True, linewidth=0.3)
    panels[0].legend(fontsize=7, frameon=False)
    against = "input size" if by_size else "depth"
    figure.suptitle(f"{len(models)} model(s) against {against}")
    return figure


def compare_picture(report: Any, fmt: str) -> bytes:
    """The `compare` report's chart as ``fmt`` bytes."""
    return figure_bytes(compare_figure(report.to_dict()), fmt)


__all__ = [
    "INSTALL_HINT",
    "PLOT_FORMATS",
    "compare_figure",
    "compare_picture",
    "figure_bytes",
    "plot_format",
    "require_matplotlib",
    "rf_figure",
    "rf_picture",
]
