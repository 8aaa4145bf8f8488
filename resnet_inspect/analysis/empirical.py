"""Receptive fields measured with gradients: the support check and the effective receptive field.

The support check replays the captured graph as a linear one-channel network (each operation as its table
entry's replay: every window a convolution with all-ones weights, element-wise ops the identity, merges a sum;
float64 on CPU) and backpropagates from the centre unit of each stage: the input positions with a nonzero
gradient are exactly that unit's theoretical field, clipped to the input. Positive weights leave no
cancellation, and the support depends only on the geometry, so one channel is enough even for ResNet-152 at
1600x1600.

The effective receptive field (Luo et al. 2016) runs the real model: the gradient magnitude of the encoder
output's centre unit with respect to the input, averaged over random inputs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from resnet_inspect.analysis.receptive_field import (
    NodeField,
    ReceptiveFieldResult,
    StageField,
    analyze_receptive_field,
    ancestors,
)
from resnet_inspect.errors import BadInputError, InspectError
from resnet_inspect.ops.fields import Number, Undefined
from resnet_inspect.ops.registry import get_op
from resnet_inspect.ops.table import FieldState, ReplayCall
from resnet_inspect.records import Capture, OpNode, Pair

if TYPE_CHECKING:
    import torch
    from torch import nn

CHECK_ATTEMPTS = 4
ERF_LEVELS = (0.5, 0.9, 0.99)


# ------------------------------------------------------------------------------------------ support check

Interval = tuple[tuple[int, int], ...]  # (first, last) input position per axis


@dataclass(frozen=True)
class StageCheck:
    """One stage's centre unit: the analytic interval (clipped to the input) against the gradient's support."""

    name: str
    unit: tuple[int, ...]  # the output unit backpropagated from: the centre of the stage's output
    analytic: Interval | None  # the field's interval clipped to the input
    measured: Interval | None  # where the input gradient is nonzero
    inside: bool  # the unit's whole field lies inside the input, so its size was measured unclipped
    reason: str | None = None  # why there is no comparison, or why the measured support is clipped
    field: Interval | None = None  # the analytic interval before clipping
    input_size: tuple[int, ...] = ()  # the input the check ran at

    @property
    def analytic_size(self) -> tuple[int, ...] | None:
        return _extent(self.analytic)

    @property
    def measured_size(self) -> tuple[int, ...] | None:
        """The measured field size: only where the field lies inside the input (a clipped support is no size)."""
        return _extent(self.measured) if self.inside else None

    @property
    def agrees(self) -> bool | None:
        """The support's ends are the field's ends; where the field spills over the input only containment.

        (A field can be sparse, e.g. after strided 1x1 convolutions: clipped, its first real tap may lie inside.)
        """
        if self.analytic is None or self.measured is None or self.field is None:
            return None
        for (start, end), (low, high), (first, last) in zip(self.field, self.analytic, self.measured, strict=True):
            if first < low or last > high:
                return False
            if (start == low and first != start) or (end == high and last != end):
                return False
        return True


@dataclass(frozen=True)
class SupportCheck:
    """The support check of every stage, at the nominal input where it holds the field, else at a larger one."""

    input_size: tuple[int, ...]  # the largest input any stage was checked at
    stages: tuple[StageCheck, ...]

    @property
    def agrees(self) -> bool | None:
        """Every stage with a defined field has exactly the gradient support the analysis predicts.

        None when no stage could be compared (every field undefined or not replayable).
        """
        verdicts = [stage.agrees for stage in self.stages if stage.agrees is not None]
        return all(verdicts) if verdicts else None

    @property
    def size(self) -> tuple[int, ...] | None:
        """The measured field size at the encoder output (the last row); None when it was clipped."""
        return self.stages[-1].measured_size if self.stages else None


def _extent(interval: Interval | None) -> tuple[int, ...] | None:
    if interval is None:
        return None
    return tuple(last - first + 1 for first, last in interval)


def _output_grid(state: FieldState) -> tuple[int, ...]:
    return (1,) * state.layout.rank if state.field.reduced else state.layout.grid


def replay_one_channel(capture: Capture, result: ReceptiveFieldResult, targets: list[int]
                       ) -> tuple[Any, dict[int, Any], dict[int, str]]:
    """Run the ancestors of ``targets`` as a linear one-channel float64 network on a zero input.

    Every operation acts as its table entry's replay says (windows as all-ones convolutions, element-wise ops as
    the identity, token mixing as a sum); merges add their inputs, except spatially reduced ones (a gate), which
    are constants here, as the analysis treats them. Returns the input (requiring grad), each node's value as a
    (1, 1, *grid) tensor, and the reason for every node that could not be replayed.
    """
    import torch

    needed: set[int] = set()
    for target in targets:
        needed |= ancestors(capture, target)
    values: dict[int, Any] = {}
    failures: dict[int, str] = {}
    image: Any = None
    for node in capture.nodes:
        if node.id not in needed:
            continue
        state = result.states.get(node.id)
        if state is None:
            failures[node.id] = result.undefined.get(node.id, f"{node.name} has no field")
            continue
        if not node.inputs:
            if image is None or tuple(image.shape[2:]) != state.layout.grid:
                tensor = torch.zeros((1, 1, *state.layout.grid), dtype=torch.float64, requires_grad=image is None)
                image = tensor if image is None else image
            values[node.id] = image if tuple(image.shape[2:]) == state.layout.grid else tensor
            continue
        failed = [failures[i] for i in node.inputs if i in failures]
        if failed:
            failures[node.id] = failed[0]
            continue
        inputs = [result.states[i] for i in node.inputs]
        grid = _output_grid(state)
        try:
            value = _replay_node(node, inputs, state, values, grid)
        except (Undefined, RuntimeError, ValueError) as exc:
            failures[node.id] = str(exc).splitlines()[0]
            continue
        if tuple(value.shape[2:]) != grid:
            failures[node.id] = (f"the one-channel replay of {node.name} gives {tuple(value.shape[2:])}, "
                                 f"not {grid}")
            continue
        values[node.id] = value
    return image, values, failures


def _replay_node(node: OpNode, inputs: list[FieldState], state: FieldState, values: dict[int, Any],
                 grid: tuple[int, ...]) -> Any:
    """One node's one-channel value from its inputs' values: the sum of the local ones through the entry's replay,
    or, when every input is spatially reduced, their total as a single unit."""
    local = [values[i] for i, s in zip(node.inputs, inputs, strict=True) if not s.field.reduced]
    if not local:  # values that depend on the whole map, however they are combined
        return sum(values[i].sum() for i in node.inputs).reshape((1, 1) + (1,) * len(grid))
    merged = local[0]
    for other in local[1:]:
        merged = merged + other  # add, multiply, concatenation: the union of the supports
    spec = get_op(node.op)
    if spec.replay is None:
        raise Undefined(f"the check does not cover {node.name} ({node.type})")
    return spec.replay(ReplayCall(node, [merged], inputs, state))


def centre_unit(field: NodeField | None, output_size: Sequence[int], input_size: Sequence[int]) -> tuple[int, ...]:
    """The unit backpropagated from: the centre of the map; on an even axis, of the two central units the one
    whose field lies inside the input, if one does."""
    unit = []
    for axis, size in enumerate(output_size):
        choices = dict.fromkeys(((size - 1) // 2, size // 2))
        fits = [u for u in choices if field is not None and _axis_inside(field, axis, u, input_size[axis])]
        unit.append(fits[0] if fits else (size - 1) // 2)
    return tuple(unit)


def _axis_inside(field: NodeField, axis: int, unit: int, side: int) -> bool:
    first = -field.padding[axis] + (0 if field.position_independent else unit * field.stride[axis])
    return first >= 0 and first + field.size[axis] - 1 <= side - 1


def _stage_check(stage: StageField, value: Any, image: Any, failure: str | None,
                 input_size: tuple[int, ...]) -> StageCheck:
    import torch

    rank = len(input_size)
    field = stage.field
    unit = centre_unit(field, stage.output_size, input_size)
    analytic = interval = None
    inside = False
    if field is not None:
        raw = field.interval(unit)
        interval = tuple((math.floor(first), math.ceil(last)) for first, last in raw)
        inside = all(interval[a][0] >= 0 and interval[a][1] <= input_size[a] - 1 for a in range(rank))
        analytic = tuple((max(interval[a][0], 0), min(interval[a][1], input_size[a] - 1)) for a in range(rank))
    if field is not None and not field.exact:
        return StageCheck(stage.name, unit, analytic, None, inside, stage.reason, interval, input_size)
    if value is None:
        return StageCheck(stage.name, unit, analytic, None, inside, failure or stage.reason or "not replayed",
                          interval, input_size)
    target = value[(0, 0, *(min(u, n - 1) for u, n in zip(unit, value.shape[2:], strict=True)))]
    (gradient,) = torch.autograd.grad(target, image, retain_graph=True, allow_unused=True)
    if gradient is None or not bool((gradient != 0).any()):
        return StageCheck(stage.name, unit, analytic, None, inside, "the stage does not depend on the input",
                          interval, input_size)
    if not torch.isfinite(gradient).all():
        raise InspectError(f"the one-channel replay overflowed at {stage.name}")
    support = gradient[0, 0] != 0
    measured = []
    for axis in range(rank):
        others = tuple(a for a in range(rank) if a != axis)
        positions = torch.nonzero(support.any(dim=others) if others else support).flatten().tolist()
        measured.append((positions[0], positions[-1]))
    reason = stage.reason if field is None else (
        None if inside else "the field spills over the input: the gradient support is clipped, not measured")
    return StageCheck(stage.name, unit, analytic, tuple(measured), inside, reason, interval, input_size)


def support_check(capture: Capture, result: ReceptiveFieldResult) -> SupportCheck:
    """Backpropagate from the centre unit of every stage of the one-channel replay and compare supports."""
    targets = [stage.node for stage in result.stages]
    image, values, failures = replay_one_channel(capture, result, targets)
    checked: dict[int, StageCheck] = {}  # the encoder output is usually also the last stage's output
    stages = []
    for stage in result.stages:
        if stage.node not in checked:
            checked[stage.node] = _stage_check(stage, values.get(stage.node), image, failures.get(stage.node),
                                               result.input_size)
        stages.append(replace(checked[stage.node], name=stage.name))
    return SupportCheck(result.input_size, tuple(stages))


def check_input_size(result: ReceptiveFieldResult) -> tuple[int, ...]:
    """An input side per axis that holds every stage's centre-unit field: r + 2|offset| + 4S, at least the input."""
    sides = list(result.input_size)
    for stage in result.stages:
        field = stage.field
        if field is None or field.position_independent:
            continue
        for axis in range(len(sides)):
            offset = abs(field.centre[axis])
            needed = math.ceil(field.size[axis]) + 2 * math.ceil(offset) + 4 * math.ceil(field.stride[axis])
            sides[axis] = max(sides[axis], needed)
    return tuple(sides)


