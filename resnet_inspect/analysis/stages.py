"""A network's stages read from one capture: the stem, each stage of the receptive-field analysis and the head,
with their residual blocks, output shape, receptive field and MACs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from resnet_inspect.analysis.counting import enclosing_records
from resnet_inspect.analysis.receptive_field import is_residual_merge
from resnet_inspect.records import Capture, Shape

if TYPE_CHECKING:
    from resnet_inspect.analysis.counting import Counts
    from resnet_inspect.analysis.receptive_field import ReceptiveFieldResult
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

    def to_dict(self, total_macs: int) -> dict[str, Any]:
        return {
            "name": self.name, "blocks": self.blocks, "output_shape": list(self.output_shape),
            "output_size": list(self.output_size),
            "receptive_field": self.field.to_json() if self.field else None, "covers_input": self.covers_input,
            "macs": self.macs, "macs_share": self.macs / total_macs if total_macs else None,
        }


def _stage_of_records(capture: Capture, stage_modules: list[tuple[str, ...]]) -> dict[int, int]:
    """Record index -> position of the stage whose module call encloses it (records outside every stage omitted)."""
    owner: dict[int, int] = {}
    for layer in capture.layers:
        parent = capture.layers[layer.parent] if layer.parent is not None else None
        if parent is not None and parent.index in owner:
            owner[layer.index] = owner[parent.index]
            continue
        for position, modules in enumerate(stage_modules):
            if layer.name in modules:
                owner[layer.index] = position
    return owner


def stage_rows(capture: Capture, fields: ReceptiveFieldResult, counts: Counts) -> tuple[StageRow, ...]:
    """The stem, every stage of the receptive-field analysis, then the head (whatever runs after them)."""
    stages = [stage for stage in fields.stages if stage.name != "output"]
    owner = _stage_of_records(capture, [stage.modules for stage in stages])
    blocks = [0] * len(stages)
    enclosing = enclosing_records(capture)
    for node in capture.nodes:
        record = enclosing[node.id]
        if is_residual_merge(node) and record in owner:
            blocks[owner[record]] += 1  # a residual merge: x + shortcut
    stage_macs = [0] * len(stages)
    for layer in capture.layers:
        position = owner.get(layer.index)
        if position is not None and layer.name in stages[position].modules:  # the stage's own call: inclusive MACs
            stage_macs[position] += counts.layer_macs.get(layer.index, 0)
    rows = [
        StageRow(stage.name, blocks[position], capture.nodes[stage.node].output_shape, stage.field,
                 stage.covers_input, stage_macs[position], stage.output_size)
        for position, stage in enumerate(stages)
    ]
    rows.append(StageRow(HEAD, 0, capture.output_shape, None, None, counts.macs - sum(stage_macs)))
    return tuple(rows)
