"""Split spatial axes: windows, halos, patches, space-to-depth and rolls. The layout rules and operation-table
entries that follow an axis cut into (blocks, positions within a block) and put back together.

A ``view`` that cuts an axis of ``n`` units into ``n / w`` blocks of ``w`` keeps both digits as :class:`Piece`
entries of the layout (``unit = w * block + offset``); ``permute`` moves them, and a later ``view`` merges them
back. ``unfold`` (``Tensor.unfold`` and ``F.unfold``) makes overlapping pieces (``unit = step * block + offset``),
``fold`` sums them back onto the map. A contraction or attention then mixes only the units that share the digits
it does not contract: a window, a window plus its halo, or every unit (global attention). Every unit of the
output sees the hull of the fields of the units it mixed, so the field becomes one span per unit
(:mod:`resnet_inspect.ops.spans`). Pieces that end up among the channels while the rest of the axis forms the map
(TResNet's space-to-depth, ``view`` + ``permute`` + ``view``) make a window ``k = s = block``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from resnet_inspect.ops import rules, spans
from resnet_inspect.ops.fields import (
    FEATURES,
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


def _piece(entry: Any, layout: Layout) -> Piece:
    return entry if isinstance(entry, Piece) else Piece(entry, 1, layout.grid[entry])


def _digits(layout: Layout, shape: Sequence[int]) -> list[list[_Digit]]:
    """Each dimension as its row-major factors."""
    result = []
    for entries, size in zip(layout.dims, shape, strict=True):
        spatial = [_piece(entry, layout) for entry in entries if entry != FEATURES]
        product = math.prod(piece.count for piece in spatial)
        if not spatial:
            result.append([_Digit(size)] if size != 1 else [])
        elif FEATURES not in entries or product == size:
            if product != size:
                raise Undefined("holds spatial axes whose sizes do not match the tensor")
            result.append([_Digit(piece.count, piece) for piece in spatial if piece.count != 1])
        elif any(isinstance(entry, Piece) for entry in entries) and entries.count(FEATURES) == 1 and not size % product:
            # written by this module: the features sit where the marker is
            result.append([_Digit(size // product) if entry == FEATURES else _Digit(_piece(entry, layout).count,
                                                                                      _piece(entry, layout))
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


def _regroup(layout: Layout, before: Sequence[int], after: Sequence[int]) -> tuple[tuple[Any, ...], ...]:
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


def split_reshape(layout: Layout, before: Sequence[int], after: Sequence[int]) -> Layout:
    """The layout after a reshape that may cut spatial axes into pieces (or put pieces back together)."""
    return _absorbed(replace(layout, dims=_regroup(layout, before, after)))[0]


def _absorbed(layout: Layout, field: NodeField | None = None) -> tuple[Layout, NodeField | None]:
    """Pieces among the channels while the rest of their axis forms the map (space-to-depth): the channels
    take them, and each unit of the new map gathers a window ``k = s = block``.

    Applies only when the trailing dimensions, one per axis in order, then hold a single piece each and every
    other piece sits in a channel dimension with features (never the batch dimension 0)."""
    rank = layout.rank
    dims = layout.dims
    if not layout.split or len(dims) < rank + 1:
        return layout, field
    trailing = dims[len(dims) - rank:]
    kept: list[Piece] = []
    for axis, entries in enumerate(trailing):
        if len(entries) != 1 or entries[0] == FEATURES or _piece(entries[0], layout).axis != axis:
            return layout, field
        kept.append(_piece(entries[0], layout))
    absorbed: dict[int, list[Piece]] = {axis: [] for axis in range(rank)}
    for position, entries in enumerate(dims[:len(dims) - rank]):
        pieces = [entry for entry in entries if entry != FEATURES]
        if not pieces:
            continue
        if position == 0 or FEATURES not in entries or not all(isinstance(entry, Piece) for entry in pieces):
            return layout, field
        for piece in pieces:
            absorbed[piece.axis].append(piece)
    kernel, stride = [], []
    for axis in range(rank):
        offsets = [0]
        for piece in absorbed[axis]:
            offsets = [offset + piece.coeff * index for offset in offsets for index in range(piece.count)]
        kernel.append(max(offsets) + 1)
        stride.append(kept[axis].coeff)
    lead = ((),) * (len(dims) - rank)  # channels only: the absorbed pieces are channels now
    result = Layout(lead + tuple((axis,) for axis in range(rank)), tuple(piece.count for piece in kept),
                    layout.scrambled)
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
    stride = tuple(int(number(a / b)) for a, b in zip(after.stride, before.stride, strict=True))
    kernel = tuple(int(number((a - b) / s)) + 1 for a, b, s in zip(after.size, before.size, before.stride,
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
        piece = _piece(entries[0], state.layout)
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
    dims = ((), ((FEATURES,) if channels > 1 else ()) + offsets,
            tuple(Piece(axis, stride[axis], blocks[axis]) for axis in range(2)))
    return FieldState(Layout(dims[len(dims) - len(node.output_shape):], padded, state.layout.scrambled), field)


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
            if position not in homes and any(_piece(e, state.layout).axis == axis for e in entries if e != FEATURES):
                raise Undefined(f"not covered: {rules.describe_op(node)} folds a tensor whose positions are not in "
                                "its kernel and block dimensions")
        values = {}
        for position, role in homes.items():
            pieces = [_piece(e, state.layout) for e in dims[position] if e != FEATURES]
            pieces = [p for p in pieces if p.axis == axis] if all(p.axis == axis for p in pieces) else None
            if pieces is None:
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
    return _replay_groups(call, [_fold_sources(call.node, call.inputs[0])])


def _replay_groups(call: ReplayCall, groups: Sequence[Sequence[Sequence[Sequence[int]]]]) -> Any:
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


# ------------------------------------------------------------------------------------------------ mixing


def _dim_digits(entries: Sequence[Any], layout: Layout, axis: int) -> list[Piece]:
    return [piece for piece in (_piece(e, layout) for e in entries if e != FEATURES) if piece.axis == axis]


Key = tuple[tuple[str, tuple[int, ...]], ...]  # (letter, digits of the axis in that letter's dimension)


def _operand_groups(letters: str, layout: Layout, out_letters: str, out_dims: Sequence[Sequence[Any]],
                    out_layout: Layout, axis: int) -> tuple[set[str], dict[Key, list[int]]] | None:
    """The operand's units along ``axis``, grouped by the digits it shares with the output (the letters the output
    keeps with this axis's pieces); the other digits are mixed. None: the operand does not hold the axis."""
    dims = rules.broadcast_dims(layout.dims, len(letters))
    constrained: list[tuple[str, list[Piece]]] = []
    free: list[Piece] = []
    for letter, entries in zip(letters, dims, strict=True):
        pieces = _dim_digits(entries, layout, axis)
        if not pieces:
            continue
        shared = _dim_digits(out_dims[out_letters.index(letter)], out_layout, axis) if letter in out_letters else []
        if shared:
            if [p.count for p in pieces] != [p.count for p in shared]:
                raise Undefined("pairs up dimensions that split an axis differently")
            constrained.append((letter, pieces))
        else:
            free += pieces
    if not constrained and not free:
        return None
    groups: dict[Key, list[int]] = {}
    n = layout.grid[axis]
    keyed = [(letter, piece) for letter, pieces in constrained for piece in pieces]
    for digits in itertools.product(*(range(piece.count) for _, piece in keyed)):
        base = sum(piece.coeff * i for (_, piece), i in zip(keyed, digits, strict=True))
        key = _key([letter for letter, _ in keyed], digits)
        for rest in itertools.product(*(range(p.count) for p in free)):
            unit = base + sum(p.coeff * i for p, i in zip(free, rest, strict=True))
            if 0 <= unit < n:
                groups.setdefault(key, []).append(unit)
    return {letter for letter, _ in constrained}, groups