def _spilled(check: StageCheck, field: NodeField | None) -> bool:
    """A field clipped by the input, which a larger input would hold (a position-independent one grows with it)."""
    return check.measured is not None and not check.inside and field is not None and not field.position_independent


def empirical_check(model: nn.Module, capture: Capture, result: ReceptiveFieldResult,
                    in_channels: int | None = None) -> SupportCheck:
    """The support check at the nominal input size; stages whose field spills over it are checked again at a
    larger input (grown while a field still spills), and say so. A support clipped at every size tried is
    reported as clipped, never as a measured size."""
    from resnet_inspect.capture.trace import capture as capture_at

    checked = support_check(capture, result)
    stages = {check.name: check for check in checked.stages}
    largest = checked.input_size
    fields = {stage.name: stage.field for stage in result.stages}
    pending = [check.name for check in checked.stages if _spilled(check, fields[check.name])]
    size = check_input_size(result)
    for _attempt in range(CHECK_ATTEMPTS):
        if not pending or size == result.input_size:
            break
        larger = capture_at(model, size, 1, in_channels)
        rechecked = support_check(larger, analyze_receptive_field(larger))
        largest = size
        for check in rechecked.stages:
            if check.name in pending:
                stages[check.name] = check
        pending = [name for name in pending if _spilled(stages[name], fields[name])]
        growth = max((tuple(math.ceil(s) for s in stage.field.stride) for stage in result.stages
                      if stage.field and not stage.field.position_independent), default=(1,) * len(size))
        size = tuple(side + 2 * step for side, step in zip(size, growth, strict=True))
    return SupportCheck(largest, tuple(stages[check.name] for check in checked.stages))


