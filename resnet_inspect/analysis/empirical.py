"""Receptive fields measured with gradients: the support check and the effective receptive field.

The support check replays the captured graph as a linear one-channel network (every window becomes a
convolution with all-ones weights, element-wise ops the identity, merges a sum; float64 on CPU) and
backpropagates from the centre unit of each stage: the input positions with a nonzero gradient are exactly
that unit's theoretical field, clipped to the input. Positive weights leave no cancellation, and the support
depends only on the geometry, so one channel is enough even for ResNet-152 at 1600x1600.

The effective receptive field (Luo et al. 2016) runs the real model: the gradient magnitude of the encoder
output's centre unit with respect to the input, averaged over random inputs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from resnet_inspect.analysis.receptive_field import NodeField, ReceptiveFieldResult, StageField, analyze_receptive_field
from resnet_inspect.errors import BadInputError, InspectError
from resnet_inspect.records import Capture, OpKind, OpNode, Pair

if TYPE_CHECKING:
    import torch
    from torch import nn

CHECK_ATTEMPTS = 4
ERF_LEVELS = (0.5, 0.9, 0.99)


# ------------------------------------------------------------------------------------------ support check


@dataclass(frozen=True)
class StageCheck:
    """One stage's centre unit: the analytic interval (clipped to the input) against the gradient's support."""

    name: str
    unit: Pair  # the output unit backpropagated from: the centre of the stage's output
    analytic: tuple[Pair, Pair] | None  # ((top, bottom), (left, right)) clipped to the input
    measured: tuple[Pair, Pair] | None  # the same, where the input gradient is nonzero
    inside: bool  # the unit's whole field lies inside the input, so the size was measured unclipped
    reason: str | None = None  # why there is no comparison
    field: tuple[Pair, Pair] | None = None  # the analytic interval before clipping

    @property
    def analytic_size(self) -> Pair | None:
        return _extent(self.analytic)

    @property
    def measured_size(self) -> Pair | None:
        return _extent(self.measured)

    @property
    def agrees(self) -> bool | None:
        """The support's ends are the field's ends; where the field spills over the input only containment.

        (A field can be sparse, e.g. after strided 1x1 convolutions: clipped, its first real tap may lie inside.)
        """
        if self.analytic is None or self.measured is None or self.field is None:
            return None
        for axis in (0, 1):
            (start, end), (low, high), (first, last) = self.field[axis], self.analytic[axis], self.measured[axis]
            if first < low or last > high:
                return False
            if (start == low and first != start) or (end == high and last != end):
                return False
        return True


@dataclass(frozen=True)
class SupportCheck:
    """The support check of every stage, at an input large enough to hold the fields."""

    input_size: Pair
    stages: tuple[StageCheck, ...]

    @property
    def agrees(self) -> bool | None:
        """Every stage with a defined field has exactly the gradient support the analysis predicts.

        None when no stage could be compared (every field undefined or not replayable).
        """
        verdicts = [stage.agrees for stage in self.stages if stage.agrees is not None]
        return all(verdicts) if verdicts else None

    @property
    def size(self) -> Pair | None:
        """The measured field size at the encoder output (the last row)."""
        return self.stages[-1].measured_size if self.stages else None


def _extent(interval: tuple[Pair, Pair] | None) -> Pair | None:
    if interval is None:
        return None
    return (interval[0][1] - interval[0][0] + 1, interval[1][1] - interval[1][0] + 1)


def _spatial(shape: tuple[int, ...]) -> Pair | None:
    return (shape[2], shape[3]) if len(shape) == 4 else None


def _zero_pad(x: torch.Tensor, top: int, bottom: int, left: int, right: int) -> torch.Tensor:
    """Zero padding by concatenation (for float64 on CPU much faster than ``F.pad``); negative values crop."""
    import torch

    x = x[:, :, max(0, -top): x.shape[2] - max(0, -bottom), max(0, -left): x.shape[3] - max(0, -right)]
    rows = [x.new_zeros(1, 1, size, x.shape[3]) for size in (max(0, top), max(0, bottom))]
    x = torch.cat([rows[0], x, rows[1]], dim=2)
    columns = [x.new_zeros(1, 1, x.shape[2], size) for size in (max(0, left), max(0, right))]
    return torch.cat([columns[0], x, columns[1]], dim=3)


def _ones_window(x: torch.Tensor, node: OpNode, output: Pair) -> torch.Tensor:
    """A conv/pool as a one-channel window sum (all-ones weights) with its kernel, stride, padding and dilation.

    The right side is padded generously and the result cropped to the captured output size, which reproduces
    ``ceil_mode`` and asymmetric padding without special cases.
    """
    import torch
    import torch.nn.functional as F

    geometry = node.geometry
    kernel, stride, padding = geometry.effective_kernel, geometry.stride, geometry.padding
    size = (x.shape[2], x.shape[3])
    extra = [max(0, (output[a] - 1) * stride[a] + kernel[a] - padding[a] - size[a]) for a in (0, 1)]
    padded = _zero_pad(x, padding[0], extra[0], padding[1], extra[1])
    if geometry.dilation == (1, 1):  # a sum pool: several times faster than a convolution in float64
        result = F.avg_pool2d(padded, geometry.kernel, stride, divisor_override=1)
    else:
        weight = torch.ones((1, 1, *geometry.kernel), dtype=x.dtype)
        result = F.conv2d(padded, weight, stride=stride, dilation=geometry.dilation)
    return result[:, :, : output[0], : output[1]]


def _subsample(x: torch.Tensor, node: OpNode, output: Pair) -> torch.Tensor:
    start, step = (-node.geometry.padding[0], -node.geometry.padding[1]), node.geometry.stride
    if min(start) < 0:
        raise InspectError(f"{node.name} slices from a negative start")
    return x[:, :, start[0]:: step[0], start[1]:: step[1]][:, :, : output[0], : output[1]]


def _pad(x: torch.Tensor, node: OpNode, output: Pair) -> torch.Tensor:
    (top, left), (bottom, right) = node.geometry.padding, node.geometry.padding_end
    return _zero_pad(x, top, bottom, left, right)


def _adaptive(x: torch.Tensor, node: OpNode, output: Pair) -> torch.Tensor:
    import torch.nn.functional as F

    return F.adaptive_avg_pool2d(x, output)


def _collapse(x: torch.Tensor, node: OpNode, output: Pair) -> torch.Tensor:
    """Global pooling, flattening, linear layers: one value that depends on the whole map."""
    return x.sum(dim=(2, 3), keepdim=True)


def _identity(x: torch.Tensor, node: OpNode, output: Pair) -> torch.Tensor:
    return x


def _reshape(x: torch.Tensor, node: OpNode, output: Pair) -> torch.Tensor:
    if (x.shape[2], x.shape[3]) == output:
        return x
    if output == (1, 1):
        return _collapse(x, node, output)
    raise InspectError(f"the empirical check does not cover {node.name} ({node.type}): it rearranges spatial axes")


def _not_replayable(x: torch.Tensor, node: OpNode, output: Pair) -> torch.Tensor:
    raise InspectError(f"the empirical check does not cover {node.name} ({node.type})")


# How each operation kind acts on a one-channel map (a table, as for the analytic rules).
REPLAY: dict[OpKind, Callable[[Any, OpNode, Pair], Any]] = {
    OpKind.CONV: _ones_window,
    OpKind.MAX_POOL: _ones_window,
    OpKind.AVG_POOL: _ones_window,
    OpKind.ADAPTIVE_POOL: _adaptive,
    OpKind.ELEMENTWISE: _identity,
    OpKind.SUBSAMPLE: _subsample,
    OpKind.PAD: _pad,
    OpKind.GLOBAL: _collapse,
    OpKind.RESHAPE: _reshape,
    OpKind.LINEAR: _collapse,
    OpKind.CONV_TRANSPOSE: _not_replayable,
    OpKind.UNKNOWN: _not_replayable,
}


def replay_one_channel(capture: Capture, targets: list[int]) -> tuple[Any, dict[int, Any], dict[int, str]]:
    """Run the ancestors of ``targets`` as a linear one-channel float64 network on a zero input.

    Returns the input tensor (requiring grad), each node's value as a (1, 1, h, w) tensor (non-spatial values
    as 1x1), and the reason for every node that could not be replayed.
    """
    import torch

    needed: set[int] = set()
    stack = list(targets)
    while stack:
        current = stack.pop()
        if current not in needed:
            needed.add(current)
            stack.extend(capture.nodes[current].inputs)
    source = next(node.id for node in capture.nodes if not node.inputs)
    values: dict[int, torch.Tensor] = {}
    failures: dict[int, str] = {}
    image: torch.Tensor | None = None
    for node in capture.nodes:
        if node.id not in needed:
            continue
        output = _spatial(node.output_shape) or (1, 1)
        if not node.inputs:
            tensor = torch.zeros((1, 1, *output), dtype=torch.float64, requires_grad=node.id == source)
            image = tensor if node.id == source else image
            values[node.id] = tensor
            continue
        failed = [failures[i] for i in node.inputs if i in failures]
        if failed:
            failures[node.id] = failed[0]
            continue
        merged = values[node.inputs[0]]
        for other in node.inputs[1:]:
            merged = merged + values[other]  # add, multiply, channel cat: the union of the supports
        try:
            value = REPLAY[node.geometry.kind](merged, node, output)
        except InspectError as exc:
            failures[node.id] = str(exc)
            continue
        if (value.shape[2], value.shape[3]) != output:
            raise InspectError(f"the one-channel replay of {node.name} gives {tuple(value.shape[2:])}, not {output}")
        values[node.id] = value
    return image, values, failures


def _stage_check(stage: StageField, field: NodeField | None, value: Any, image: Any, failure: str | None,
                 input_size: Pair) -> StageCheck:
    import torch

    unit = ((stage.output_size[0] - 1) // 2, (stage.output_size[1] - 1) // 2)
    analytic = inside = interval = None
    if field is not None:
        interval = field.interval(unit)
        inside = all(interval[a][0] >= 0 and interval[a][1] <= input_size[a] - 1 for a in (0, 1))
        analytic = tuple((max(interval[a][0], 0), min(interval[a][1], input_size[a] - 1)) for a in (0, 1))
    if value is None:
        return StageCheck(stage.name, unit, analytic, None, bool(inside), failure or "not replayed", interval)
    (gradient,) = torch.autograd.grad(value[0, 0, unit[0], unit[1]], image, retain_graph=True, allow_unused=True)
    if gradient is None:
        return StageCheck(stage.name, unit, analytic, None, bool(inside), "the stage does not depend on the input",
                          interval)
    if not torch.isfinite(gradient).all():
        raise InspectError(f"the one-channel replay overflowed at {stage.name}")
    support = gradient[0, 0] != 0
    rows = torch.nonzero(support.any(dim=1)).flatten().tolist()
    columns = torch.nonzero(support.any(dim=0)).flatten().tolist()
    measured = ((rows[0], rows[-1]), (columns[0], columns[-1])) if rows and columns else None
    reason = None if field is not None else stage.reason
    return StageCheck(stage.name, unit, analytic, measured, bool(inside), reason, interval)


def support_check(capture: Capture, result: ReceptiveFieldResult) -> SupportCheck:
    """Backpropagate from the centre unit of every stage of the one-channel replay and compare supports."""
    targets = [stage.node for stage in result.stages]
    image, values, failures = replay_one_channel(capture, targets)
    checked: dict[int, StageCheck] = {}  # the encoder output is usually also the last stage's output
    stages = []
    for stage in result.stages:
        if stage.node not in checked:
            checked[stage.node] = _stage_check(stage, stage.field, values.get(stage.node), image,
                                               failures.get(stage.node), result.input_size)
        stages.append(replace(checked[stage.node], name=stage.name))
    return SupportCheck(result.input_size, tuple(stages))


def check_input_size(result: ReceptiveFieldResult) -> Pair:
    """An input side per axis that holds every stage's centre-unit field: r + 2|offset| + 4S, at least the input."""
    sides = list(result.input_size)
    for stage in result.stages:
        if stage.field is None:
            continue
        for axis in (0, 1):
            offset = abs(stage.field.centre[axis])
            needed = stage.field.size[axis] + 2 * math.ceil(offset) + 4 * stage.field.stride[axis]
            sides[axis] = max(sides[axis], needed)
    return (sides[0], sides[1])