def _key(letters: Sequence[str], digits: Sequence[int]) -> Key:
    collected: dict[str, list[int]] = {}
    for letter, digit in zip(letters, digits, strict=True):
        collected.setdefault(letter, []).append(digit)
    return tuple(sorted((letter, tuple(values)) for letter, values in collected.items()))


def _output_units(out_letters: str, out_dims: Sequence[Sequence[Any]], layout: Layout, axis: int) -> list[Key]:
    """The output's digits along ``axis`` for every unit, which must each appear exactly once."""
    keyed = [(letter, piece) for letter, entries in zip(out_letters, out_dims, strict=True)
             for piece in _dim_digits(entries, layout, axis)]
    n = layout.grid[axis]
    keys: list[Key | None] = [None] * n
    for digits in itertools.product(*(range(piece.count) for _, piece in keyed)):
        unit = sum(piece.coeff * i for (_, piece), i in zip(keyed, digits, strict=True))
        if not 0 <= unit < n or keys[unit] is not None:
            raise Undefined("gives a map whose units it does not hold exactly once")
        keys[unit] = _key([letter for letter, _ in keyed], digits)
    if any(key is None for key in keys):
        raise Undefined("gives a map whose units it does not hold exactly once")
    return keys  # type: ignore[return-value]


def mixing_groups(letters_in: Sequence[str], out_letters: str, states: Sequence[FieldState | None],
                  out_dims: Sequence[Sequence[Any]], out_layout: Layout) -> list[list[list[list[int]] | None]]:
    """For each operand, per axis, per output unit: the operand's units that it mixes into that unit (None for an
    operand that does not hold the axis)."""
    result: list[list[list[list[int]] | None]] = []
    keys = [_output_units(out_letters, out_dims, out_layout, axis) for axis in range(out_layout.rank)]
    for letters, state in zip(letters_in, states, strict=True):
        per_axis: list[list[list[int]] | None] = []
        for axis in range(out_layout.rank):
            found = None if state is None else _operand_groups(letters, state.layout, out_letters, out_dims,
                                                               out_layout, axis)
            if found is None:
                per_axis.append(None)
                continue
            shared, groups = found
            per_axis.append([groups.get(tuple(item for item in key if item[0] in shared), []) for key in keys[axis]])
        result.append(per_axis)
    return result


