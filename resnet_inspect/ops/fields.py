"""Receptive fields and spatial layouts: the values the operation table's field rules compute. Pure Python.

Per spatial axis, a field is Distill 2019's triple, cumulative from the input: size ``r``, effective stride
``S`` and effective padding ``P``; output unit ``u`` covers input positions ``[-P + uS, -P + uS + r - 1]``.
A window (kernel ``k'``, stride ``s``, padding ``p``) updates it as ``r' = r + (k' - 1) S``, ``S' = S s``,
``P' = P + p S``. Upsampling makes the stride a fraction (torch-scan's convention), exact at the pixels that
sit on the coarser grid.

A :class:`Layout` says which tensor dimensions hold which spatial axes, so that fields follow the axes through
NHWC tensors, token sequences (``flatten(2).transpose(1, 2)``) and channel shuffles.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from fractions import Fraction

from resnet_inspect.ops import spans
from resnet_inspect.ops.spans import Spans

Number = int | Fraction
FEATURES = -1  # in a layout dimension: features (channels) flattened together with spatial axes


def number(value: Number) -> Number:
    """A Fraction with denominator 1 as an int."""
    if isinstance(value, Fraction) and value.denominator == 1:
        return int(value)
    return value


def json_number(value: Number) -> int | float:
    value = number(value)
    return value if isinstance(value, int) else float(value)


class Undefined(Exception):
    """A field that the analysis cannot give; the message says why, naming the operation."""


@dataclass(frozen=True)
class NodeField:
    """The receptive field of the units of one tensor, per spatial axis, in input pixels.

    ``reduced``: the spatial axes were pooled or flattened away; the value depends on the whole map (the size is
    then the union of every unit's field). ``whole``: every unit sees the same region, the union of all units'
    fields (token mixing); the stride is still that of the unit grid. ``global_context``: besides its local
    field, each unit depends on the whole input through a spatially reduced branch (a squeeze-and-excitation
    gate, normalisation statistics). ``union``: paths with the same stride but different centres were merged; the
    field is the hull of their intervals. ``exact``: False after upsampling, where the field varies from pixel to
    pixel and these bound every pixel's field with a rational stride. ``padding_mode``: the first non-zero padding met
    (reflect, replicate, circular): at the border the interval formula does not say which pixels are seen.
    """

    size: tuple[Number, ...]
    stride: tuple[Number, ...]
    padding: tuple[Number, ...]
    reduced: bool = False
    global_context: bool = False
    whole: bool = False
    union: bool = False
    exact: bool = True
    padding_mode: str = "zeros"
    spans: Spans | None = None

    @property
    def rank(self) -> int:
        return len(self.size)

    @property
    def method(self) -> str:
        """How the field was found: "analytic" (the rules) here; a measured field says "measured"."""
        return "analytic"

    @property
    def position_independent(self) -> bool:
        """Every unit sees the same region (a reduced value or a token-mixed map)."""
        return self.reduced or self.whole

    @property
    def centre(self) -> tuple[float, ...]:
        """Centre of output unit 0 in input coordinates: ``-P + (r - 1) / 2``."""
        return tuple(float(-p + Fraction(r - 1) / 2) for r, p in zip(self.size, self.padding, strict=True))

    def interval(self, unit: Sequence[int]) -> tuple[tuple[Number, Number], ...]:
        """First and last input position covered by output unit ``unit``, per axis."""
        if self.spans is not None and not self.position_independent:
            return tuple(axis_spans[min(max(u, 0), len(axis_spans) - 1)]
                         for axis_spans, u in zip(self.spans, unit, strict=True))
        result = []
        for axis in range(self.rank):
            offset = 0 if self.position_independent else unit[axis] * self.stride[axis]
            start = number(-self.padding[axis] + offset)
            result.append((start, number(start + self.size[axis] - 1)))
        return tuple(result)

    def covers_input(self, input_size: Sequence[int], output_size: Sequence[int]) -> bool:
        """Whether every output unit, the border ones included, sees the whole input."""
        if self.position_independent and self.global_context:
            return True
        if self.spans is not None and not self.position_independent:
            return all(first <= 0 and last >= extent - 1
                       for axis_spans, extent in zip(self.spans, input_size, strict=True) for first, last in axis_spans)
        first = self.interval([0] * self.rank)
        last = self.interval([max(size - 1, 0) for size in output_size])
        return all(first[axis][1] >= input_size[axis] - 1 and last[axis][0] <= 0 for axis in range(self.rank))

    def to_json(self) -> dict[str, object]:
        result: dict[str, object] = {
            "size": [json_number(v) for v in self.size], "stride": [json_number(v) for v in self.stride],
            "padding": [json_number(v) for v in self.padding], "global_context": self.global_context,
            "method": self.method,
        }
        if self.spans is not None and not self.position_independent:
            result["spans"] = [[[json_number(first), json_number(last)] for first, last in axis_spans]
                               for axis_spans in self.spans]
        return result


def window(field: NodeField, kernel: Sequence[Number], stride: Sequence[Number], padding: Sequence[Number],
           padding_mode: str = "zeros") -> NodeField:
    """Distill 2019's recurrence for one layer: r' = r + (k' - 1) S, S' = S s, P' = P + p S.

    A position-independent field keeps its region; only the unit grid's stride changes.
    """
    mode = field.padding_mode if field.padding_mode != "zeros" else padding_mode
    if field.spans is not None and not field.position_independent:
        result = spans.window(field.spans, kernel, stride, padding)
        return with_spans(replace(field, padding_mode=mode), result,
                          tuple(number(S * s) for S, s in zip(field.stride, stride, strict=True)))
    if field.position_independent:
        stride_out = tuple(number(S * s) for S, s in zip(field.stride, stride, strict=True))
        return replace(field, stride=stride_out, padding_mode=mode)
    return replace(
        field,
        size=tuple(number(r + (k - 1) * S) for r, k, S in zip(field.size, kernel, field.stride, strict=True)),
        stride=tuple(number(S * s) for S, s in zip(field.stride, stride, strict=True)),
        padding=tuple(number(P + p * S) for P, p, S in zip(field.padding, padding, field.stride, strict=True)),
        exact=field.exact and all(isinstance(number(v), int) for v in stride),
        padding_mode=mode,
    )


def whole_map(field: NodeField, grid: Sequence[int], *, reduced: bool) -> NodeField:
    """Every unit of a map of ``grid`` units mixed: a window with k = s = the map's size (the union of all fields).

    ``reduced`` when the spatial axes end here (global pooling, flattening); otherwise the map keeps its grid
    and every unit sees that union (token mixing).
    """
    if field.position_independent:
        return replace(field, reduced=reduced or field.reduced, whole=not reduced and not field.reduced)
    if field.spans is not None:
        hulls = [spans.hull(axis_spans) for axis_spans in field.spans]
        size = tuple(number(last - first + 1) for first, last in hulls)
        stride = tuple(number(S * n) for S, n in zip(field.stride, grid, strict=True)) if reduced else field.stride
        return replace(field, size=size, stride=stride, padding=tuple(number(-first) for first, _ in hulls),
                       reduced=reduced, whole=not reduced, spans=None)
    size = tuple(number(r + (n - 1) * S) for r, n, S in zip(field.size, grid, field.stride, strict=True))
    stride = tuple(number(S * n) for S, n in zip(field.stride, grid, strict=True)) if reduced else field.stride
    return replace(field, size=size, stride=stride, reduced=reduced, whole=not reduced)


def _pair_text(values: Sequence[object]) -> str:
    texts = [str(v) for v in values]
    return texts[0] if len(set(texts)) == 1 else "x".join(texts)


def merge_fields(name: str, fields: Sequence[NodeField]) -> NodeField:
    """Several paths joined (``x + shortcut``, ``x * gate``, a channel concatenation).

    Reduced paths (a gate computed from the whole map) add global context to the others. The remaining paths
    must share the stride: with the same centre the merged field is the largest (aligned); with different
    centres it is the hull of their intervals (``union``). Different strides leave the field undefined.
    """
    local = [field for field in fields if not field.reduced]
    context = any(field.global_context for field in fields) or len(local) < len(fields)
    if any(field.spans is not None and not field.position_independent for field in local):
        return merge_spans(name, local, context)
    if not local:  # every path reduced: one value from the whole map
        widest = max(fields, key=lambda field: math.prod(field.size))
        return replace(widest, global_context=any(field.global_context for field in fields))
    rank = local[0].rank
    if any(field.rank != rank for field in local):
        raise Undefined(f"{name} joins tensors with different numbers of spatial axes")
    strides = {field.stride for field in local}
    mode = next((field.padding_mode for field in local if field.padding_mode != "zeros"), "zeros")
    exact = all(field.exact for field in local)
    whole = any(field.whole for field in local)
    if len(strides) > 1 and not all(field.whole for field in local):
        paths = "; ".join(f"stride {_pair_text(field.stride)}" for field in dict.fromkeys(local))
        raise Undefined(f"unaligned merge at {name}: its input paths have different strides ({paths})")
    stride = max(strides, key=lambda value: math.prod(float(v) for v in value))
    starts = [tuple(-p for p in field.padding) for field in local]
    ends = [tuple(-p + r - 1 for r, p in zip(field.size, field.padding, strict=True)) for field in local]
    start = tuple(min(values) for values in zip(*starts, strict=True))
    end = tuple(max(values) for values in zip(*ends, strict=True))
    aligned = len({field.centre for field in local}) == 1
    union = not aligned or any(field.union for field in local)
    return NodeField(
        size=tuple(number(e - s + 1) for s, e in zip(start, end, strict=True)), stride=stride,
        padding=tuple(number(-s) for s in start), global_context=context, whole=whole, union=union and not whole,
        exact=exact, padding_mode=mode,
    )


def field_spans(field: NodeField, grid: Sequence[int]) -> Spans:
    """Every unit's (first, last) input position per axis, for a map of ``grid`` units."""
    if field.spans is not None and not field.position_independent:
        return field.spans
    if field.position_independent:  # every unit sees the same span: an affine field of stride 0
        return spans.affine(field.size, (0,) * len(grid), field.padding, grid)
    if not all(isinstance(number(v), int) for v in (*field.stride, *field.padding, *field.size)):
        raise Undefined("positions between grid units (after upsampling) cannot be followed unit by unit")
    return spans.affine(field.size, field.stride, field.padding, grid)


def with_spans(field: NodeField, unit_spans: Spans, stride: Sequence[Number]) -> NodeField:
    """``field`` with every unit's span given: back to (size, stride, padding) when they step by one stride; else
    size and padding are those of the centre unit."""
    if all(len(set(axis_spans)) == 1 for axis_spans in unit_spans):  # every unit sees the same region
        firsts = tuple(axis_spans[0][0] for axis_spans in unit_spans)
        size = tuple(axis_spans[0][1] - axis_spans[0][0] + 1 for axis_spans in unit_spans)
        return replace(field, size=size, stride=tuple(stride), padding=tuple(-first for first in firsts), spans=None,
                       whole=True, union=False)
    size, padding = spans.summary(unit_spans, stride)
    affine = spans.affine(size, stride, padding, [len(axis_spans) for axis_spans in unit_spans])
    if affine == tuple(tuple(axis_spans) for axis_spans in unit_spans):
        return replace(field, size=size, stride=tuple(stride), padding=padding, spans=None)
    return replace(field, size=size, stride=tuple(stride), padding=padding, spans=unit_spans, union=False)


def merge_spans(name: str, fields: Sequence[NodeField], context: bool) -> NodeField:
    """Paths joined after windowed attention or a roll: per unit, the hull of the paths' spans."""
    carrier = next(field for field in fields if field.spans is not None and not field.position_independent)
    grid = [len(axis_spans) for axis_spans in carrier.spans or ()]
    if any(field.rank != carrier.rank for field in fields):
        raise Undefined(f"{name} joins tensors with different numbers of spatial axes")
    joined = spans.merge([field_spans(field, grid) for field in fields])
    base = replace(carrier, global_context=context, exact=all(field.exact for field in fields))
    return with_spans(base, joined, carrier.stride)


# ----------------------------------------------------------------------------------------------- layouts


@dataclass(frozen=True)
class Piece:
    """One digit of a spatial axis split across dimensions (a window partition, ``unfold``): index ``i`` along it
    stands for ``coeff * i`` units of axis ``axis``, for ``count`` values. A unit is the sum over its pieces."""

    axis: int
    coeff: int
    count: int


DimEntry = int | Piece  # in a layout dimension: a spatial axis number, FEATURES (-1), or one digit of a split axis
DimAxes = tuple[DimEntry, ...]  # what one tensor dimension holds, outermost first


@dataclass(frozen=True)
class Layout:
    """Which tensor dimensions hold which spatial axes, and each axis's current size.

    ``dims[d]`` lists the spatial axes (numbered as in the model input) that dimension ``d`` holds: one for an
    ordinary map dimension, several when axes were flattened together (row-major, the first outermost), and
    ``FEATURES`` when features were flattened with them. An axis split into blocks and positions within them
    (``view`` to windows, ``unfold``) is held as :class:`Piece` entries, in the dimensions each digit went to.
    ``scrambled``: positions along a spatial dimension were shifted (a class token concatenated in front): the
    per-unit intervals no longer hold.
    """

    dims: tuple[DimAxes, ...]
    grid: tuple[int, ...]
    scrambled: bool = False

    @staticmethod
    def channels_first(ndim: int, grid: Sequence[int]) -> Layout:
        """(N, C, *spatial) or (C, *spatial): the spatial axes are the trailing dimensions, in order."""
        rank = len(grid)
        lead = max(ndim - rank, 0)
        return Layout(((),) * lead + tuple((axis,) for axis in range(rank)), tuple(grid))

    @property
    def rank(self) -> int:
        return len(self.grid)

    def spatial_dims(self) -> list[int]:
        return [d for d, axes in enumerate(self.dims) if any(a != FEATURES for a in axes)]

    @property
    def intact(self) -> bool:
        """Every axis in a dimension of its own (any order), nothing mixed with features, nothing shifted."""
        held = [axes for axes in self.dims if axes]
        if self.split:
            return False
        return not self.scrambled and sorted(held) == [(a,) for a in range(self.rank)]

    @property
    def split(self) -> bool:
        """Some axis is held as pieces in several dimensions."""
        return any(isinstance(a, Piece) for axes in self.dims for a in axes)

    @property
    def canonical(self) -> bool:
        """The spatial axes are the trailing dimensions in input order: a convolution can run on it."""
        rank = self.rank
        return self.intact and len(self.dims) >= rank and self.dims[len(self.dims) - rank:] == tuple(
            (a,) for a in range(rank))

    def axis_dims(self) -> tuple[int, ...] | None:
        """The dimension of each spatial axis when the layout is intact, else None."""
        if not self.intact:
            return None
        where = {axes[0]: d for d, axes in enumerate(self.dims) if axes}
        return tuple(where[a] for a in range(self.rank))

    def with_grid(self, grid: Sequence[int]) -> Layout:
        return replace(self, grid=tuple(grid))


def whole_axes(axes: DimAxes) -> list[int]:
    """The spatial axes a dimension holds whole, features left out; a piece of a split axis is not one."""
    spatial: list[int] = []
    for entry in axes:
        if isinstance(entry, Piece):
            raise Undefined("cuts a split axis")
        if entry != FEATURES:
            spatial.append(entry)
    return spatial


def reshape_layout(layout: Layout, before: Sequence[int], after: Sequence[int]) -> Layout:
    """The layout after a view/reshape/flatten/unflatten/squeeze from shape ``before`` to ``after``.

    Dimensions are matched in blocks of equal products. Merging dimensions merges their axes; a block that
    splits one dimension restores the axes flattened into it when the sizes say so (``unflatten``), and keeps
    features features. Anything that cuts a spatial axis raises Undefined.
    """
    if math.prod(before) != math.prod(after):
        raise Undefined("reshapes to a different number of elements")
    kept_in = [d for d, size in enumerate(before) if size != 1]
    kept_out = [d for d, size in enumerate(after) if size != 1]
    dims: list[DimAxes] = [()] * len(after)
    i = j = 0
    while i < len(kept_in) or j < len(kept_out):
        block_in, block_out = [kept_in[i]], [kept_out[j]]
        i, j = i + 1, j + 1
        product_in, product_out = before[block_in[0]], after[block_out[0]]
        while product_in != product_out:
            if product_in < product_out:
                block_in.append(kept_in[i])
                product_in *= before[kept_in[i]]
                i += 1
            else:
                block_out.append(kept_out[j])
                product_out *= after[kept_out[j]]
                j += 1
        axes = tuple(a for d in block_in for a in layout.dims[d])
        if len(block_out) == 1:
            merged = tuple(dict.fromkeys(axes))
            has_features = FEATURES in merged or any(not layout.dims[d] for d in block_in)
            spatial = tuple(a for a in merged if a != FEATURES)
            dims[block_out[0]] = (FEATURES, *spatial) if spatial and has_features else spatial
            continue
        dims_out = _split_block(layout, axes, [after[d] for d in block_out])
        for d, held in zip(block_out, dims_out, strict=True):
            dims[d] = held
    for d in range(len(before)):  # size-1 dims carrying an axis (a 1-wide map): the axis must not vanish silently
        vanished = before[d] == 1 and layout.dims[d] and all(layout.dims[d] != held for held in dims)
        if vanished and any(layout.grid[a] != 1 for a in whole_axes(layout.dims[d])):
            raise Undefined("drops a spatial axis")
    return replace(layout, dims=tuple(dims))


def _split_block(layout: Layout, axes: DimAxes, sizes: list[int]) -> list[DimAxes]:
    """One dimension split into ``sizes``: channels stay channels; flattened axes come back one per dimension."""
    spatial = whole_axes(axes)
    if not spatial:
        return [()] * len(sizes)
    grid = [layout.grid[a] for a in spatial]
    features = FEATURES in axes
    if not features and sizes == grid:
        return [(a,) for a in spatial]
    if features and len(sizes) > len(grid) and sizes[len(sizes) - len(grid):] == grid:
        return [()] * (len(sizes) - len(grid)) + [(a,) for a in spatial]
    raise Undefined("splits a spatial axis")


def permute_layout(layout: Layout, order: Sequence[int]) -> Layout:
    return replace(layout, dims=tuple(layout.dims[d] for d in order))


__all__ = [
    "FEATURES",
    "DimAxes",
    "DimEntry",
    "Layout",
    "NodeField",
    "Piece",
    "Undefined",
    "field_spans",
    "json_number",
    "merge_fields",
    "number",
    "permute_layout",
    "reshape_layout",
    "whole_axes",
    "whole_map",
    "window",
    "with_spans",
]