def empirical_check(model: nn.Module, result: ReceptiveFieldResult, in_channels: int = 3) -> SupportCheck:
    """The support check at an input large enough for every stage's field (grown if a field still spills over)."""
    from resnet_inspect.capture.trace import capture

    size = check_input_size(result)
    for attempt in range(CHECK_ATTEMPTS):
        captured = capture(model, size, 1, in_channels)
        checked = support_check(captured, analyze_receptive_field(captured))
        spilled = [stage for stage in checked.stages if stage.analytic is not None and not stage.inside]
        if not spilled or attempt == CHECK_ATTEMPTS - 1:
            return checked
        growth = max((stage.field.stride for stage in result.stages if stage.field), default=(1, 1))
        size = (size[0] + 2 * growth[0], size[1] + 2 * growth[1])
    return checked


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
    r50: float
    r90: float
    r99: float
    field_size: Pair | None
    ratio: float | None
    mass: tuple[tuple[float, ...], ...]  # per input pixel, summed over channels, normalised to a total of 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "r50": self.r50, "r90": self.r90, "r99": self.r99, "ratio": self.ratio,
            "ratio_definition": "r99 / ((size - 1) / 2)", "radius": "chebyshev, input pixels",
            "centre": list(self.centre), "unit": list(self.unit), "samples": self.samples, "weights": self.weights,
            "input_size": list(self.input_size),
        }


