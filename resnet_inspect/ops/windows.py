"""Split spatial axes: windows, halos, patches, space-to-depth and rolls. The layout rules and operation-table
entries that follow an axis cut into (blocks, positions within a block) and put back together.

A ``view`` that cuts an axis of ``n`` units into ``n / w`` blocks of ``w`` keeps both digits as :class:`Piece`
entries of the layout (``unit = w * block + offset``); ``permute`` moves them, and a later ``view`` merges them
back. ``unfold`` (``Tensor.unfold`` and ``F.unfold``) makes overlapping pieces (``unit = step * block + offset``),
``fold`` sums them back onto the map. A contraction or attention then mixes only the units that share the digits
it does not contract (:mod:`resnet_inspect.ops.window_mixing`), and the field becomes one span per unit
(:mod:`resnet_inspect.ops.spans`). Pieces that end up among the channels while the rest of the axis forms the map
(TResNet's space-to-depth, ``view`` + ``permute`` + ``view``) make a window ``k = s = block``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Any

from resnet_inspect.ops import rules, spans
from resnet_inspect.ops.fields import (
    FEATURES,
    DimAxes,
    DimEntry,
    Layout,
    NodeField,
    Piece,
    Undefined,
    field_spans,
    number,
    window,
    with_spans,
)
from resnet_inspect.ops.table import Call, FieldState, OpSpec, ReplayCall
from resnet_inspect.records import Geometry, OpKind, OpNode

# ------------------------------------------------------------------------------------------------ digits


@dataclass(frozen=True)
class _Digit:
    """One factor of a dimension, row-major: a spatial piece, features of ``size``, or an unreadable block."""

    size: int
    piece: Piece | None = None
    opaque: tuple[Any, ...] | None = None  # the entries of a dimension that mixes features and axes in unknown order


def piece_of(entry: DimEntry, layout: Layout) -> Piece:
    return entry if isinstance(entry, Piece) else Piece(entry, 1, layout.grid[entry])


def _digits(layout: Layout, shape: Sequence[int]) -> list[list[_Digit]]:
    """Each dimension as its row-major factors."""
    result = []
    for entries, size in zip(layout.dims, shape, strict=True):
        spatial = [piece_of(entry, layout) for entry in entries if entry != FEATURES]
        product = math.prod(piece.count for piece in spatial)
        if not spatial:
            result.append([_Digit(size)] if size != 1 else [])
        elif FEATURES not in entries or product == size:
            if product != size:
                raise Undefined("holds spatial axes whose sizes do not match the tensor")
            result.append([_Digit(piece.count, piece) for piece in spatial if piece.count != 1])
        elif any(isinstance(entry, Piece) for entry in entries) and entries.count(FEATURES) == 1 and not size % product:
            # written by this module: the features sit where the marker is
            result.append([_Digit(size // product) if entry == FEATURES else _Digit(piece_of(entry, layout).count,
                                                                                      piece_of(entry, layout))
                           for entry in entries])
        else:
            result.append([_Digit(size, opaque=tuple(entries))])
    return result


def _entries(digits: Sequence[_Digit], layout: Layout) -> tuple[Any, ...]:
    """The layout entries of one dimension made of ``digits``: adjacent pieces of one axis that tile merge back,
    and a piece that is a whole axis is that axis."""
    merged: list[_Digit] = []
    for digit in digits:
        last = merged[-1] if merged else None
        if (last is not None and last.piece is not None and digit.piece is not None
                and last.piece.axis == digit.piece.axis and last.piece.coeff == digit.piece.coeff * digit.piece.count):
            merged[-1] = _Digit(last.size * digit.size, Piece(digit.piece.axis, digit.piece.coeff,
                                                                last.piece.count * digit.piece.count))
        else:
            merged.append(digit)
    entries: list[Any] = []
    for digit in merged:
        if digit.opaque is not None:
            entries += [entry for entry in digit.opaque if entry not in entries]
        elif digit.piece is None:
            if digit.size == 1 or (entries and entries[-1] == FEATURES):
                continue
            if FEATURES in entries:
                raise Undefined("puts features between the pieces of a spatial axis")
            entries.append(FEATURES)
        else:
            piece = digit.piece
            whole = piece.coeff == 1 and piece.count == layout.grid[piece.axis]
            entries.append(piece.axis if whole else piece)
    if all(entry == FEATURES for entry in entries):
        return ()
    return tuple(entries)


def _regroup(layout: Layout, before: Sequence[int], after: Sequence[int]) -> tuple[DimAxes, ...]:
    """The dims after reshaping ``before`` to ``after``, following every digit (split where the sizes cut it)."""
    if math.prod(before) != math.prod(after):
        raise Undefined("reshapes to a different number of elements")
    queue = [digit for dim in _digits(layout, before) for digit in dim]
    dims: list[tuple[Any, ...]] = []
    for size in after:
        taken: list[_Digit] = []
        needed = size
        while needed > 1:
            if not queue:
                raise Undefined("reshapes to a different number of elements")
            digit = queue.pop(0)
            if digit.size <= needed:
                if needed % digit.size:
                    raise Undefined("splits a spatial axis across dimensions that do not divide it")
                taken.append(digit)
                needed //= digit.size
                continue
            if digit.size % needed or digit.opaque is not None:
                raise Undefined("splits a dimension that holds spatial axes and features in an unknown order")
            outer, inner = needed, digit.size // needed
            if digit.piece is None:
                taken.append(_Digit(outer))
                queue.insert(0, _Digit(inner))
            else:
                piece = digit.piece
                taken.append(_Digit(outer, Piece(piece.axis, piece.coeff * inner, outer)))
                queue.insert(0, _Digit(inner, Piece(piece.axis, piece.coeff, inner)))
            needed = 1
        dims.append(_entries(taken, layout))
    return tuple(dims)


def _absorbed(layout: Layout, field: NodeField | None = None) -> tuple[Layout, NodeField | None]:
    """Pieces among the channels while the rest of their axis forms the map (space-to-depth, Swin's patch merging
    by reshape and permute): the channels take them, and each unit of the new map gathers a window
    ``k = s = block``.

    Applies only when each axis keeps exactly one dimension holding a single piece of it and nothing else (the
    map's dimension, wherever it is: NCHW or NHWC), and every other piece sits in a dimension with features, never
    the batch dimension 0."""
    rank = layout.rank
    dims = layout.dims
    if not layout.split:
        return layout, field
    kept: dict[int, tuple[int, Piece]] = {}  # axis -> (dimension, piece)
    absorbed: dict[int, list[Piece]] = {axis: [] for axis in range(rank)}
    for position, entries in enumerate(dims):
        pieces = [piece_of(entry, layout) for entry in entries if entry != FEATURES]
        if not pieces:
            continue
        if position == 0:
            return layout, field
        if FEATURES not in entries:
            if len(entries) != 1 or pieces[0].axis in kept:
                return layout, field
            kept[pieces[0].axis] = (position, pieces[0])
            continue
        for piece in pieces:
            absorbed[piece.axis].append(piece)
    if len(kept) != rank:
        return layout, field
    kernel, stride = [], []
    for axis in range(rank):
        offsets = [0]
        for piece in absorbed[axis]:
            offsets = [offset + piece.coeff * index for offset in offsets for index in range(piece.count)]
        kernel.append(max(offsets) + 1)
        stride.append(kept[axis][1].coeff)
    where = {position: axis for axis, (position, _) in kept.items()}
    result_dims = tuple((where[position],) if position in where else () for position in range(len(dims)))
    result = Layout(result_dims, tuple(kept[axis][1].count for axis in range(rank)), layout.scrambled)
    if field is not None:
        field = window(field, kernel, stride, (0,) * rank)
    return result, field


def reshaped(node: OpNode, inputs: Sequence[FieldState]) -> FieldState:
    """view, reshape, flatten, unflatten: the axes follow their dimensions; cut axes become pieces, and pieces that
    end up among the channels of a map make a space-to-depth window."""
    state = inputs[0]
    if not state.layout.split:
        try:
            return rules.reshaped(node, inputs)
        except Undefined:
            pass
    try:
        layout = replace(state.layout, dims=_regroup(state.layout, node.input_shapes[0], node.output_shape))
        layout, field = _absorbed(layout, state.field)
    except Undefined as exc:
        raise Undefined(f"not covered: {rules.describe_op(node)} {exc}") from exc
    return FieldState(layout, field or state.field)


def replay_reshaped(call: ReplayCall) -> Any:
    """The identity, or the window sum of a space-to-depth (read back from the field's change)."""
    import torch.nn.functional as F

    (value,) = call.values
    grid = call.output.layout.grid
    if tuple(value.shape[2:]) == grid:
        return value
    before, after = call.inputs[0].field, call.output.field
    if before.spans is not None or after.spans is not None:
        raise Undefined(f"the check does not cover {rules.describe_op(call.node)} after windowed attention")
    stride = tuple(int(number(Fraction(a) / b)) for a, b in zip(after.stride, before.stride, strict=True))
    kernel = tuple(int(number(Fraction(a - b) / s)) + 1 for a, b, s in zip(after.size, before.size, before.stride,
                                                                             strict=True))
    rank = value.dim() - 2
    pool = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[rank - 1]
    result = pool(value, kernel, stride) * math.prod(kernel)
    return result[(slice(None), slice(None), *(slice(0, n) for n in grid))]


# ------------------------------------------------------------------------------------------------ roll


def describe_roll(call: Call) -> tuple[Geometry, dict[str, Any]]:
    shifts, dims = call.arg(1, "shifts"), call.arg(2, "dims")
    shifts = (int(shifts),) if isinstance(shifts, int) else tuple(int(s) for s in shifts)
    if dims is not None:
        dims = (int(dims),) if isinstance(dims, int) else tuple(int(d) for d in dims)
    return Geometry(OpKind.RESHAPE), {"shifts": shifts, "dims": dims}


def _axis_shifts(node: OpNode, layout: Layout) -> dict[int, int]:
    """Axis -> how far ``roll`` moves its units (``out[(u + shift) mod n] = in[u]``)."""
    dims, shifts = node.attrs.get("dims"), node.attrs.get("shifts", ())
    if dims is None:
        raise Undefined(f"not covered: {rules.describe_op(node)} rolls the flattened tensor")
    moved: dict[int, int] = {}
    for dim, shift in zip(dims, shifts, strict=True):
        entries = layout.dims[dim]
        spatial = [entry for entry in entries if entry != FEATURES]
        if not spatial:
            continue
        if len(entries) != 1 or not isinstance(spatial[0], int):
            raise Undefined(f"not covered: {rules.describe_op(node)} rolls a dimension that holds more than one axis")
        moved[spatial[0]] = moved.get(spatial[0], 0) + shift
    return moved


def rolled(node: OpNode, inputs: Sequence[FieldState]) -> FieldState:
    """roll: units move around the map (the last ones come back in front); each keeps its own span."""
    state = inputs[0]
    moved = _axis_shifts(node, state.layout)
    if not moved or state.field.position_independent:
        return state
    grid = state.layout.grid
    try:
        current = field_spans(state.field, grid)
    except Undefined as exc:
        raise Undefined(f"not covered: {rules.describe_op(node)}: {exc}") from exc
    result = tuple(tuple(axis_spans[(u - moved.get(axis, 0)) % len(axis_spans)] for u in range(len(axis_spans)))
                   for axis, axis_spans in enumerate(current))
    return FieldState(state.layout, with_spans(state.field, result, state.field.stride))


def replay_rolled(call: ReplayCall) -> Any:
    import torch

    (value,) = call.values
    moved = _axis_shifts(call.node, call.inputs[0].layout)
    if not moved:
        return value
    axes = sorted(moved)
    return torch.roll(value, tuple(moved[axis] for axis in axes), tuple(2 + axis for axis in axes))


# ------------------------------------------------------------------------------------------------ unfold / fold


def _pairs(value: Any, rank: int) -> tuple[int, ...]:
    return (int(value),) * rank if isinstance(value, int) else tuple(int(v) for v in value)


def describe_unfold(call: Call) -> tuple[Geometry, dict[str, Any]]:
    """``F.unfold`` (im2col: kernel, dilation, padding, stride) or ``Tensor.unfold(dimension, size, step)``."""
    if {"dilation", "padding", "stride"} & set(call.kwargs) or not (len(call.args) == 4 or
                                                                   {"dimension", "size", "step"} & set(call.kwargs)):
        return Geometry(OpKind.RESHAPE), {
            "functional": True, "kernel": _pairs(call.arg(1, "kernel_size"), 2),
            "dilation": _pairs(call.arg(2, "dilation", 1), 2), "padding": _pairs(call.arg(3, "padding", 0), 2),
            "stride": _pairs(call.arg(4, "stride", 1), 2)}
    return Geometry(OpKind.RESHAPE), {"functional": False, "dim": int(call.arg(1, "dimension")),
                                      "size": int(call.arg(2, "size")), "step": int(call.arg(3, "step"))}


def unfolded(node: OpNode, inputs: Sequence[FieldState]) -> FieldState:
    """unfold: overlapping windows as pieces. ``Tensor.unfold(d, size, step)`` turns dimension ``d`` into the
    window index (``step`` units each) and appends the offset inside the window; ``F.unfold`` does it for both axes
    of an (N, C, H, W) map after padding it, with the offsets among the channels and the windows in the last
    dimension."""
    state = inputs[0]
    attrs = node.attrs
    if not attrs.get("functional"):
        dim = attrs["dim"] % len(state.layout.dims)
        entries = state.layout.dims[dim]
        spatial = [entry for entry in entries if entry != FEATURES]
        if not spatial:
            return FieldState(replace(state.layout, dims=(*state.layout.dims, ())), state.field)
        if len(entries) != 1:
            raise Undefined(f"not covered: {rules.describe_op(node)} unfolds a dimension holding several axes")
        piece = piece_of(entries[0], state.layout)
        windows = (piece.count - attrs["size"]) // attrs["step"] + 1
        dims = list(state.layout.dims)
        dims[dim] = (Piece(piece.axis, piece.coeff * attrs["step"], windows),)
        dims.append((Piece(piece.axis, piece.coeff, attrs["size"]),))
        return FieldState(replace(state.layout, dims=tuple(dims)), state.field)
    rules.require_canonical(node, state, 2)
    grid = state.layout.grid
    padding, kernel, dilation, stride = attrs["padding"], attrs["kernel"], attrs["dilation"], attrs["stride"]
    field = window(state.field, (1, 1), (1, 1), padding) if any(padding) else state.field
    padded = tuple(n + 2 * p for n, p in zip(grid, padding, strict=True))
    if field.spans is not None:
        field = replace(field, spans=spans.fit(field.spans, padded))
    blocks = tuple((n - d * (k - 1) - 1) // s + 1 for n, k, d, s in zip(padded, kernel, dilation, stride, strict=True))
    channels = node.input_shapes[0][1]
    offsets = tuple(Piece(axis, dilation[axis], kernel[axis]) for axis in range(2))
    out_dims: tuple[DimAxes, ...] = ((), ((FEATURES,) if channels > 1 else ()) + offsets,
                                     tuple(Piece(axis, stride[axis], blocks[axis]) for axis in range(2)))
    layout = Layout(out_dims[len(out_dims) - len(node.output_shape):], padded, state.layout.scrambled)
    return FieldState(layout, field)


def describe_fold(call: Call) -> tuple[Geometry, dict[str, Any]]:
    return Geometry(OpKind.RESHAPE), {
        "output_size": _pairs(call.arg(1, "output_size"), 2), "kernel": _pairs(call.arg(2, "kernel_size"), 2),
        "dilation": _pairs(call.arg(3, "dilation", 1), 2), "padding": _pairs(call.arg(4, "padding", 0), 2),
        "stride": _pairs(call.arg(5, "stride", 1), 2)}


def _fold_sources(node: OpNode, state: FieldState) -> list[list[list[int]]]:
    """Per axis, per output unit: the input units that ``fold`` sums into it."""
    attrs = node.attrs
    shape = node.input_shapes[0]
    batch = shape[:-2]
    channels = shape[-2] // math.prod(attrs["kernel"])
    blocks = tuple((n + 2 * p - d * (k - 1) - 1) // s + 1 for n, k, d, s, p in
                   zip(attrs["output_size"], attrs["kernel"], attrs["dilation"], attrs["stride"], attrs["padding"],
                       strict=True))
    virtual = (*batch, channels, *attrs["kernel"], *blocks)
    dims = _regroup(state.layout, shape, virtual)
    lead = len(batch) + 1
    result = []
    for axis in range(2):
        homes = {lead + axis: "kernel", lead + 2 + axis: "block"}
        for position, entries in enumerate(dims):
            if position not in homes and any(piece_of(e, state.layout).axis == axis for e in entries if e != FEATURES):
                raise Undefined(f"not covered: {rules.describe_op(node)} folds a tensor whose positions are not in "
                                "its kernel and block dimensions")
        values = {}
        for position, role in homes.items():
            pieces = [piece_of(e, state.layout) for e in dims[position] if e != FEATURES]
            if any(p.axis != axis for p in pieces):
                raise Undefined(f"not covered: {rules.describe_op(node)} folds a dimension holding several axes")
            values[role] = [sum(p.coeff * i for p, i in zip(pieces, combo, strict=True))
                            for combo in itertools.product(*(range(p.count) for p in pieces))]
        n_out, n_in = attrs["output_size"][axis], state.layout.grid[axis]
        sources: list[list[int]] = [[] for _ in range(n_out)]
        for t, source_t in enumerate(values["kernel"]):
            for b, source_b in enumerate(values["block"]):
                u = b * attrs["stride"][axis] - attrs["padding"][axis] + t * attrs["dilation"][axis]
                v = source_t + source_b
                if 0 <= u < n_out and 0 <= v < n_in:
                    sources[u].append(v)
        result.append(sources)
    return result


def folded(node: OpNode, inputs: Sequence[FieldState]) -> FieldState:
    """fold (col2im): every map unit sums the window entries that land on it; its span is the hull of theirs."""
    state = inputs[0]
    sources = _fold_sources(node, state)
    if any(not units for axis in sources for units in axis):
        raise Undefined(f"not covered: {rules.describe_op(node)} leaves map units that no window covers")
    output_size = node.attrs["output_size"]
    layout = Layout.channels_first(len(node.output_shape), output_size)
    if state.field.position_independent:
        return FieldState(layout, state.field)
    current = field_spans(state.field, state.layout.grid)
    result = tuple(tuple(spans.hull(current[axis][v] for v in units) for units in sources[axis]) for axis in range(2))
    return FieldState(replace(layout, scrambled=state.layout.scrambled),
                      with_spans(state.field, result, state.field.stride))


def replay_folded(call: ReplayCall) -> Any:
    return replay_groups(call, [_fold_sources(call.node, call.inputs[0])])


def replay_groups(call: ReplayCall, groups: Sequence[Sequence[Sequence[Sequence[int]]]]) -> Any:
    """Each output unit sums the input units of its group (per axis; the groups of several operands add)."""
    import torch

    (value,) = call.values
    total = None
    for operand in groups:
        result = value
        for axis, members in enumerate(operand):
            matrix = torch.zeros((len(members), result.shape[2 + axis]), dtype=value.dtype)
            for u, units in enumerate(members):
                for v in units:
                    if v < matrix.shape[1]:
                        matrix[u, v] = 1
            result = torch.movedim(torch.tensordot(result, matrix, dims=([2 + axis], [1])), -1, 2 + axis)
        total = result if total is None else total + result
    return total


# ------------------------------------------------------------------------------------------------ shapes
# Meta kernels of roll, cat and indexing with a tensor import sympy (over a second of start-up): these rules
# give the same shapes (tests check them against torch's kernels) and step aside for anything else.


def shape_roll(call: Call) -> Any:
    from resnet_inspect.ops.common import meta_empty

    x = call.args[0]
    return meta_empty(x.shape, x)


def shape_cat(call: Call) -> Any:
    """Tensors of one dtype and rank, equal but along ``dim``."""
    from resnet_inspect.ops.common import meta_empty

    tensors, dim = call.arg(0, "tensors"), call.arg(1, "dim", 0)
    if not isinstance(tensors, (list, tuple)) or not tensors or not isinstance(dim, int) or set(call.kwargs) - {
            "dim", "tensors"}:
        return NotImplemented
    first = tensors[0]
    ndim = first.dim()
    if ndim == 0 or not -ndim <= dim < ndim:
        return NotImplemented
    dim %= ndim
    if any(t.dim() != ndim or t.dtype != first.dtype or any(t.shape[d] != first.shape[d] for d in range(ndim)
                                                             if d != dim) for t in tensors):
        return NotImplemented
    shape = list(first.shape)
    shape[dim] = sum(t.shape[dim] for t in tensors)
    return meta_empty(shape, first)


def _plain_index(index: Any, ndim: int) -> list[Any] | None:
    """A basic index (ints, slices with int bounds, None, at most one Ellipsis) as one int or slice per dimension
    and None per new dimension; None when the index is anything else or has too many entries."""
    items = list(index) if isinstance(index, tuple) else [index]
    if any(not (item is None or item is Ellipsis or isinstance(item, slice) or type(item) is int) for item in items):
        return None
    if any(isinstance(item, slice) and not all(v is None or type(v) is int for v in (item.start, item.stop, item.step))
           for item in items) or items.count(Ellipsis) > 1:
        return None
    consumed = sum(1 for item in items if item is not None and item is not Ellipsis)
    if consumed > ndim:
        return None
    if Ellipsis in items:
        position = items.index(Ellipsis)
        items[position:position + 1] = [slice(None)] * (ndim - consumed)
    return items + [slice(None)] * (ndim - sum(1 for item in items if item is not None))


def shape_getitem(call: Call) -> Any:
    """``x[...]`` with ints, slices, None and Ellipsis, or ``table[index]`` with one integer index tensor."""
    import torch

    from resnet_inspect.ops.common import meta_empty

    x, index = call.args[0], call.arg(1, "index")
    if x.dim() == 0:
        return NotImplemented
    if isinstance(index, torch.Tensor):
        if index.dtype not in (torch.int64, torch.int32):
            return NotImplemented
        return meta_empty((*index.shape, *x.shape[1:]), x)
    items = _plain_index(index, x.dim())
    if items is None:
        return NotImplemented
    shape, dim = [], 0
    for item in items:
        if item is None:
            shape.append(1)
            continue
        size = x.shape[dim]
        dim += 1
        if isinstance(item, slice):
            if item.step is not None and item.step <= 0:
                return NotImplemented
            shape.append(len(range(*item.indices(size))))
        elif not -size <= item < size:
            return NotImplemented
    return meta_empty(shape, x)


# ------------------------------------------------------------------------------------------------ entries


def window_ops() -> list[OpSpec]:
    """The table entries for roll, unfold and fold (view, permute and attention keep their entries)."""
    return [
        OpSpec("roll", OpKind.RESHAPE, rolled, functions=("roll",), describe=describe_roll, shape=shape_roll,
               replay=replay_rolled,
               doc="roll: units move around the map (shifted windows)"),
        OpSpec("unfold", OpKind.RESHAPE, unfolded, functions=("unfold",), describe=describe_unfold,
               replay=rules.replay_identity,
               doc="unfold: overlapping windows as pieces of the axes (Tensor.unfold and F.unfold)"),
        OpSpec("fold", OpKind.RESHAPE, folded, functions=("fold",), describe=describe_fold, replay=replay_folded,
               doc="fold: window entries summed back onto the map"),
    ]


__all__ = ["folded", "piece_of", "replay_groups", "replay_reshaped", "reshaped", "rolled", "shape_cat", "shape_getitem",
           "shape_roll", "unfolded", "window_ops"]