# --------------------------------------------------------------------------------- effective receptive field


@dataclass(frozen=True)
class ErfResult:
    """Where the gradient mass of the encoder output's centre unit lies (Luo et al. 2016).

    Radii are in input pixels around the centre of the unit's theoretical field, with the Chebyshev distance
    (a square, like the field): ``r50`` is the smallest half-width whose square holds 50% of the mass. ``ratio``
    is ``r99 / ((size - 1) / 2)``, r99 over the theoretical field's half-width (larger axis): 1.0 would mean the
    99% square fills the whole theoretical field.
    """

    input_size: Pair
    samples: int
    weights: str
    unit: Pair
    centre: tuple[float, float]
    r50: float | None  # None when the input gradient is zero everywhere: no mass, so no radius holds any share
    r90: float | None
    r99: float | None
    field_size: tuple[Number, ...] | None  # the theoretical field (NodeField.size)
    ratio: float | None
    mass: tuple[tuple[float, ...], ...]  # per input pixel, summed over channels, normalised to a total of 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "r50": self.r50, "r90": self.r90, "r99": self.r99, "ratio": self.ratio,
            "ratio_definition": "r99 / ((size - 1) / 2)", "radius": "chebyshev, input pixels",
            "centre": list(self.centre), "unit": list(self.unit), "samples": self.samples, "weights": self.weights,
            "input_size": list(self.input_size),
        }