def _split_mixing(node: OpNode, letters_in: Sequence[str], out_letters: str, states: Sequence[FieldState | None],
                  out_dims: tuple[tuple[Any, ...], ...], query: FieldState) -> FieldState:
    """A contraction or attention over a layout with pieces: every unit sees the hull of what it mixes."""
    out_layout = Layout(out_dims, query.layout.grid, any(s.layout.scrambled for s in states if s is not None))
    groups = mixing_groups(letters_in, out_letters, states, out_dims, out_layout)
    result = []
    context = any(s.field.global_context for s in states if s is not None)
    for axis in range(out_layout.rank):
        per_unit: list[list[spans.Span]] = [[] for _ in range(out_layout.grid[axis])]
        for state, per_axis in zip(states, groups, strict=True):
            if state is None:
                continue
            members = per_axis[axis]
            if members is None:
                if not state.field.position_independent:
                    raise Undefined("mixes a tensor that has lost a spatial axis")
                whole = (-state.field.padding[axis], -state.field.padding[axis] + state.field.size[axis] - 1)
                for units in per_unit:
                    units.append(whole)
                continue
            operand = field_spans(state.field, state.layout.grid)[axis]
            for units, sources in zip(per_unit, members, strict=True):
                units += [operand[v] for v in sources]
        if any(not units for units in per_unit):
            raise Undefined("gives units that depend on no input position")
        result.append(tuple(spans.hull(units) for units in per_unit))
    unit_spans = tuple(result)
    base = replace(query.field, global_context=context, reduced=False, whole=False)
    if all(len(set(axis_spans)) == 1 for axis_spans in unit_spans):  # every unit sees the same: global mixing
        size = tuple(last - first + 1 for first, last in (axis_spans[0] for axis_spans in unit_spans))
        padding = tuple(-first for first, _ in (axis_spans[0] for axis_spans in unit_spans))
        return FieldState(out_layout, replace(base, size=size, padding=padding, whole=True, global_context=True,
                                              spans=None))
    return FieldState(out_layout, with_spans(base, unit_spans, query.field.stride))


def _needs_split_rule(states: Sequence[FieldState | None]) -> bool:
    """Pieces in some operand, or operands on different grids (spatial-reduction attention)."""
    present = [state for state in states if state is not None and not state.field.reduced]
    return any(state.layout.split or state.field.spans is not None for state in present) or len(
        {state.field.stride for state in present}) > 1


def _letters_of(node: OpNode, inputs: Sequence[FieldState]) -> tuple[list[str], str, list[FieldState | None]]:
    letters_in, letters_out = node.attrs["equation"]
    states = [rules.state_of(node, inputs, producer) for producer in node.attrs.get("operands", ())]
    return list(letters_in), letters_out, states


def _einsum_out_dims(letters_in: Sequence[str], letters_out: str, states: Sequence[FieldState | None]
                     ) -> tuple[tuple[Any, ...], ...]:
    """The output's dimensions: each letter takes the entries of the first operand holding positions there;
    positions paired with the same digits of positions already placed (attention scores) are dropped."""
    entries_of: dict[str, tuple[Any, ...]] = {}
    for letters, state in zip(letters_in, states, strict=True):
        if state is None:
            continue
        for letter, entries in zip(letters, rules.broadcast_dims(state.layout.dims, len(letters)), strict=True):
            if any(e != FEATURES for e in entries) and letter not in entries_of:
                entries_of[letter] = entries
    out_dims: list[tuple[Any, ...]] = []
    placed: set[tuple[int, int]] = set()
    for letter in letters_out:
        entries = entries_of.get(letter, ())
        digits = {(e.axis, e.coeff) if isinstance(e, Piece) else (e, 1) for e in entries if e != FEATURES}
        if digits & placed:
            entries = ()
        placed |= digits
        out_dims.append(entries)
    return tuple(out_dims)


