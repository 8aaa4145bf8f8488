"""Where each stage's centre-unit field lies in the input, read from the `rf` JSON contract (no torch, no drawing).

Both picture renderers (matplotlib in ``plot.py``, our own SVG in ``svg.py``) draw these boxes, so they agree.
Output unit ``u`` of a field (size r, stride S, padding P) sees input positions ``[-P + u S, -P + u S + r - 1]``
on each axis (Distill 2019); the centre unit is ``u = (o - 1) // 2`` of an output of ``o`` units, the unit the
gradient check and the ERF use.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from resnet_inspect.errors import BadInputError

# Distinct opaque colours, one per stage box (matplotlib's tab10); the image tests find the boxes by them.
BOX_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
               "#17becf")


@dataclass(frozen=True)
class FieldBox:
    """The input interval that one output unit sees, per spatial axis, in input pixels (ends inclusive).

    ``start`` may be negative and ``end`` past the input: that part of the field lies in the zero padding.
    """

    label: str  # the stage name, or several joined with " = " when they share one field
    start: tuple[float, ...]
    end: tuple[float, ...]
    size: tuple[float, ...]
    stride: tuple[float, ...]
    padding: tuple[float, ...]
    unit: tuple[int, ...]
    global_context: bool = False  # the unit also depends on the whole input (a gate or attention)
    union: bool = False  # the union of paths whose fields are not aligned

    def covered(self, input_size: Sequence[int]) -> tuple[tuple[float, float], ...]:
        """The part of the field inside the input: (first, last) pixel per axis."""
        return tuple((max(start, 0), min(end, size - 1))
                     for start, end, size in zip(self.start, self.end, input_size, strict=True))

    @property
    def geometry_text(self) -> str:
        """'size 13, stride 4, padding 6' (height x width when the axes differ)."""
        return f"size {_axes_text(self.size)}, stride {_axes_text(self.stride)}, padding {_axes_text(self.padding)}"


def _axes_text(values: Sequence[float]) -> str:
    texts = [f"{value:g}" for value in values]
    return texts[0] if len(set(texts)) == 1 else "x".join(texts)


def field_box(field: Mapping[str, Any], output_size: Sequence[int], label: str,
              unit: Sequence[int] | None = None, union: bool = False) -> FieldBox:
    """The box of ``unit`` (default: the centre unit) of a receptive-field object {size, stride, padding}."""
    size, stride, padding = field["size"], field["stride"], field["padding"]
    unit = tuple(unit) if unit is not None else tuple((count - 1) // 2 for count in output_size)
    start = tuple(-pad + position * step for pad, position, step in zip(padding, unit, stride, strict=True))
    end = tuple(first + extent - 1 for first, extent in zip(start, size, strict=True))
    return FieldBox(label, start, end, tuple(size), tuple(stride), tuple(padding), unit,
                    bool(field.get("global_context", False)), bool(field.get("union", union)))


def input_size(rf: Mapping[str, Any]) -> tuple[int, ...]:
    """The spatial size of the input (N, C, *spatial)."""
    return tuple(rf["input_shape"][2:])


def stage_boxes(rf: Mapping[str, Any]) -> tuple[FieldBox, ...]:
    """One box per distinct stage field, in stage order; stages with an undefined field are left out.

    Consecutive stages whose centre units see the same interval (the last stage and the encoder output, usually)
    share one box labelled with both names. The top-level ``union`` of an unaligned network marks the encoder
    output's field unless a stage says otherwise.
    """
    union = bool(rf.get("union", False))
    boxes: list[FieldBox] = []
    stages = rf.get("stages", [])
    for position, stage in enumerate(stages):
        if stage.get("size") is None:
            continue
        last = position == len(stages) - 1
        box = field_box(stage, stage["output_size"], stage["name"], union=union and last)
        previous = boxes[-1] if boxes else None
        if previous is not None and (previous.start, previous.end, previous.global_context) == (
                box.start, box.end, box.global_context):
            boxes[-1] = FieldBox(f"{previous.label} = {box.label}", previous.start, previous.end, previous.size,
                                 previous.stride, previous.padding, previous.unit, previous.global_context,
                                 previous.union or box.union)
            continue
        boxes.append(box)
    return tuple(boxes)


def undefined_stages(rf: Mapping[str, Any]) -> tuple[str, ...]:
    """'name: reason' for each stage without a field."""
    return tuple(f"{stage['name']}: {stage.get('reason') or 'undefined'}" for stage in rf.get("stages", [])
                 if stage.get("size") is None)


def drawable_axes(rf: Mapping[str, Any]) -> int:
    """1 or 2 spatial axes; a 3-D input (Conv3d nets) is refused with one line (exit 2)."""
    axes = len(input_size(rf))
    if axes not in (1, 2):
        raise BadInputError(f"the receptive-field picture draws 1-D and 2-D inputs; this input has {axes} "
                            "spatial axes (use --format json for the numbers)")
    return axes


def view_extent(boxes: Sequence[FieldBox], size: Sequence[int]) -> tuple[tuple[float, float], ...]:
    """The drawn range per axis, in pixel-edge coordinates: the input [0, n] and every box, plus a margin."""
    extent = []
    for axis, count in enumerate(size):
        low = min([0.0, *(box.start[axis] for box in boxes)])
        high = max([float(count), *(box.end[axis] + 1 for box in boxes)])
        margin = 0.04 * (high - low)
        extent.append((low - margin, high + margin))
    return tuple(extent)


__all__ = [
    "BOX_COLOURS", "FieldBox", "drawable_axes", "field_box", "input_size", "stage_boxes", "undefined_stages",
    "view_extent",
]
