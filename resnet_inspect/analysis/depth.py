"""Network depth as He et al. count it: weighted layers on the longest path from the input to the output.

The "50" of ResNet-50 counts convolutions and the fully connected layer along the main branch: the stem
convolution, three per bottleneck block (two per basic block) and the classifier. Shortcut projections
(1x1 convolutions on the skip path) are not counted; the longest path by weighted layers leaves them out on
its own, because the branch they bypass holds two or three weighted layers against their one. Computed over
the captured dataflow graph, never from module names, so it holds for any model. Pure Python: no torch here.
"""

from __future__ import annotations

from dataclasses import dataclass

from resnet_inspect.records import Capture, OpKind, OpNode

# Operations that count as one layer of depth: those with a weight tensor that mixes features.
WEIGHTED_KINDS = frozenset({OpKind.CONV, OpKind.CONV_TRANSPOSE, OpKind.LINEAR})


def is_weighted(node: OpNode) -> bool:
    """A convolution (transposed too) or a linear layer."""
    return node.geometry.kind in WEIGHTED_KINDS


@dataclass(frozen=True)
class DepthResult:
    """The depth and one longest path that realises it (node ids from the input to the output)."""

    depth: int
    path: tuple[int, ...]  # every node on the path, the model input first
    weighted_layers: int  # all weighted layers in the graph, shortcut projections included

    def layer_names(self, capture: Capture) -> tuple[str, ...]:
        """The weighted layers on the path, in order."""
        return tuple(capture.nodes[node].name for node in self.path if is_weighted(capture.nodes[node]))


def longest_weighted_path(capture: Capture) -> DepthResult:
    """Longest input-to-output path of ``capture.nodes`` by number of weighted layers.

    Nodes are numbered in execution order, so every input of a node has a smaller id and one pass in id order
    is a topological traversal: ``depth(node) = weight(node) + max(depth(input))``.
    """
    nodes = capture.nodes
    depth = [0] * len(nodes)
    best_input: list[int | None] = [None] * len(nodes)
    for node in nodes:
        if node.inputs:
            best_input[node.id] = max(node.inputs, key=lambda source: depth[source])
            depth[node.id] = depth[best_input[node.id]]  # type: ignore[index]
        depth[node.id] += int(is_weighted(node))
    path: list[int] = []
    current: int | None = capture.output_node if nodes else None
    while current is not None:
        path.append(current)
        current = best_input[current]
    return DepthResult(
        depth=depth[capture.output_node] if nodes else 0,
        path=tuple(reversed(path)),
        weighted_layers=sum(is_weighted(node) for node in nodes),
    )


def network_depth(capture: Capture) -> int:
    """Weighted layers (convolutions and linear layers) on the longest input-to-output path."""
    return longest_weighted_path(capture).depth


__all__ = ["WEIGHTED_KINDS", "DepthResult", "is_weighted", "longest_weighted_path", "network_depth"]
