"""The receptive-field and replay rules that several operation-table entries share. Pure Python (the replays
import torch inside).

A field rule takes the node and its inputs' states (layout and field) and returns the output's state, or raises
``Undefined`` naming the operation and why. A replay rule acts on one-channel float64 maps ``(1, 1, *grid)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from fractions import Fraction
from typing import Any

from resnet_inspect.ops import spans
from resnet_inspect.ops.fields import (
    FEATURES,
    DimAxes,
    DimEntry,
    Layout,
    NodeField,
    Undefined,
    field_spans,
    merge_fields,
    number,
    permute_layout,
    reshape_layout,
    whole_axes,
    whole_map,
    window,
)
from resnet_inspect.ops.resampling import _source_span, _source_step
from resnet_inspect.ops.table import FieldState, ReplayCall
from resnet_inspect.records import OpNode


def describe_op(node: OpNode) -> str:
    return f"{node.name} ({node.type})"


def _spatial(axes: DimAxes) -> bool:
    return any(axis != FEATURES for axis in axes)


def state_of(node: OpNode, inputs: Sequence[FieldState], producer: int | None) -> FieldState | None:
    """The input state that node ``producer`` gave (None for an untracked argument)."""
    if producer is None or producer not in node.inputs:
        return None
    return inputs[node.inputs.index(producer)]


def _grid(layout: Layout, shape: Sequence[int]) -> tuple[int, ...]:
    """Each axis's size in ``shape``, read from the dimension that holds it alone (merged axes keep theirs)."""
    grid = list(layout.grid)
    for dim, axes in enumerate(layout.dims):
        spatial = [a for a in axes if a != FEATURES]
        if len(spatial) == 1 and len(axes) == 1 and dim < len(shape) and isinstance(spatial[0], int):
            grid[spatial[0]] = shape[dim]
    return tuple(grid)


def _output_layout(node: OpNode, layout: Layout) -> Layout:
    return layout.with_grid(_grid(layout, node.output_shape))


# ------------------------------------------------------------------------------------------ position-wise


def broadcast_dims(dims: tuple[DimAxes, ...], ndim: int) -> tuple[DimAxes, ...]:
    """Broadcasting aligns shapes on the right: missing leading dimensions hold no axis."""
    return ((),) * (ndim - len(dims)) + dims if ndim >= len(dims) else dims[len(dims) - ndim:]


def input_grid(inputs: Sequence[FieldState]) -> tuple[int, ...]:
    """The spatial size of the (first non-reduced) input, before the operation."""
    return next((state for state in inputs if not state.field.reduced), inputs[0]).layout.grid


def merged(node: OpNode, inputs: Sequence[FieldState]) -> FieldState:
    """Inputs joined position by position (``x + y``, ``x * gate``, a concatenation along channels).

    Reduced inputs (one value per channel, like a squeeze-and-excitation gate) broadcast over the map and add
    global context; the other inputs must hold the spatial axes in the same dimensions.
    """
    ndim = len(node.output_shape)
    local = [state for state in inputs if not state.field.reduced] or list(inputs)
    dims = [broadcast_dims(state.layout.dims, ndim) for state in local]
    if any(d != dims[0] for d in dims):
        raise Undefined(f"not covered: {describe_op(node)} joins tensors whose spatial axes lie in different "
                        "dimensions")
    field = inputs[0].field if len(inputs) == 1 else merge_fields(node.name, [state.field for state in inputs])
    layout = Layout(dims[0], local[0].layout.grid, any(state.layout.scrambled for state in local))
    return FieldState(_output_layout(node, layout), field)


def position_wise(node: OpNode, inputs: Sequence[FieldState]) -> FieldState:
    """Element-wise operations (activations, BatchNorm in eval, add, mul, dropout): k = 1, s = 1."""
    return merged(node, inputs)


# ------------------------------------------------------------------------------------------------ windows