def module_returning(model: nn.Module, capture: Capture, node: int) -> tuple[nn.Module | None, int]:
    """The outermost module call that returns ``node``'s tensor, and which call of that module it is.

    None when ``node`` is the model's own output.
    """
    if node == capture.output_node:
        return None, 0
    owners = [layer for layer in capture.layers if layer.output_node == node]
    if not owners:
        raise InspectError(f"no module returns {capture.nodes[node].name}; cannot hook it")
    owner = min(owners, key=lambda layer: (layer.depth, layer.index))
    call = sum(1 for layer in capture.layers if layer.name == owner.name and layer.index < owner.index)
    return dict(model.named_modules())[owner.name], call


def _radius(mass: Any, centre: tuple[float, float], level: float) -> float:
    """Smallest Chebyshev half-width around ``centre`` whose square holds ``level`` of the mass."""
    import torch

    rows = (torch.arange(mass.shape[0], dtype=torch.float64) - centre[0]).abs()
    columns = (torch.arange(mass.shape[1], dtype=torch.float64) - centre[1]).abs()
    distance = torch.maximum(rows[:, None], columns[None, :]).flatten()
    order = torch.argsort(distance)
    cumulative = torch.cumsum(mass.flatten()[order], dim=0)
    position = int(torch.searchsorted(cumulative, torch.tensor(level * float(cumulative[-1]), dtype=torch.float64)))
    return float(distance[order][min(position, len(order) - 1)])


