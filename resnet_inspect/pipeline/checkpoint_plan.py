"""`fit --train --checkpoint`: the blocks to checkpoint for the largest batch (or a given batch) at least recompute.

One training pass without checkpointing ranks the blocks (``analysis.checkpoint_plan``). Every plan the search
looks at (a prefix of that ranking, or the modules named) is then applied for real to a meta copy of the model
with torch's own ``checkpoint_wrapper``, where ``apply_activation_checkpointing`` puts it, and estimated by a
training pass, so the answer's peak and recompute MACs are those of the step as torch runs it, not of a model of
it:

- without a batch size: the largest batch with every block checkpointed (the least memory this plan family
  reaches), then, at that batch, the shortest prefix that still fits (from a guess, confirmed by its neighbour),
  and the largest batch without checkpointing, to compare;
- with a batch size: the shortest prefix that fits that batch.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from math import prod
from typing import TYPE_CHECKING

from resnet_inspect.analysis.checkpoint_plan import (
    CheckpointPlan,
    PlanPoint,
    guess_prefix,
    rank_blocks,
    repeated_blocks,
    shortest_fitting,
)
from resnet_inspect.analysis.fit import DoesNotFitError, largest_batch, largest_batch_through
from resnet_inspect.errors import BadInputError

if TYPE_CHECKING:
    from torch import nn

    from resnet_inspect.capture.training import TrainOptions
    from resnet_inspect.records import TrainingCapture

AUTO = "auto"


def check_modules(model: nn.Module, modules: tuple[str, ...]) -> None:
    """Every name must be one of the model's modules (not the model itself): one line, exit 2, otherwise."""
    names = {name for name, _ in model.named_modules() if name}
    for name in modules:
        if name not in names:
            import difflib

            close = difflib.get_close_matches(name, sorted(names), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise BadInputError(f"--checkpoint: the model has no module named '{name}'{hint}")


class _Planner:
    """Training passes of plans, each kept: (modules, batch) -> the step."""

    def __init__(self, model: nn.Module, input_size: tuple[int, ...], in_channels: int, options: TrainOptions,
                 shard: int) -> None:
        self.model, self.input_size, self.in_channels = model, input_size, in_channels
        self.options, self.shard = options, shard
        self.steps: dict[tuple[tuple[str, ...], int], TrainingCapture] = {}
        self.freed_bytes: dict[str, int] = {}  # per block, at batch 2 (``ranking``)

    def step(self, modules: tuple[str, ...], batch_size: int) -> TrainingCapture:
        from resnet_inspect.pipeline.build import training_capture

        key = (modules, batch_size)
        if key not in self.steps:
            step = training_capture(self.model, self.input_size, batch_size, self.in_channels,
                                    options=replace(self.options, checkpoint=modules))
            if step.backward_error:
                raise BadInputError(f"fit cannot estimate a training step: {step.backward_error}")
            self.steps[key] = step
        return self.steps[key]

    def timeline(self, modules: tuple[str, ...], batch_size: int) -> list[int]:
        from resnet_inspect.analysis.training import step_timeline

        return step_timeline(self.step(modules, batch_size), self.shard)

    def point(self, modules: tuple[str, ...], batch_size: int) -> tuple[int, int, int]:
        """(peak, recompute MACs, forward + backward + recompute MACs) of a plan at a batch size."""
        from resnet_inspect.analysis.counting import count
        from resnet_inspect.analysis.training import training_counts

        step = self.step(modules, batch_size)
        counts = training_counts(step, self.shard)
        assert counts.memory.peak_bytes is not None
        forward = count(step.capture).macs
        return counts.memory.peak_bytes, counts.recompute_macs, forward + counts.backward_macs + counts.recompute_macs

    def ranking(self) -> tuple[str, ...]:
        """The blocks, ranked from one pass without checkpointing (batch 2, where batch norm trains); notes what
        each would free at that batch (``freed_bytes``: what it saves less its input, which a checkpoint keeps)."""
        from resnet_inspect.analysis.counting import count, element_bytes
        from resnet_inspect.analysis.training import training_counts

        step = self.step((), 2)
        counts, forward = training_counts(step, self.shard), count(step.capture)
        saved: dict[str, int] = {}
        macs: dict[str, int] = {}
        inputs: dict[str, int] = {}
        for layer in step.capture.layers:  # a module called twice: its first call
            saved.setdefault(layer.name, counts.layer_saved_bytes.get(layer.index, 0))
            macs.setdefault(layer.name, forward.layer_macs.get(layer.index, 0))
            inputs.setdefault(layer.name, sum(prod(shape) for shape in layer.input_shapes) * element_bytes(step.dtype))
        working = {layer.name for layer in step.capture.layers if layer.is_leaf and macs.get(layer.name, 0)}
        ranked = rank_blocks(repeated_blocks(step.capture.layers, working), saved, macs)
        self.freed_bytes = {name: max(saved[name] - inputs[name], 0) for name in ranked}
        return ranked


def _shortest_prefix(planner: _Planner, ranked: tuple[str, ...], batch_size: int, budget: int) -> int:
    """The fewest ranked blocks whose plan fits ``batch_size`` (peaks fall as blocks are added; all of them fit),
    from a guess (``guess_prefix``) confirmed by its neighbour."""

    def peak(blocks: int) -> int:
        return max(planner.timeline(ranked[:blocks], batch_size))

    if peak(0) <= budget:
        return 0
    freed = {name: freed * batch_size // 2 for name, freed in planner.freed_bytes.items()}
    guess = guess_prefix(ranked, freed, peak(0), peak(len(ranked)), budget)
    return shortest_fitting(lambda blocks: peak(blocks) <= budget, guess, len(ranked))


def _baseline(planner: _Planner, batch_size: int, budget: int) -> int:
    """The largest batch without checkpointing (0: not even batch 1), from the lines through the plain step at
    batch 2 (the ranking's) and at the plan's batch (the curve's start), confirmed by one more pass."""
    try:
        return largest_batch_through(lambda batch: planner.timeline((), batch), budget, 2, batch_size).batch_size
    except DoesNotFitError:
        return 0


@contextmanager
def _older_objects_frozen() -> Iterator[None]:
    """The search's passes allocate and keep many records; each of CPython's full collections walks every object
    alive, torch's own included, a quarter of the search's time. What exists before the search (torch, the model)
    is frozen out of the collector's walks for its duration (``gc.freeze``), and put back after; left as it is
    when something else froze objects already."""
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def checkpoint_plan(model: nn.Module, input_size: tuple[int, ...], in_channels: int, options: TrainOptions,
                    budget: int, checkpoint: str | tuple[str, ...] = AUTO, batch_size: int | None = None,
                    shard: int = 1) -> tuple[CheckpointPlan, TrainingCapture]:
    """The plan (see the module docstring) and its step; ``checkpoint`` is "auto", or the modules to checkpoint
    (a tuple, or names joined by commas)."""
    with _older_objects_frozen():
        return _checkpoint_plan(model, input_size, in_channels, options, budget, checkpoint, batch_size, shard)


def _checkpoint_plan(model: nn.Module, input_size: tuple[int, ...], in_channels: int, options: TrainOptions,
                     budget: int, checkpoint: str | tuple[str, ...], batch_size: int | None, shard: int
                     ) -> tuple[CheckpointPlan, TrainingCapture]:
    planner = _Planner(model, input_size, in_channels, options, shard)
    if checkpoint != AUTO:
        named = tuple(name.strip() for name in checkpoint.split(",")) if isinstance(checkpoint, str) else \
            tuple(checkpoint)
        check_modules(model, named)
        ranked = named
    else:
        ranked = planner.ranking()
    searched = batch_size is None
    if batch_size is None:
        batch_size = largest_batch(lambda batch: planner.timeline(ranked, batch), budget).batch_size
    elif max(planner.timeline(ranked, batch_size)) > budget:
        peak = max(planner.timeline(ranked, batch_size))
        raise DoesNotFitError(f"batch size {batch_size} does not fit even with every candidate block checkpointed: "
                              f"its step needs {peak} bytes, more than the budget of {budget}", peak)
    chosen = len(ranked) if checkpoint != AUTO else _shortest_prefix(planner, ranked, batch_size, budget)
    for blocks in {0, chosen, len(ranked)}:  # the curve's ends and the answer
        planner.step(ranked[:blocks], batch_size)
    baseline = _baseline(planner, batch_size, budget) if searched else None
    curve = tuple(PlanPoint(len(modules), *planner.point(modules, batch)[:2])
                  for (modules, batch) in sorted(planner.steps, key=lambda key: len(key[0]))
                  if batch == batch_size and modules == ranked[:len(modules)])
    peak, recompute, step_macs = planner.point(ranked[:chosen], batch_size)
    plan = CheckpointPlan(modules=ranked[:chosen], candidates=ranked, batch_size=batch_size, peak_bytes=peak,
                          recompute_macs=recompute, step_macs=step_macs, curve=curve, baseline_batch_size=baseline)
    return plan, planner.step(ranked[:chosen], batch_size)


__all__ = ["AUTO", "check_modules", "checkpoint_plan"]
