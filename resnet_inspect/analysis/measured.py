"""The measured receptive field: where the field rules run out, the input gradient of the model says it.

When an operation has no rule, or paths of different strides merge, the analysis leaves a field undefined. The
field is then measured on the model itself, linearised so that the gradient's support is the field: a float64
copy on the CPU, every weight positive and divided by its fan-in (no path cancels another, no value overflows),
max-pooling modules replaced by average pooling of the same window (an argmax would hide the taps that lost),
in eval mode, on a positive random input. The gradient of one unit of the map (its channels mixed with positive
weights) reaches exactly the input positions that the unit sees. The unit is the map's centre; the unit next to
it on each axis gives the stride; the padding places the centre unit's interval, ``[-P + uS, -P + uS + r - 1]``.
A support that reaches the border of the input is measured once more on an input twice as large: a field that
still spans the whole input there is the whole input (``global_context``).

A measured field holds at the unit it was measured at, at the input size it was measured at; it is labelled
``method: measured`` and never shown as analytic. The pass is memory-guarded like every real pass.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn
from torch.nn.modules import pooling

from resnet_inspect.analysis.counting import element_bytes
from resnet_inspect.analysis.empirical import module_returning
from resnet_inspect.analysis.memory import MemoryGuardError, ensure_fits, gradient_bytes
from resnet_inspect.analysis.receptive_field import ReceptiveFieldResult, StageField
from resnet_inspect.capture.tensors import structural_copy, tensors_in
from resnet_inspect.errors import InspectError
from resnet_inspect.ops.fields import NodeField
from resnet_inspect.records import Capture

MEASURE_SEED = 0
LARGER_INPUT = 2  # the factor by which a support that reaches the input's border is measured again
FLOAT64_BYTES = 8


@dataclass(frozen=True)
class MeasuredField(NodeField):
    """A receptive field measured with the input gradient, at ``input_size`` and at output unit ``unit``;
    ``reason`` says why the analytic rule ran out."""

    input_size: tuple[int, ...] = ()
    unit: tuple[int, ...] = ()
    reason: str = ""

    @property
    def method(self) -> str:
        return "measured"

    def to_json(self) -> dict[str, object]:
        return {**super().to_json(), "input_size": list(self.input_size), "unit": list(self.unit),
                "reason": self.reason}


class NotMeasured(Exception):
    """Why a field could not be measured (the backward pass cannot run, or does not reach the input)."""


# ------------------------------------------------------------------------------------------ the linear copy


def linearised_copy(model: nn.Module, seed: int = MEASURE_SEED) -> nn.Module:
    """A float64 CPU copy in eval mode: positive weights scaled by fan-in, max pools as average pools."""
    working = structural_copy(model, "cpu").double().eval()
    averages: dict[type, Any] = {
        pooling.MaxPool1d: torch.nn.AvgPool1d, pooling.MaxPool2d: torch.nn.AvgPool2d,
        pooling.MaxPool3d: torch.nn.AvgPool3d,
    }
    adaptive: dict[type, Any] = {
        pooling.AdaptiveMaxPool1d: torch.nn.AdaptiveAvgPool1d, pooling.AdaptiveMaxPool2d: torch.nn.AdaptiveAvgPool2d,
        pooling.AdaptiveMaxPool3d: torch.nn.AdaptiveAvgPool3d,
    }
    for parent in list(working.modules()):
        for name, child in list(parent.named_children()):
            kind = type(child)
            if kind in averages and not child.return_indices and _undilated(getattr(child, "dilation", 1)):
                setattr(parent, name, averages[kind](child.kernel_size, child.stride, child.padding, child.ceil_mode))
            elif kind in adaptive and not child.return_indices:
                setattr(parent, name, adaptive[kind](child.output_size))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in working.parameters():
            values = torch.rand(parameter.shape, generator=generator, dtype=torch.float64) * 0.5 + 0.5
            fan_in = parameter[0].numel() if parameter.dim() > 1 else 1
            parameter.copy_(values / fan_in)
    return working


def _undilated(dilation: int | tuple[int, ...]) -> bool:
    return all(step == 1 for step in (dilation if isinstance(dilation, tuple) else (dilation,)))


# ------------------------------------------------------------------------------------------- measuring


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


@dataclass(frozen=True)
class _Support:
    first: tuple[int, ...]
    last: tuple[int, ...]


_Measured = tuple[tuple[int, ...], tuple[int, ...], list[_Support]]  # a map's grid, the unit measured, supports


def _support(gradient: torch.Tensor) -> _Support:
    touched = gradient[0].abs().sum(0) != 0
    firsts, lasts = [], []
    for axis in range(touched.dim()):
        others = tuple(other for other in range(touched.dim()) if other != axis)
        positions = torch.nonzero(touched.any(dim=others) if others else touched).flatten().tolist()
        firsts.append(positions[0])
        lasts.append(positions[-1])
    return _Support(tuple(firsts), tuple(lasts))


def _supports(working: nn.Module, capture: Capture, nodes: Sequence[int], input_size: tuple[int, ...],
              seed: int) -> dict[int, _Measured | str]:
    """One forward pass at ``input_size``; per node, its map's size, the unit measured and the supports of that
    unit and of its neighbour on each axis (or why there are none)."""
    rank = len(input_size)
    generator = torch.Generator().manual_seed(seed + 1)
    image = (torch.rand((1, capture.input_shape[1], *input_size), generator=generator, dtype=torch.float64)
             + 0.5).requires_grad_(True)
    owners: dict[int, tuple[Any, int]] = {}
    results: dict[int, _Measured | str] = {}
    for node in nodes:
        try:
            owners[node] = module_returning(working, capture, node)
        except InspectError as exc:
            results[node] = str(exc)
    seen: dict[int, list[Any]] = {}
    handles = [module.register_forward_hook(lambda module, args, output: seen.setdefault(id(module), []).append(
        output)) for module in {id(m): m for m, _ in owners.values() if m is not None}.values()]
    try:
        with torch.enable_grad():
            output = working(image)
    except Exception as exc:  # the model's own code may raise anything
        raise NotMeasured(f"the model's forward pass fails at {'x'.join(map(str, input_size))}: "
                          f"{_first_line(exc)}") from exc
    finally:
        for handle in handles:
            handle.remove()
    for node, (module, call) in owners.items():
        values = tensors_in(output if module is None else seen.get(id(module), [])[call:call + 1])
        value = values[0] if values else None
        if value is None or value.dim() != rank + 2:
            results[node] = "its map does not hold the spatial axes as (N, C, *spatial)"
            continue
        if not value.requires_grad:
            results[node] = "its value does not depend on the input through a differentiable path"
            continue
        results[node] = _unit_supports(value, image, generator)
    return results


def _unit_supports(value: Any, image: Any, generator: Any) -> _Measured | str:
    """The supports of a map's centre unit and of its next unit on each axis longer than one (a random channel mix
    of each unit backpropagated to the input), or why the centre unit has none."""
    grid = tuple(value.shape[2:])
    unit = tuple((size - 1) // 2 for size in grid)
    units: list[tuple[int, ...]] = [unit] + [tuple(u + (axis == a) for a, u in enumerate(unit))
                                             for axis in range(len(grid)) if grid[axis] > 1]
    mix = torch.rand(value.shape[1], generator=generator, dtype=torch.float64) + 0.5
    supports = []
    for position in units:
        target = (value[(0, slice(None), *position)] * mix).sum()
        try:
            (gradient,) = torch.autograd.grad(target, image, retain_graph=True, allow_unused=True)
        except RuntimeError as exc:  # an in-place write autograd needed, a custom Function without backward
            raise NotMeasured(f"the backward pass fails: {_first_line(exc)}") from exc
        if gradient is None or not bool((gradient != 0).any()):
            return "its centre unit does not depend on the input through a differentiable path"
        if not bool(torch.isfinite(gradient).all()):
            raise NotMeasured("the linearised pass overflowed")
        supports.append(_support(gradient))
    return grid, unit, supports


def _field(grid: tuple[int, ...], unit: tuple[int, ...], supports: list[_Support], input_size: tuple[int, ...],
           reason: str) -> MeasuredField:
    centre, neighbours = supports[0], iter(supports[1:])
    strides = []
    for axis, side in enumerate(input_size):
        if grid[axis] == 1:
            strides.append(side)  # one unit on this axis: the step to a next unit would be the whole input
            continue
        neighbour = next(neighbours)
        shift = (neighbour.first[axis] - centre.first[axis] if centre.first[axis] > 0
                 else neighbour.last[axis] - centre.last[axis])
        strides.append(shift)
    size = tuple(last - first + 1 for first, last in zip(centre.first, centre.last, strict=True))
    padding = tuple(u * stride - first for u, stride, first in zip(unit, strides, centre.first, strict=True))
    whole = all(first == 0 and last == side - 1
                for first, last, side in zip(centre.first, centre.last, input_size, strict=True))
    return MeasuredField(size, tuple(strides), padding, global_context=whole, whole=whole, input_size=input_size,
                         unit=unit, reason=reason)


def _touches_border(supports: list[_Support], input_size: tuple[int, ...]) -> bool:
    centre = supports[0]
    return any(first == 0 or last == side - 1
               for first, last, side in zip(centre.first, centre.last, input_size, strict=True))


def measure_fields(model: nn.Module, capture: Capture, nodes: Sequence[int], reasons: dict[int, str],
                   seed: int = MEASURE_SEED) -> dict[int, MeasuredField | str]:
    """Measure the fields of ``nodes`` (module outputs, or the model's output) on ``model``; per node the field,
    or why it could not be measured. ``reasons`` says why each analytic rule ran out."""
    if len(capture.input_shapes) != 1 or len(capture.input_shape) < 3:
        return dict.fromkeys(nodes, "the model does not take one (N, C, *spatial) input")
    nominal = tuple(capture.input_shape[2:])
    per_input = gradient_bytes(capture, 1) * FLOAT64_BYTES / element_bytes(capture.dtype)  # batch 1, float64
    where = "x".join(map(str, nominal))
    try:
        ensure_fits(int(per_input), f"measuring the receptive field at {where}", "lower --input-size")
        try:
            working = linearised_copy(model, seed)
        except Exception as exc:  # deepcopy and .double() run the model's own code
            raise NotMeasured(f"the model cannot be copied to float64: {_first_line(exc)}") from exc
        found = _supports(working, capture, nodes, nominal, seed)
    except (NotMeasured, MemoryGuardError) as exc:
        return dict.fromkeys(nodes, str(exc))
    results: dict[int, MeasuredField | str] = {}
    larger = tuple(side * LARGER_INPUT for side in nominal)
    spilled = [node for node, value in found.items() if not isinstance(value, str)
               and _touches_border(value[2], nominal)]
    again: dict[int, _Measured | str] = {}
    if spilled:
        try:
            ensure_fits(int(per_input * math.prod(larger) / math.prod(nominal)),
                        f"measuring the receptive field at {'x'.join(map(str, larger))}", "lower --input-size")
            again = _supports(working, capture, spilled, larger, seed)
        except (NotMeasured, MemoryGuardError, InspectError):
            again = {}
    for node, value in found.items():
        if isinstance(value, str):
            results[node] = value
            continue
        measured, size = value, nominal
        retried = again.get(node)
        if retried is not None and not isinstance(retried, str):
            measured, size = retried, larger
        grid, unit, supports = measured
        results[node] = _field(grid, unit, supports, size, reasons.get(node, ""))
    return results


# ---------------------------------------------------------------------------------------- the fallback


def with_measured_fields(model: nn.Module, capture: Capture, result: ReceptiveFieldResult,
                         stages: bool = False) -> ReceptiveFieldResult:
    """``result`` with the undefined field of the encoder output (and of every stage, with ``stages``) measured;
    a field that cannot be measured stays undefined, its reason saying why."""
    wanted = [stage.node for stage in result.stages] if stages else [result.output_node]
    nodes = list(dict.fromkeys(node for node in wanted if node is not None and result.fields.get(node) is None
                               and node not in result.constant))
    if not nodes:
        return result
    measured = measure_fields(model, capture, nodes, result.undefined)
    fields = dict(result.fields)
    undefined = dict(result.undefined)
    for node, value in measured.items():
        if isinstance(value, str):
            undefined[node] = f"{undefined.get(node, 'no rule')}; not measured either: {value}"
        else:
            fields[node] = value
    stage_rows = tuple(_measured_stage(stage, fields, undefined) for stage in result.stages)
    output = fields.get(result.output_node) if result.output_node is not None else None
    return replace(result, fields=fields, undefined=undefined, stages=stage_rows, output=output)


def _measured_stage(stage: StageField, fields: dict[int, NodeField | None], undefined: dict[int, str]) -> StageField:
    field = fields.get(stage.node)
    if stage.field is not None:
        return stage
    if isinstance(field, MeasuredField):
        return replace(stage, field=field, covers_input=True if field.whole else None)
    return replace(stage, reason=undefined.get(stage.node, stage.reason))


__all__ = ["MeasuredField", "NotMeasured", "linearised_copy", "measure_fields", "with_measured_fields"]