def _input_gradient(model: nn.Module, target: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """d target / d image; zeros where the backward pass never reaches the input (the model detaches its features,
    or computes them without gradients): the field is then undefined, as for a gradient that is zero everywhere.
    A gradient that is not finite (NaN or inf weights, or an overflow) is refused in one line."""
    import torch

    gradient = None
    if target.requires_grad:
        (gradient,) = torch.autograd.grad(target, image, allow_unused=True)
    if gradient is None:
        return torch.zeros_like(image)
    if not bool(torch.isfinite(gradient).all()):
        broken = [name for name, parameter in model.named_parameters() if not bool(torch.isfinite(parameter).all())]
        if broken:
            more = f" (and {len(broken) - 1} more parameters)" if len(broken) > 1 else ""
            cause = f"the model's parameter {broken[0]}{more} holds NaN or inf, so the input gradient does too"
        else:
            cause = "the input gradient holds NaN or inf (the forward or backward pass overflows)"
        raise BadInputError(f"the effective receptive field cannot be measured: {cause}")
    return gradient


def effective_receptive_field(model: nn.Module, capture: Capture, result: ReceptiveFieldResult, samples: int = 8,
                              seed: int = 0, weights: str = "random") -> ErfResult:
    """Mean |d centre unit / d input| over ``samples`` standard-normal inputs; the real model, eval mode, float32.

    The centre unit's channels are summed; the gradient magnitude is summed over the input channels.
    """
    import torch

    from resnet_inspect.capture.trace import tensors_in

    if samples < 1:
        raise BadInputError(f"--erf-samples must be at least 1, got {samples}")
    if result.output_node is None:
        raise InspectError("the model has no feature map before its output; no effective receptive field")
    state = result.states.get(result.output_node)
    axis_dims = state.layout.axis_dims() if state is not None else None
    if len(capture.input_shape) != 4 or axis_dims is None or len(axis_dims) != 2:
        raise InspectError("the effective receptive field is measured for 2-D inputs whose encoder output keeps its "
                           "height and width axes")
    if any(parameter.is_meta for parameter in model.parameters()):
        raise InspectError("the effective receptive field needs a model with real weights, not one on 'meta'")
    owner, call = module_returning(model, capture, result.output_node)
    shape = capture.input_shape
    generator = torch.Generator().manual_seed(seed)
    training_flags = {module: module.training for module in model.modules()}
    model.eval()
    dtype = next((parameter.dtype for parameter in model.parameters()), torch.float32)
    seen: list[torch.Tensor] = []
    handle = None
    if owner is not None:
        handle = owner.register_forward_hook(lambda module, args, output: seen.append(output))
    total = torch.zeros(shape[2], shape[3], dtype=torch.float64)
    unit = (0, 0)
    try:
        for _ in range(samples):
            seen.clear()
            image = torch.randn(shape, generator=generator, dtype=torch.float32).to(dtype).requires_grad_(True)
            output = model(image)
            features = tensors_in(seen[call] if owner is not None else output)[0]
            unit = ((features.shape[axis_dims[0]] - 1) // 2, (features.shape[axis_dims[1]] - 1) // 2)
            picked = features[0].select(axis_dims[1] - 1, unit[1]).select(axis_dims[0] - 1, unit[0])
            total += _input_gradient(model, picked.sum(), image)[0].abs().sum(dim=0).double()
    finally:
        if handle is not None:
            handle.remove()
        for module, flag in training_flags.items():
            module.training = flag
    field = result.output
    if field is not None:
        steps = (0, 0) if field.position_independent else (float(field.stride[0]), float(field.stride[1]))
        centre = (field.centre[0] + unit[0] * steps[0], field.centre[1] + unit[1] * steps[1])
    else:
        centre = ((shape[2] - 1) / 2, (shape[3] - 1) / 2)
    has_mass = float(total.sum()) > 0
    mass = total / total.sum() if has_mass else total
    r50, r90, r99 = (_radius(mass, centre, level) if has_mass else None for level in ERF_LEVELS)
    half_width = (float(max(field.size)) - 1) / 2 if field is not None else 0
    return ErfResult(
        input_size=(shape[2], shape[3]), samples=samples, weights=weights, unit=unit, centre=centre,
        r50=r50, r90=r90, r99=r99, field_size=field.size if field else None,
        ratio=round(r99 / half_width, 4) if half_width > 0 and r99 is not None else None,
        mass=tuple(tuple(row) for row in mass.tolist()),
    )


__all__ = [
    "ErfResult",
    "StageCheck",
    "SupportCheck",
    "check_input_size",
    "effective_receptive_field",
    "empirical_check",
    "module_returning",
    "replay_one_channel",
    "support_check",
]
