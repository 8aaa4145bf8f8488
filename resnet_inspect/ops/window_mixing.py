"""Attention and contractions over split spatial axes: which units each output unit mixes, and its field.

A contraction (``q @ k^T``, ``attn @ v``, ``einsum``) or attention mixes the positions it contracts and keeps
apart those it shares with its output (the batch of windows). Over a layout with pieces
(:mod:`resnet_inspect.ops.windows`) that is a window, a window plus its halo, units spread over the map, or every
unit: each output unit sees the hull of its own field and the fields of the units it mixes. Operands on different
grids (keys from a strided convolution) need no common grid: the union is taken in input pixels.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from resnet_inspect.ops import rules, spans
from resnet_inspect.ops.fields import FEATURES, Layout, Piece, Undefined, field_spans, with_spans
from resnet_inspect.ops.table import FieldState, ReplayCall
from resnet_inspect.ops.windows import piece_of, replay_groups
from resnet_inspect.records import OpNode


def _dim_digits(entries: Sequence[Any], layout: Layout, axis: int) -> list[Piece]:
    return [piece for piece in (piece_of(e, layout) for e in entries if e != FEATURES) if piece.axis == axis]


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
                whole = field_spans(state.field, (1,) * state.layout.rank)[axis][0]  # the same for every unit
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
    return replay_groups(call, present)  # type: ignore[arg-type]


__all__ = ["attention", "einsum_like", "mixing_groups", "replay_mixing"]
