"""Padding a module runs beyond what it declares: a ``Conv2d`` subclass that pads in its own forward.

``verify`` checks what a module runs (its ``F.pad`` and its convolution), so timm's ``Conv2dSame`` passes. A user
checking padding arithmetic must still see where that differs from the padding the module declares: the padding
run on each axis is the convolution's own plus every explicit pad inside the module on the way to it. When the
result is TensorFlow's "same" (o = ceil(i / s)), the padding depends on the input size, so the amount on each
side is given at this size. Pure Python.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from resnet_inspect.analysis.counting import enclosing_records
from resnet_inspect.analysis.receptive_field import ancestors
from resnet_inspect.records import Capture, LayerRecord, OpKind, OpNode, Sizes

AXIS_NAMES = {1: ("length",), 2: ("height", "width"), 3: ("depth", "height", "width")}

Sides = tuple[tuple[int, int], ...]  # (before, after) per spatial axis


def _sides_text(sides: Sides) -> str:
    """'1' (every side), '0+1' (before+after, every axis), or one of those per axis joined by 'x'."""
    texts = [str(before) if before == after else f"{before}+{after}" for before, after in sides]
    return texts[0] if len(set(texts)) == 1 else "x".join(texts)


@dataclass(frozen=True)
class PaddingRun:
    """A module whose forward runs other padding than it declares, and the windowed operation that runs it."""

    module: str
    type: str
    record: int  # the module call's LayerRecord index (the summary's row)
    node: int  # the convolution or pooling it runs (verify's row)
    declared: Sides
    run: Sides
    same: bool  # the padding run gives o = ceil(i / s) on every axis (TensorFlow's "same")
    input_size: Sizes

    @property
    def cell(self) -> str:
        """For the module's row: 'declares p1, runs p2'."""
        return f"declares p{_sides_text(self.declared)}, runs p{_sides_text(self.run)}"

    @property
    def message(self) -> str:
        """For ``warnings``: what it declares and what it runs (for "same", how much on each side at this size)."""
        head = f"{self.module} ({self.type}): declares padding {_sides_text(self.declared)}"
        if not self.same:
            return f"{head}, runs {_sides_text(self.run)}"
        size = "x".join(map(str, self.input_size))
        if len(set(self.run)) == 1:
            before, after = self.run[0]
            sides = f"{before} before and {after} after on each axis"
        else:
            names = AXIS_NAMES.get(len(self.run), tuple(f"axis {a}" for a in range(len(self.run))))
            sides = "; ".join(f"{name} {before} before and {after} after"
                              for name, (before, after) in zip(names, self.run, strict=True))
        return f"{head}, pads 'same' in its forward, from the input size: at {size}, {sides}"


def _pad_sides(node: OpNode, rank: int) -> Sides:
    """(before, after) per spatial axis of an explicit pad: ``F.pad`` lists the last dimension first."""
    pads = tuple(node.attrs.get("pads", ()))
    sides = [(0, 0)] * rank
    for pair in range(min(len(pads) // 2, rank)):
        sides[rank - 1 - pair] = (int(pads[2 * pair]), int(pads[2 * pair + 1]))
    return tuple(sides)


def _inside(capture: Capture, layer: LayerRecord, enclosing: dict[int, int | None]) -> list[OpNode]:
    """The operations that ran inside ``layer``'s call (in its own forward or in its children's)."""
    result = []
    for node in capture.nodes:
        record = enclosing.get(node.id)
        while record is not None and record != layer.index:
            record = capture.layers[record].parent
        if record == layer.index:
            result.append(node)
    return result


def padding_runs(capture: Capture) -> tuple[PaddingRun, ...]:
    """Every module that declares a window (``declared``) and runs one operation of that kind with other padding:
    the operation's own plus the explicit pads before it inside the module."""
    if not any(layer.declared is not None for layer in capture.layers):
        return ()
    enclosing = enclosing_records(capture)
    runs = []
    for layer in capture.layers:
        declared = layer.declared
        if declared is None:
            continue
        nodes = _inside(capture, layer, enclosing)
        windowed = [node for node in nodes if node.geometry.kind is declared.kind]
        if len(windowed) != 1 or windowed[0].geometry.rank != declared.rank:
            continue  # none, or several: nothing to set beside the one declared geometry
        operation, rank = windowed[0], declared.rank
        members = {node.id for node in nodes}
        run = [(operation.geometry.padding[a], operation.geometry.padding_end[a]) for a in range(rank)]
        for node_id in sorted(ancestors(capture, operation.id) & members):
            node = capture.nodes[node_id]
            if node.geometry.kind is OpKind.PAD:
                extra = _pad_sides(node, rank)
                run = [(before + more_before, after + more_after)
                       for (before, after), (more_before, more_after) in zip(run, extra, strict=True)]
        said = tuple((declared.padding[a], declared.padding_end[a]) for a in range(rank))
        if tuple(run) == said:
            continue
        sizes = tuple(layer.input_shape[-rank:])
        outputs = tuple(operation.output_shape[-rank:])
        same = all(output == math.ceil(size / stride)
                   for output, size, stride in zip(outputs, sizes, operation.geometry.stride, strict=True))
        runs.append(PaddingRun(layer.name, layer.type, layer.index, operation.id, said, tuple(run), same, sizes))
    return tuple(runs)


__all__ = ["PaddingRun", "padding_runs"]