def einsum_like(node: OpNode, inputs: Sequence[FieldState]) -> FieldState:
    """matmul, einsum: as :func:`rules.einsum_like`; over split axes, or operands on different grids, every output
    unit sees the hull of the operand units it mixes."""
    equation = node.attrs.get("equation")
    if equation is None:
        return rules.einsum_like(node, inputs)
    letters_in, letters_out, states = _letters_of(node, inputs)
    if len(states) != len(letters_in) or not _needs_split_rule(states):
        return rules.einsum_like(node, inputs)
    out_dims = _einsum_out_dims(letters_in, letters_out, states)
    query = next(state for state in states if state is not None)
    try:
        return _split_mixing(node, letters_in, letters_out, states, out_dims, query)
    except Undefined as exc:
        raise Undefined(f"not covered: {rules.describe_op(node)} {exc}") from exc


def _attention_letters(node: OpNode) -> tuple[list[str], str]:
    """q, k, v and output letters of attention over ``sequence_dim``: shared batch letters, the query positions
    x, the key positions z, features e (q, k) and f (v, output)."""
    ndim = len(node.attrs["shapes"][0])
    sequence = node.attrs.get("sequence_dim", -2) % ndim
    batch = iter("ABCDGHIJ")
    common = ["" if d in (sequence, ndim - 1) else next(batch) for d in range(ndim)]

    def word(position: str, feature: str) -> str:
        return "".join(position if d == sequence else feature if d == ndim - 1 else common[d] for d in range(ndim))

    return [word("x", "e"), word("z", "e"), word("z", "f")], word("x", "f")


def attention(node: OpNode, inputs: Sequence[FieldState]) -> FieldState:
    """scaled_dot_product_attention, nn.MultiheadAttention: as :func:`rules.attention`; over windows (split axes)
    or with keys on another grid (spatial-reduction attention), each query sees the hull of its own field and the
    fields of the keys and values it attends to."""
    states = [rules.state_of(node, inputs, producer) for producer in node.attrs.get("operands", ())]
    if len(states) != 3 or not _needs_split_rule(states) or "shapes" not in node.attrs:
        return rules.attention(node, inputs)
    letters_in, letters_out = _attention_letters(node)
    query = states[0] or next(state for state in states if state is not None)
    out_dims = tuple(rules.broadcast_dims(query.layout.dims, len(letters_out)))
    try:
        return _split_mixing(node, letters_in, letters_out, states, out_dims, query)
    except Undefined as exc:
        raise Undefined(f"not covered: {rules.describe_op(node)} {exc}") from exc


def replay_mixing(call: ReplayCall) -> Any:
    """Split-axis mixing on the one-channel map: each output unit sums the units of its groups; otherwise as
    analysed (a sum where every position is mixed, the identity where none is)."""
    node = call.node
    states = [rules.state_of(node, call.inputs, producer) for producer in node.attrs.get("operands", ())]
    if not _needs_split_rule(states) or call.output.field.position_independent:
        return rules.replay_as_analysed(call)
    if len({state.layout.grid for state in states if state is not None}) > 1:
        raise Undefined(f"the check does not cover {rules.describe_op(node)}: its operands lie on different grids")
    if node.op in ("attention", "multihead_attention"):
        letters_in, letters_out = _attention_letters(node)
    else:
        letters_in, letters_out, _ = _letters_of(node, call.inputs)
    groups = mixing_groups(letters_in, letters_out, states, call.output.layout.dims, call.output.layout)
    present = [per_axis for per_axis, state in zip(groups, states, strict=True) if state is not None]
    if any(members is None for per_axis in present for members in per_axis):
        raise Undefined(f"the check does not cover {rules.describe_op(node)}: an operand has lost a spatial axis")
    return _replay_groups(call, present)  # type: ignore[arg-type]


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
    items = list(index) if isinstance(index, tuple) else [index]
    if any(not (item is None or item is Ellipsis or isinstance(item, slice) or type(item) is int) for item in items):
        return NotImplemented
    if any(isinstance(item, slice) and not all(v is None or type(v) is int for v in (item.start, item.stop, item.step))
           for item in items) or items.count(Ellipsis) > 1:
        return NotImplemented
    consumed = sum(1 for item in items if item is not None and item is not Ellipsis)
    if consumed > x.dim():
        return NotImplemented
    if Ellipsis in items:
        position = items.index(Ellipsis)
        items[position:position + 1] = [slice(None)] * (x.dim() - consumed)
    items += [slice(None)] * (x.dim() - sum(1 for item in items if item is not None))
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


__all__ = ["attention", "einsum_like", "folded", "replay_mixing", "reshaped", "rolled", "split_reshape", "unfolded",
           "window_ops"]