def require_canonical(node: OpNode, state: FieldState, rank: int) -> None:
    layout = state.layout
    if layout.rank != rank or not layout.canonical:
        raise Undefined(f"not covered: {describe_op(node)} runs on a tensor whose {layout.rank} spatial axes are "
                        f"not its last {rank} dimensions in order")


def windowed(node: OpNode, inputs: Sequence[FieldState]) -> FieldState:
    """Convolution and pooling: r' = r + (k' - 1) S, S' = S s, P' = P + p S (ceil_mode adds a window on the right
    and changes none of the three)."""
    state = merged(node, inputs)
    geometry = node.geometry
    require_canonical(node, state, geometry.rank)
    field = window(state.field, geometry.effective_kernel, geometry.stride, geometry.padding, geometry.padding_mode)
    return FieldState(_output_layout(node, state.layout), field)


def transposed(node: OpNode, inputs: Sequence[FieldState]) -> FieldState:
    """Transposed convolution, output x fed by inputs m with x = m s + t d - p: a rational stride S / s,
    r' = r + (k' - 1) S / s, P' = P + (k' - 1 - p) S / s (torch-scan's convention; exact at every s-th unit)."""
    state = merged(node, inputs)
    geometry = node.geometry
    require_canonical(node, state, geometry.rank)
    field = state.field
    if field.spans is not None:
        raise Undefined(f"not covered: {describe_op(node)} after windowed attention or a roll")
    steps = [Fraction(S) / s for S, s in zip(field.stride, geometry.stride, strict=True)]
    if field.position_independent:
        result = replace(field, stride=tuple(number(v) for v in steps))
    else:
        result = replace(
            field,
            size=tuple(number(r + (k - 1) * step) for r, k, step in
                       zip(field.size, geometry.effective_kernel, steps, strict=True)),
            stride=tuple(number(v) for v in steps),
            padding=tuple(number(P + (k - 1 - p) * step) for P, k, p, step in
                          zip(field.padding, geometry.effective_kernel, geometry.padding, steps, strict=True)),
            exact=field.exact and all(s == 1 for s in geometry.stride),
        )
    return FieldState(_output_layout(node, state.layout), result)