def _owner(model: nn.Module, capture: Capture, node: int) -> tuple[nn.Module | None, int]:
    """The outermost module call that returns ``node``'s tensor, and which call of that module it is.

    None when ``node`` is the model's own output.
    """
    if node == capture.output_node:
        return None, 0
    owners = [layer for layer in capture.layers if layer.output_node == node]
    if not owners:
        raise InspectError(f"no module returns the encoder output ({capture.nodes[node].name}); cannot hook it")
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


def effective_receptive_field(model: nn.Module, capture: Capture, result: ReceptiveFieldResult, samples: int = 8,
                              seed: int = 0, weights: str = "random") -> ErfResult:
    """Mean |d centre unit / d input| over ``samples`` standard-normal inputs; the real model, eval mode, float32.

    The centre unit's channels are summed; the gradient magnitude is summed over the input channels.
    """
    import torch

    if samples < 1:
        raise BadInputError(f"--erf-samples must be at least 1, got {samples}")
    if result.output_node is None:
        raise InspectError("the model has no 4-D feature map before its output; no effective receptive field")
    if any(parameter.is_meta for parameter in model.parameters()):
        raise InspectError("the effective receptive field needs a model with real weights, not one on 'meta'")
    owner, call = _owner(model, capture, result.output_node)
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
            features = seen[call] if owner is not None else output
            features = features[0] if isinstance(features, (tuple, list)) else features
            unit = ((features.shape[2] - 1) // 2, (features.shape[3] - 1) // 2)
            (gradient,) = torch.autograd.grad(features[0, :, unit[0], unit[1]].sum(), image)
            total += gradient[0].abs().sum(dim=0).double()
    finally:
        if handle is not None:
            handle.remove()
        for module, flag in training_flags.items():
            module.training = flag
    field = result.output
    if field is not None:
        centre = (field.centre[0] + unit[0] * field.stride[0], field.centre[1] + unit[1] * field.stride[1])
    else:
        centre = ((shape[2] - 1) / 2, (shape[3] - 1) / 2)
    mass = total / total.sum() if float(total.sum()) > 0 else total
    r50, r90, r99 = (_radius(mass, centre, level) for level in ERF_LEVELS)
    half_width = (max(field.size) - 1) / 2 if field is not None else 0
    return ErfResult(
        input_size=(shape[2], shape[3]), samples=samples, weights=weights, unit=unit, centre=centre,
        r50=r50, r90=r90, r99=r99, field_size=field.size if field else None,
        ratio=round(r99 / half_width, 4) if half_width > 0 else None,
        mass=tuple(tuple(row) for row in mass.tolist()),
    )


__all__ = [
    "ErfResult",
    "StageCheck",
    "SupportCheck",
    "check_input_size",
    "effective_receptive_field",
    "empirical_check",
    "replay_one_channel",
    "support_check",
]
