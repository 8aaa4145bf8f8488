"""A network's stages read from one capture: the stem, each stage of the receptive-field analysis and the head,
with their residual blocks, output shape, receptive field, MACs and parameters.

This is the one stage model: compare's stage table, the summary's ``params_by_stage`` and ``macs_by_stage`` and
the HTML chart all read these rows, so they agree. The head has what the other rows leave, so the rows add up to
the model's MACs and parameters; a module that runs several times has its parameters counted once (in the first
stage that runs it) and its MACs at every call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from resnet_inspect.analysis.counting import enclosing_records
from resnet_inspect.analysis.receptive_field import is_residual_merge
from resnet_inspect.records import Capture, LayerRecord, Shape

if TYPE_CHECKING:
    from resnet_inspect.analysis.counting import Counts
    from resnet_inspect.analysis.receptive_field import ReceptiveFieldResult, StageField
    from resnet_inspect.ops.fields import NodeField


STEM, HEAD = "stem", "head"


@dataclass(frozen=True)
class StageRow:
    """One stage of one model at one size: the stem, a residual stage, or the head after the encoder."""

    name: str
    blocks: int  # residual merges (x + shortcut) inside the stage
    output_shape: Shape
    field: NodeField | None  # receptive field at the stage output; None for the head or when undefined
    covers_input: bool | None
    macs: int
    output_size: tuple[int, ...] = ()  # the spatial size on the stage's own axes (NHWC maps too)
    params: int = 0  # each parameter tensor counted once, in the first stage that runs its module
    module: str = ""  # the stage's module by its full name, when one module is the stage (not the stem or head)

    @property
    def key(self) -> str:
        """The name ``params_by_stage`` and ``macs_by_stage`` use: the full module name where there is one."""
        return self.module or self.name

    def to_dict(self, total_macs: int) -> dict[str, Any]:
        return {
            "name": self.name, "blocks": self.blocks, "output_shape": list(self.output_shape),
            "output_size": list(self.output_size),
            "receptive_field": self.field.to_json() if self.field else None, "covers_input": self.covers_input,
            "macs": self.macs, "macs_share": self.macs / total_macs if total_macs else None, "params": self.params,
        }


def _is_stage_call(layer: LayerRecord, stage: StageField) -> bool:
    """Whether ``layer`` is one of the module calls that make up the stage (its own call, when the stage module
    runs several times)."""
    return layer.index in stage.records if stage.records else layer.name in stage.modules


def _stage_of_records(capture: Capture, stages: list[StageField]) -> dict[int, int]:
    """Record index -> position of the stage whose module call encloses it (records outside every stage omitted)."""
    owner: dict[int, int] = {}
    for layer in capture.layers:
        parent = capture.layers[layer.parent] if layer.parent is not None else None
        if parent is not None and parent.index in owner:
            owner[layer.index] = owner[parent.index]
            continue
        for position, stage in enumerate(stages):
            if _is_stage_call(layer, stage):
                owner[layer.index] = position
    return owner


def _stage_params(capture: Capture, stage_modules: list[tuple[str, ...]]) -> list[int]:
    """Parameters of each stage's modules, each module (so each of its tensors) counted once: a module that runs
    again, in the same stage or a later one, adds nothing."""
    params_of: dict[str, int] = {}
    for layer in capture.layers:
        params_of.setdefault(layer.name, layer.params)
    seen: set[str] = set()
    result = []
    for modules in stage_modules:
        fresh = [name for name in dict.fromkeys(modules) if name not in seen]
        seen.update(fresh)
        result.append(sum(params_of.get(name, 0) for name in fresh))
    return result


def stage_rows(capture: Capture, fields: ReceptiveFieldResult, counts: Counts) -> tuple[StageRow, ...]:
    """The stem, every stage of the receptive-field analysis, then the head (whatever runs after them)."""
    stages = [stage for stage in fields.stages if stage.name != "output"]
    owner = _stage_of_records(capture, stages)
    blocks = [0] * len(stages)
    enclosing = enclosing_records(capture)
    for node in capture.nodes:
        record = enclosing[node.id]
        if is_residual_merge(node) and record in owner:
            blocks[owner[record]] += 1  # a residual merge: x + shortcut
    stage_macs = [0] * len(stages)
    for layer in capture.layers:
        position = owner.get(layer.index)
        if position is not None and _is_stage_call(layer, stages[position]):  # the stage's own call: inclusive MACs
            stage_macs[position] += counts.layer_macs.get(layer.index, 0)
    params = _stage_params(capture, [stage.modules for stage in stages])
    keys: set[str] = set()  # a module run again as a later stage is keyed by that row's name
    rows = []
    for position, stage in enumerate(stages):
        module = stage.modules[0] if len(stage.modules) == 1 and stage.name != STEM else ""
        module = "" if module in keys else module
        keys.add(module)
        rows.append(StageRow(stage.name, blocks[position], capture.nodes[stage.node].output_shape, stage.field,
                             stage.covers_input, stage_macs[position], stage.output_size, params[position], module))
    rows.append(StageRow(HEAD, 0, capture.output_shape, None, None, counts.macs - sum(stage_macs),
                         params=max(0, counts.params - sum(params))))
    return tuple(rows)
