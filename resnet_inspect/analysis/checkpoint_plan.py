"""Which modules to checkpoint: the candidates, their order, and the plan's figures (pure: records in, plan out).

The candidates are a network's blocks: the modules that repeat under one container (``layers.2.blocks.3`` beside
``layers.2.blocks.4``) and run at least two operations that do products (a convolution-norm-activation unit is one
layer, not a block), at the finest level that has them (a stage of blocks gives way to its blocks). Chen et
al. (2016) checkpoint segments of a chain of such blocks; Checkmate (MLSys 2020) solves for the set with an
integer program. Here the blocks are ranked once, from one training pass without checkpointing, by the
activations each saves per forward MAC it would recompute (the most memory for the least recompute first); a plan
is a prefix of that ranking, and the planner (``pipeline/checkpoint_plan.py``) finds the shortest prefix that
fits, each candidate verified by a real meta pass with the plan applied: it starts from a guess (each block lowers
the peak by what it saves less the input it keeps) and confirms it with the guess's neighbour.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from resnet_inspect.records import LayerRecord


def repeated_blocks(layers: tuple[LayerRecord, ...], working: set[str]) -> tuple[str, ...]:
    """The names of the modules that share their parent with another module of their type and hold at least two
    of the ``working`` leaves (those with MACs), finest level only: a candidate with a candidate inside it is
    dropped for those inside."""
    first: dict[str, LayerRecord] = {}
    for layer in layers:
        first.setdefault(layer.name, layer)
    siblings: dict[tuple[int | None, str], list[str]] = {}
    for layer in first.values():
        inside = sum(1 for leaf in working if leaf.startswith(layer.name + "."))
        if not layer.is_leaf and layer.parent is not None and inside >= 2:
            siblings.setdefault((layer.parent, layer.type), []).append(layer.name)
    repeated = {name for names in siblings.values() if len(names) > 1 for name in names}
    return tuple(name for name in first if name in repeated
                 and not any(other.startswith(name + ".") for other in repeated))


def rank_blocks(blocks: tuple[str, ...], saved_bytes: dict[str, int], forward_macs: dict[str, int]
                ) -> tuple[str, ...]:
    """``blocks`` in the order a plan takes them: most saved bytes per recomputed MAC first (a block that saves
    and costs nothing goes first), then by name for a stable order."""

    def key(name: str) -> tuple[float, str]:
        macs = forward_macs.get(name, 0)
        saved = saved_bytes.get(name, 0)
        return (-(saved / macs) if macs else -float("inf") if saved else 0.0, name)

    return tuple(sorted((name for name in blocks if saved_bytes.get(name, 0) > 0), key=key))


def guess_prefix(ranked: tuple[str, ...], freed_bytes: dict[str, int], peak_without: int, peak_with_all: int,
                 budget_bytes: int) -> int:
    """A first guess at the fewest ranked blocks whose plan fits the budget, from the two plans known at the batch
    (none checkpointed, all of them): each block checkpointed lowers the peak by ``freed_bytes`` (what it saves,
    less the input it keeps), down to the peak with all of them. The planner checks the guess and its neighbour with
    passes of their own, so a poor guess costs passes, never a wrong answer."""
    peak = peak_without
    for blocks, name in enumerate(ranked):
        if max(peak, peak_with_all) <= budget_bytes:
            return blocks
        peak -= freed_bytes.get(name, 0)
    return len(ranked)


def shortest_fitting(fits: Callable[[int], bool], guess: int, most: int) -> int:
    """The smallest ``k`` in ``1..most`` with ``fits(k)``, where ``fits`` turns true once and stays true,
    ``fits(most)`` holds and ``fits(0)`` does not. Starts at ``guess`` and steps away from it by 1, 2, 4...
    (bisecting once the step overshoots), so a right guess costs two calls: the guess and its neighbour."""
    low, high, step = 0, most, 1
    probe = min(max(guess, 1), most)
    while high - low > 1:
        if fits(probe):
            high, probe = probe, probe - step
        else:
            low, probe = probe, probe + step
        step *= 2
        if not low < probe < high:
            probe = (low + high) // 2
    return high


@dataclass(frozen=True)
class PlanPoint:
    """One plan evaluated: how many of the ranked blocks it checkpoints, and what a step then costs."""

    blocks: int
    peak_bytes: int
    recompute_macs: int

    def to_dict(self) -> dict[str, int]:
        return {"blocks": self.blocks, "peak_bytes": self.peak_bytes, "recompute_macs": self.recompute_macs}


@dataclass(frozen=True)
class CheckpointPlan:
    """The modules to checkpoint, and the step at the plan's batch size: its peak and the MACs it recomputes."""

    modules: tuple[str, ...]
    candidates: tuple[str, ...]  # every block considered, in the order a plan takes them
    batch_size: int
    peak_bytes: int
    recompute_macs: int
    step_macs: int  # forward + backward + recompute MACs of the step
    curve: tuple[PlanPoint, ...]  # the plans evaluated at the batch size, fewest blocks first
    baseline_batch_size: int | None = None  # the largest batch without checkpointing (None: not searched)

    @property
    def recompute_share(self) -> float:
        return self.recompute_macs / self.step_macs if self.step_macs else 0.0

    def python(self) -> str:
        """Lines of Python that apply the plan to ``model`` with torch's own ``apply_activation_checkpointing``."""
        names = "".join(f"    {name!r},\n" for name in self.modules)
        return ("from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import "
                "apply_activation_checkpointing\n\n"
                + (f"plan = {{\n{names}}}\n" if self.modules else "plan: set[str] = set()  # nothing to checkpoint\n")
                + "chosen = {id(module) for name, module in model.named_modules() if name in plan}\n"
                "apply_activation_checkpointing(model, check_fn=lambda module: id(module) in chosen)\n")

    def to_dict(self) -> dict[str, Any]:
        return {
            "modules": list(self.modules), "candidates": list(self.candidates), "batch_size": self.batch_size,
            "baseline_batch_size": self.baseline_batch_size, "peak_bytes": self.peak_bytes,
            "recompute_macs": self.recompute_macs, "step_macs": self.step_macs,
            "recompute_share": self.recompute_share, "curve": [point.to_dict() for point in self.curve],
            "python": self.python(),
        }


__all__ = ["CheckpointPlan", "PlanPoint", "guess_prefix", "rank_blocks", "repeated_blocks", "shortest_fitting"]
