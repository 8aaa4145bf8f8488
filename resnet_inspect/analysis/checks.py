"""The convolution-arithmetic check of a capture: every windowed operation's output size against its geometry."""

from __future__ import annotations

from dataclasses import dataclass

from resnet_inspect.ops.arithmetic import LayerArithmetic, check_layer
from resnet_inspect.records import Capture, OpNode


@dataclass(frozen=True)
class LayerCheck:
    """A convolution or pooling operation and its arithmetic check (one verify row)."""

    node: OpNode
    check: LayerArithmetic


def check_nodes(capture: Capture) -> tuple[LayerCheck, ...]:
    """Check every windowed operation (module or functional) on its trailing spatial axes."""
    checks = []
    for node in capture.nodes:
        if not node.geometry.kind.has_window or not node.input_shapes:
            continue
        rank = node.geometry.rank
        if len(node.input_shapes[0]) < rank + 1 or len(node.output_shape) < rank + 1:
            continue
        check = check_layer(node.geometry, node.input_shapes[0][-rank:], node.output_shape[-rank:])
        if check is not None:
            checks.append(LayerCheck(node, check))
    return tuple(checks)