def adaptive(node: OpNode, inputs: Sequence[FieldState]) -> FieldState:
    """Adaptive pooling: a plain pool with k = s = i / o when o divides i; o = 1 everywhere is global pooling."""
    state = merged(node, inputs)
    rank = node.geometry.rank
    require_canonical(node, state, rank)
    sizes = input_grid(inputs)
    target = node.geometry.output_size or (None,) * rank
    outputs = tuple(size if wanted is None else wanted for size, wanted in zip(sizes, target, strict=True))
    layout = state.layout.with_grid(outputs)
    if all(o == 1 for o in outputs):
        return FieldState(layout, whole_map(state.field, sizes, reduced=True))
    if any(sizes[a] % outputs[a] for a in range(rank)):
        raise Undefined(f"not covered: {describe_op(node)} pools {'x'.join(map(str, sizes))} to "
                        f"{'x'.join(map(str, outputs))} with windows of unequal size")
    kernel = tuple(sizes[a] // outputs[a] for a in range(rank))
    return FieldState(layout, window(state.field, kernel, kernel, (0,) * rank))


def padded(node: OpNode, inputs: Sequence[FieldState]) -> FieldState:
    """Explicit padding (``F.pad``, ``ZeroPad2d``, ``ReflectionPad2d``): k = 1, s = 1, leading padding p on every
    padded spatial axis; padding only channels is position-wise."""
    state = merged(node, inputs)
    pads = tuple(node.attrs.get("pads", ()))
    mode = node.attrs.get("mode", "constant")
    ndim = len(state.layout.dims)
    before, after = [0] * state.layout.rank, [0] * state.layout.rank
    for pair_index in range(len(pads) // 2):
        dim = ndim - 1 - pair_index
        axes = [a for a in state.layout.dims[dim] if a != FEATURES] if dim >= 0 else []
        start, end = pads[2 * pair_index], pads[2 * pair_index + 1]
        if not axes or (start, end) == (0, 0):
            continue
        if len(axes) != 1 or len(state.layout.dims[dim]) != 1 or not isinstance(axes[0], int):
            raise Undefined(f"not covered: {describe_op(node)} pads a dimension holding several spatial axes")
        before[axes[0]], after[axes[0]] = start, end
    layout = _output_layout(node, state.layout)
    field = state.field
    # Units added to a map whose units have their own spans, or to a channels-last or token map (where Swin cuts
    # its windows; a convolution's NCHW map keeps Distill's convention that padding extends the field), read
    # nothing: a window holding them sees only its real units.
    own_spans = field.spans is not None or not state.layout.canonical
    if own_spans and not field.position_independent and mode == "constant" and (any(before) or any(after)):
        return FieldState(layout, _padded_spans(node, field, input_grid(inputs), before, after))
    padding_mode = "zeros" if mode == "constant" else str(mode)
    field = window(field, (1,) * len(before), (1,) * len(before), before, padding_mode)
    return FieldState(layout, field)


def _padded_spans(node: OpNode, field: NodeField, grid: Sequence[int], before: Sequence[int],
                  after: Sequence[int]) -> NodeField:
    """Constant padding, unit by unit: the new units read no input position (Swin's map padded to a multiple of
    the window), so the windows that hold them see only their real units."""
    if any(p < 0 for p in (*before, *after)):
        raise Undefined(f"not covered: {describe_op(node)} crops a map whose units have their own fields")
    try:
        current = field_spans(field, grid)
    except Undefined as exc:
        raise Undefined(f"not covered: {describe_op(node)}: {exc}") from exc
    unit_spans = tuple((spans.EMPTY,) * start + tuple(axis_spans) + (spans.EMPTY,) * end
                       for axis_spans, start, end in zip(current, before, after, strict=True))
    padding = tuple(number(P + p * S) for P, p, S in zip(field.padding, before, field.stride, strict=True))
    return replace(field, padding=padding, spans=unit_spans)


# ------------------------------------------------------------------------------------------------ layouts


def reshaped(node: OpNode, inputs: Sequence[FieldState]) -> FieldState:
    """view, reshape, flatten, unflatten, squeeze, unsqueeze: the axes follow the dimensions they land in."""
    state = inputs[0]
    try:
        layout = reshape_layout(state.layout, node.input_shapes[0], node.output_shape)
    except Undefined as exc:
        raise Undefined(f"not covered: {describe_op(node)} {exc}") from exc
    return FieldState(layout, state.field)


def permuted(node: OpNode, inputs: Sequence[FieldState]) -> FieldState:
    """permute, transpose, movedim: the axes move with their dimensions."""
    state = inputs[0]
    order = node.attrs.get("order")
    if order is None or len(order) != len(state.layout.dims):
        raise Undefined(f"not covered: {describe_op(node)} reorders dimensions in a way the tool cannot read")
    return FieldState(permute_layout(state.layout, order), state.field)


def along_dim(node: OpNode, inputs: Sequence[FieldState]) -> FieldState:
    """chunk, split, unbind, glu along a dimension: position-wise unless that dimension is spatial."""
    state = inputs[0] if len(inputs) == 1 else merged(node, inputs)
    dim = node.attrs.get("dim")
    dims = state.layout.dims
    if dim is not None and -len(dims) <= dim < len(dims) and _spatial(dims[dim]):
        raise Undefined(f"not covered: {describe_op(node)} cuts along a spatial axis")
    if node.attrs.get("removes_dim") and dim is not None:
        position = dim % len(dims)
        state = FieldState(replace(state.layout, dims=dims[:position] + dims[position + 1:]), state.field)
    return FieldState(_output_layout(node, state.layout), state.field)


def concatenated(node: OpNode, inputs: Sequence[FieldState]) -> FieldState:
    """cat and stack: along channels a merge; along a spatial dimension the positions shift (``scrambled``)."""
    dim = node.attrs.get("dim", 0)
    ndim_in = len(inputs[0].layout.dims)
    stack = node.attrs.get("stack", False)
    dims = inputs[0].layout.dims
    spatial = not stack and -ndim_in <= dim < ndim_in and _spatial(dims[dim])
    if stack:
        position = dim % (ndim_in + 1)
        inputs = [FieldState(replace(state.layout, dims=(*state.layout.dims[:position], (),
                                                         *state.layout.dims[position:])), state.field)
                  for state in inputs]
    if not spatial:
        return merged(node, inputs)
    field = merge_fields(node.name, [state.field for state in inputs])
    layout = replace(inputs[0].layout, scrambled=True)
    return FieldState(layout, field)


def indexed(node: OpNode, inputs: Sequence[FieldState]) -> FieldState:
    """``x[...]``: slices with a step subsample a spatial axis (k = 1, stride s, padding -start); an integer
    removes a dimension; picking one position of a token-mixed map gives a reduced value."""
    state = inputs[0]
    index = node.attrs.get("index")
    if index is None:
        raise Undefined(f"not covered: {describe_op(node)} indexes with tensors along a spatial axis")
    dims, grid = list(state.layout.dims), list(state.layout.grid)
    shape = node.input_shapes[0]
    expanded = _expand_index(index, len(dims))
    out_dims: list[DimAxes] = []
    stride, offset = [1] * len(grid), [0] * len(grid)
    picked: list[DimEntry] = []
    position = 0
    for item in expanded:
        if item == "new":
            out_dims.append(())
            continue
        axes = dims[position]
        size = shape[position] if position < len(shape) else 1
        position += 1
        spatial = [a for a in axes if a != FEATURES]
        if item == "all":
            out_dims.append(axes)
        elif item == "int":
            picked += spatial
        elif item == "tensor":
            if spatial:
                raise Undefined(f"not covered: {describe_op(node)} indexes a spatial axis with a tensor")
            out_dims.append(axes)
        else:
            sliced = _sliced_axis(node, state.layout, axes, slice(*item).indices(size))
            if sliced is not None:
                axis, stride[axis], offset[axis] = sliced
            out_dims.append(axes)
    field = state.field
    if picked:
        if not field.position_independent:
            raise Undefined(f"not covered: {describe_op(node)} picks single positions of a spatial axis")
        remaining = {a for axes in out_dims for a in axes if a != FEATURES}
        layout = Layout(tuple(out_dims), tuple(grid), state.layout.scrambled)
        return FieldState(layout, replace(field, reduced=True, whole=False) if not remaining else field)
    if any(s != 1 or o for s, o in zip(stride, offset, strict=True)):
        field = window(field, (1,) * len(grid), stride, tuple(-o for o in offset))
    layout = Layout(tuple(out_dims), tuple(grid), state.layout.scrambled)
    return FieldState(_output_layout(node, layout), field)


def _sliced_axis(node: OpNode, layout: Layout, axes: DimAxes,
                 indices: tuple[int, int, int]) -> tuple[int, int, int] | None:
    """A slice (start, stop, step) of a dimension holding ``axes``: (axis, step, start) when it subsamples one
    whole spatial axis; None when the dimension holds none, or holds others and the slice keeps every position."""
    start, _, step = indices
    spatial = [a for a in axes if a != FEATURES]
    if not spatial:
        return None
    alone = len(axes) == 1 and not layout.scrambled
    first = spatial[0]
    if alone and isinstance(first, int):
        return first, step, start
    if (start, step) != (0, 1):
        held = "part of a split axis" if alone else "merged or shifted positions"
        raise Undefined(f"not covered: {describe_op(node)} slices a dimension holding {held}")
    return None


def _expand_index(index: tuple[Any, ...], ndim: int) -> list[Any]:
    """The index as one entry per input dimension ('all', 'int', 'tensor' or slice args) plus 'new' for None."""
    consumed = sum(1 for item in index if item not in ("new", "ellipsis"))
    result: list[Any] = []
    for item in index:
        if item == "ellipsis":
            result += ["all"] * (ndim - consumed)
        else:
            result.append(item)
    used = sum(1 for item in result if item != "new")
    return result + ["all"] * (ndim - used)


# ------------------------------------------------------------------------------------------- reductions


def reduced(node: OpNode, inputs: Sequence[FieldState]) -> FieldState:
    """mean, sum, amax over some dimensions: over every spatial axis a global pooling (reduced); over channels
    position-wise; over only some spatial axes undefined."""
    state = inputs[0]
    dims = state.layout.dims
    over = node.attrs.get("dims")
    ndim = len(dims)
    chosen = set(range(ndim)) if over is None else {d % ndim for d in over}
    spatial_over = {a for d in chosen for a in dims[d] if a != FEATURES}
    all_axes = {a for axes in dims for a in axes if a != FEATURES}
    keep = node.attrs.get("keepdim", False)
    out_dims = tuple(() if d in chosen else axes for d, axes in enumerate(dims) if keep or d not in chosen)
    if not spatial_over:
        return FieldState(_output_layout(node, replace(state.layout, dims=out_dims)), state.field)
    if spatial_over != all_axes:
        raise Undefined(f"not covered: {describe_op(node)} reduces some spatial axes but not all")
    field = whole_map(state.field, state.layout.grid, reduced=True)
    return FieldState(Layout(out_dims, (1,) * state.layout.rank), field)


def normalised(node: OpNode, inputs: Sequence[FieldState]) -> FieldState:
    """LayerNorm, GroupNorm, InstanceNorm, softmax over some dimensions: statistics over spatial dimensions add
    global context to the local field; over channels it is position-wise."""
    state = merged(node, inputs)
    dims = state.layout.dims
    over = node.attrs.get("dims", ())
    if any(_spatial(dims[d]) for d in over if -len(dims) <= d < len(dims)):
        state = FieldState(state.layout, replace(state.field, global_context=True))
    return state


# ------------------------------------------------------------------------------------------- token mixing


def _mixed(node: OpNode, state: FieldState, dims: tuple[DimAxes, ...]) -> FieldState:
    """Every position mixed with every other: the field becomes the union of all units' fields."""
    remaining = {a for axes in dims for a in axes if a != FEATURES}
    layout = Layout(dims, state.layout.grid, state.layout.scrambled)
    if not remaining:
        return FieldState(layout, whole_map(state.field, state.layout.grid, reduced=True))
    field = replace(whole_map(state.field, state.layout.grid, reduced=False), global_context=True)
    return FieldState(_output_layout(node, layout), field)


def linear(node: OpNode, inputs: Sequence[FieldState]) -> FieldState:
    """A linear layer mixes its last dimension: features are position-wise; positions (a token-mixing MLP, or a
    classifier on flattened maps) are mixed."""
    state = inputs[0]
    last = state.layout.dims[-1] if state.layout.dims else ()
    if not _spatial(last):
        return FieldState(_output_layout(node, state.layout), state.field)
    keeps = FEATURES not in last and node.output_shape[-1] == node.input_shapes[0][-1]
    return _mixed(node, state, (*state.layout.dims[:-1], last if keeps else ()))


def _operand_dims(node: OpNode, inputs: Sequence[FieldState]) -> list[tuple[DimAxes, ...] | None]:
    """Each tensor operand's layout dimensions (None for one the input does not reach, such as a weight)."""
    return [None if (state := state_of(node, inputs, producer)) is None else state.layout.dims
            for producer in node.attrs.get("operands", ())]


def _first_state(node: OpNode, inputs: Sequence[FieldState]) -> FieldState:
    fields = [state.field for state in inputs]
    field = fields[0] if len(fields) == 1 else merge_fields(node.name, fields)
    local = next((state for state in inputs if not state.field.reduced), inputs[0])
    return FieldState(local.layout, field)


def einsum_like(node: OpNode, inputs: Sequence[FieldState]) -> FieldState:
    """matmul, bmm, einsum: contracting (or pairing up) positions mixes them; contracting features does not."""
    equation = node.attrs.get("equation")
    operands = _operand_dims(node, inputs)
    if equation is None or len(operands) != len(equation[0]):
        raise Undefined(f"not covered: {describe_op(node)} multiplies tensors in a way the tool cannot read")
    letters_in, letters_out = equation
    axes_of: dict[str, DimAxes] = {}
    for letters, dims in zip(letters_in, operands, strict=True):
        if dims is None:
            continue
        for letter, axes in zip(letters, broadcast_dims(dims, len(letters)), strict=True):
            if _spatial(axes):
                axes_of[letter] = axes
    contracted = {letter for letters in letters_in for letter in letters} - set(letters_out)
    mixes = any(letter in axes_of for letter in contracted)
    out_dims: list[DimAxes] = []
    seen: set[DimEntry] = set()
    for letter in letters_out:
        axes = axes_of.get(letter, ())
        if set(axes) & seen:
            mixes, axes = True, ()  # positions paired with positions (attention scores): keep the first
        seen |= set(axes)
        out_dims.append(axes)
    state = _first_state(node, inputs)
    if mixes:
        return _mixed(node, state, tuple(out_dims))
    return FieldState(_output_layout(node, replace(state.layout, dims=tuple(out_dims))), state.field)


def attention(node: OpNode, inputs: Sequence[FieldState]) -> FieldState:
    """Attention over a sequence dimension (``scaled_dot_product_attention``, ``nn.MultiheadAttention``): when the
    sequence holds positions, every output position sees every input position."""
    operands = _operand_dims(node, inputs)
    sequence = node.attrs.get("sequence_dim", -2)
    state = _first_state(node, inputs)
    mixes = any(dims is not None and len(dims) > abs(sequence) - (sequence >= 0) and _spatial(dims[sequence])
                for dims in operands)
    query = operands[0] if operands and operands[0] is not None else state.layout.dims
    if mixes:
        return _mixed(node, state, query)
    return FieldState(_output_layout(node, replace(state.layout, dims=query)), state.field)


# ------------------------------------------------------------------------------------------------ upsampling


def upsampled(node: OpNode, inputs: Sequence[FieldState]) -> FieldState:
    """interpolate / Upsample / pixel_shuffle by a factor f = o / i per axis: a rational stride S / f.

    Output unit u reads input units around a source coordinate (nearest: floor(u i / o); linear modes: the two
    neighbours (cubic: four) of (u + 1/2) / f - 1/2, or of u (i - 1) / (o - 1) with ``align_corners``). The floor
    moves by less than one input unit from pixel to pixel, so the field given is the interval that holds every
    pixel's, at most about one input stride wider than any single pixel's.
    """
    state = merged(node, inputs)
    rank = state.layout.rank
    require_canonical(node, state, rank)
    before = input_grid(inputs)
    after = tuple(node.output_shape[len(node.output_shape) - rank:])
    mode = node.attrs.get("mode", "nearest")
    align = bool(node.attrs.get("align_corners"))
    antialias = bool(node.attrs.get("antialias"))
    reach = {"nearest": 0, "nearest-exact": 0, "linear": 1, "bilinear": 1, "trilinear": 1, "bicubic": 3}.get(mode)
    if reach is None:
        raise Undefined(f"not covered: {describe_op(node)} interpolates with mode {mode!r}")
    field = state.field
    if field.spans is not None:
        raise Undefined(f"not covered: {describe_op(node)} after windowed attention or a roll")
    layout = state.layout.with_grid(after)
    steps = [_source_step(i, o, align and reach > 0) for i, o in zip(before, after, strict=True)]
    if field.position_independent:
        return FieldState(layout, replace(field, stride=tuple(number(S * step) for S, step in
                                                               zip(field.stride, steps, strict=True))))
    size, stride, padding = [], [], []
    for axis in range(rank):
        S, P, r = Fraction(field.stride[axis]), Fraction(field.padding[axis]), field.size[axis]
        low, high = _source_span(before[axis], after[axis], mode, reach, align, antialias)
        size.append(number(r + (high - low) * S))
        stride.append(number(steps[axis] * S))
        padding.append(number(P - low * S))
    exact = field.exact and all(o == i for i, o in zip(before, after, strict=True)) and reach == 0
    return FieldState(layout, replace(field, size=tuple(size), stride=tuple(stride), padding=tuple(padding),
                                      exact=exact))


def unshuffled(node: OpNode, inputs: Sequence[FieldState]) -> FieldState:
    """pixel_unshuffle by r: each output unit gathers an r x r block, a window with k = s = r."""
    state = merged(node, inputs)
    rank = state.layout.rank
    require_canonical(node, state, rank)
    factor = int(node.attrs.get("factor", 1))
    field = window(state.field, (factor,) * rank, (factor,) * rank, (0,) * rank)
    return FieldState(_output_layout(node, state.layout), field)


# -------------------------------------------------------------------------------------------- replay rules


def replay_identity(call: ReplayCall) -> Any:
    (value,) = call.values
    grid = call.output.layout.grid
    if tuple(value.shape[2:]) != grid:
        raise Undefined(f"the check does not cover {describe_op(call.node)}: it changes the grid")
    return value


def replay_ones_window(call: ReplayCall) -> Any:
    """A convolution or pool as a one-channel window sum with all-ones weights, its kernel, stride, padding and
    dilation. The end is padded generously and the result cropped to the captured size (ceil_mode, asymmetric
    padding)."""
    import torch
    import torch.nn.functional as F

    (value,) = call.values
    geometry = call.node.geometry
    rank = geometry.rank
    output = call.output.layout.grid
    size = value.shape[2:]
    pads: list[int] = []
    for axis in reversed(range(rank)):  # F.pad lists the last axis first
        extra = max(0, (output[axis] - 1) * geometry.stride[axis] + geometry.effective_kernel[axis]
                    - geometry.padding[axis] - size[axis])
        pads += [geometry.padding[axis], extra]
    padded_value = F.pad(value, pads)
    weight = torch.ones((1, 1, *geometry.kernel), dtype=value.dtype)
    convolve = (F.conv1d, F.conv2d, F.conv3d)[rank - 1]
    result = convolve(padded_value, weight, stride=geometry.stride, dilation=geometry.dilation)
    return result[(slice(None), slice(None), *(slice(0, n) for n in output))]


def replay_transposed(call: ReplayCall) -> Any:
    import torch
    import torch.nn.functional as F

    (value,) = call.values
    geometry = call.node.geometry
    rank = geometry.rank
    weight = torch.ones((1, 1, *geometry.kernel), dtype=value.dtype)
    function = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[rank - 1]
    return function(value, weight, stride=geometry.stride, padding=geometry.padding,
                    output_padding=geometry.output_padding, dilation=geometry.dilation)


def replay_adaptive(call: ReplayCall) -> Any:
    import torch.nn.functional as F

    (value,) = call.values
    rank = value.dim() - 2
    pool = (F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d)[rank - 1]
    # torch's stubs type output_size as a fixed-length tuple per rank; the grid has one entry per spatial axis
    return pool(value, call.output.layout.grid)  # type: ignore[arg-type]


def replay_pad(call: ReplayCall) -> Any:
    """Padding on the one-channel map, in the node's own mode (reflect and circular reach across the border)."""
    import torch.nn.functional as F

    (value,) = call.values
    layout = call.inputs[0].layout
    pads = list(call.node.attrs.get("pads", ()))
    mode = call.node.attrs.get("mode", "constant")
    rank = layout.rank
    axis_pads = [[0, 0] for _ in range(rank)]
    ndim = len(layout.dims)
    for pair_index in range(len(pads) // 2):
        dim = ndim - 1 - pair_index
        axes = whole_axes(layout.dims[dim]) if dim >= 0 else []
        if axes:
            axis_pads[axes[0]] = [pads[2 * pair_index], pads[2 * pair_index + 1]]
    flat = [p for axis in reversed(range(rank)) for p in axis_pads[axis]]
    if mode == "constant" or not any(flat):
        return F.pad(value, flat)
    return F.pad(value, flat, mode=mode)


def replay_subsample(call: ReplayCall) -> Any:
    """Strided slicing of the spatial axes, read back from the field's change of stride and padding."""
    (value,) = call.values
    before, after = call.inputs[0].field, call.output.field
    index: list[slice] = [slice(None), slice(None)]
    for axis in range(call.output.layout.rank):
        step = int(Fraction(after.stride[axis]) / Fraction(before.stride[axis]))
        start = int(Fraction(before.padding[axis] - after.padding[axis]) / Fraction(before.stride[axis]))
        index.append(slice(start, None, step))
    result = value[tuple(index)]
    return result[(slice(None), slice(None), *(slice(0, n) for n in call.output.layout.grid))]


def replay_mix(call: ReplayCall) -> Any:
    """Every output position depends on every input position: the sum, broadcast over the output grid."""
    total = sum(value.sum() for value in call.values)
    grid = call.output.layout.grid if not call.output.field.reduced else (1,) * call.output.layout.rank
    return total.reshape((1, 1) + (1,) * len(grid)).expand((1, 1, *grid))


def replay_as_analysed(call: ReplayCall) -> Any:
    """Operations that mix positions only on some inputs (a linear layer, a matrix product, attention): a sum
    where the analysis found the positions mixed, the identity where it found them untouched."""
    mixes = call.output.field.position_independent and not all(
        state.field.position_independent for state in call.inputs)
    return replay_mix(call) if mixes else replay_identity(call)


def replay_upsample(call: ReplayCall) -> Any:
    import torch.nn.functional as F

    (value,) = call.values
    mode = call.node.attrs.get("mode", "nearest")
    mode = {"bilinear": "linear", "trilinear": "linear"}.get(mode, mode)
    rank = value.dim() - 2
    if mode == "linear":
        mode = ("linear", "bilinear", "trilinear")[rank - 1]
    options = {} if mode.startswith("nearest") else {"align_corners": bool(call.node.attrs.get("align_corners")),
                                                     "antialias": bool(call.node.attrs.get("antialias"))}
    return F.interpolate(value, size=call.output.layout.grid, mode=mode, **options)


def replay_unshuffle(call: ReplayCall) -> Any:
    import torch.nn.functional as F

    (value,) = call.values
    factor = int(call.node.attrs.get("factor", 1))
    rank = value.dim() - 2
    pool = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[rank - 1]
    return pool(value, factor, factor) * factor**rank


__all__ = [
    "adaptive", "along_dim", "attention", "broadcast_dims", "concatenated", "describe_op", "einsum_like", "indexed",
    "linear", "merged", "normalised", "padded", "permuted", "position_wise", "reduced", "replay_adaptive",
    "replay_as_analysed", "replay_identity", "replay_mix", "replay_ones_window", "replay_pad", "replay_subsample",
    "replay_transposed", "replay_unshuffle", "replay_upsample", "reshaped", "state_of", "transposed", "unshuffled",
    "upsampled", "windowed",
]
