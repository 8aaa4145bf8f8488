"""`fit --train --checkpoint auto`: a plan that fits, checked by applying its printed Python to the real model.

The oracles: a real CPU step of the model with the printed lines applied (tests/oracle_memory.py) for the peak, and
``FlopCounterMode`` on real checkpointed and plain steps for the recomputed forward.
"""

from __future__ import annotations

import oracle_memory
import pytest
import torch
from fixtures import checkpoint_models
from oracle_torch import flop_counter_backward_macs
from typer.testing import CliRunner

import resnet_inspect
from resnet_inspect.analysis.checkpoint_plan import guess_prefix, repeated_blocks, shortest_fitting
from resnet_inspect.analysis.counting import count
from resnet_inspect.capture.trace import capture
from resnet_inspect.cli.app import app
from resnet_inspect.models import get_model

runner = CliRunner()
INPUT = 32


def plain_peak(batch_size: int) -> int:
    peak = resnet_inspect.training_memory("resnet20", INPUT, batch_size=batch_size).peak_bytes
    assert peak is not None
    return peak


def test_the_blocks_of_resnet50_are_its_bottlenecks() -> None:
    """The finest repeated modules that do at least two products: the 16 bottlenecks, not their conv-bn-act units
    (one convolution each) nor the four stages (which hold blocks)."""
    captured = capture(get_model("resnet50"), 64, 1)
    macs = count(captured).layer_macs
    working = {layer.name for layer in captured.layers if layer.is_leaf and macs.get(layer.index, 0)}
    blocks = repeated_blocks(captured.layers, working)
    assert blocks == tuple(f"encoder.layers.{stage}.blocks.{block}" for stage, depth in enumerate((3, 4, 6, 3))
                           for block in range(depth))


def test_the_prefix_search_finds_every_threshold_and_a_right_guess_costs_two_passes() -> None:
    for most in range(1, 10):
        for threshold in range(1, most + 1):
            for guess in range(0, most + 2):
                calls: list[int] = []

                def fits(blocks: int, threshold: int = threshold, calls: list[int] = calls) -> bool:
                    calls.append(blocks)
                    return blocks >= threshold

                assert shortest_fitting(fits, guess, most) == threshold
                assert len(calls) == len(set(calls)) <= 2 * most.bit_length()
                if guess == threshold and most > 1:  # the guess, then its neighbour below (0 is known not to fit)
                    assert calls == ([threshold, threshold - 1] if threshold > 1 else [1])


def test_the_guess_takes_blocks_until_the_freed_bytes_bring_the_peak_within_the_budget() -> None:
    ranked, freed = ("a", "b", "c"), {"a": 50, "b": 30, "c": 20}
    assert guess_prefix(ranked, freed, 200, 100, 200) == 0
    assert guess_prefix(ranked, freed, 200, 100, 150) == 1
    assert guess_prefix(ranked, freed, 200, 100, 149) == 2
    assert guess_prefix(ranked, freed, 200, 100, 120) == 2
    assert guess_prefix(ranked, freed, 200, 100, 119) == 3  # only all of them reach the floor of 100
    assert guess_prefix(ranked, freed, 200, 130, 120) == 3  # the floor binds: no guess below every block


@pytest.mark.parametrize("chosen", [
    ("encoder.layers.0.blocks.0", "encoder.layers.2.blocks.3", "encoder.layers.3.blocks.2"),
    ("encoder.layers.1", "encoder.layers.1.blocks.0", "encoder.layers.1.blocks.0.blocks.0.conv"),  # nested
])
def test_the_planners_wrapping_is_apply_activation_checkpointings(chosen) -> None:
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import apply_activation_checkpointing

    from resnet_inspect.capture.checkpointing import wrap_modules

    ours = wrap_modules(get_model("resnet50"), chosen)
    theirs = get_model("resnet50")
    ids = {id(module) for name, module in theirs.named_modules() if name in chosen}
    apply_activation_checkpointing(theirs, check_fn=lambda module: id(module) in ids)
    assert [(name, type(module)) for name, module in ours.named_modules()] == \
        [(name, type(module)) for name, module in theirs.named_modules()]
    assert sum(name.endswith("_checkpoint_wrapped_module") for name, _ in ours.named_modules()) == len(chosen)


@pytest.fixture(scope="module")
def auto_plan():  # -> (budget, FitReport)
    budget = plain_peak(8)
    return budget, resnet_inspect.fit("resnet20", budget, INPUT, train=True, reserve=0, checkpoint="auto")


@pytest.mark.slow
def test_auto_plan_reaches_a_larger_batch_than_without_checkpointing(auto_plan) -> None:
    budget, report = auto_plan
    plan = report.checkpoint
    assert plan.baseline_batch_size == 8
    assert report.batch_size == plan.batch_size > 8
    assert plan.peak_bytes <= budget < plain_peak(plan.batch_size)
    assert set(plan.modules) <= set(plan.candidates) and plan.modules
    curve = {point.blocks: point for point in plan.curve}
    assert curve[0].recompute_macs == 0 and curve[len(plan.modules)].peak_bytes == plan.peak_bytes
    assert curve[len(plan.modules) - 1].peak_bytes > budget  # the shortest prefix: one block fewer does not fit
    assert report.to_dict()["checkpoint"]["python"] == plan.python()


@pytest.mark.slow
def test_the_printed_plan_applied_for_real_fits_and_matches_the_estimate(auto_plan, monkeypatch) -> None:
    budget, report = auto_plan
    plan = report.checkpoint
    monkeypatch.setenv("RESNET_INSPECT_TEST_PLAN", plan.python())
    measured = oracle_memory.measure_step("tests/fixtures/checkpoint_models.py:resnet20_planned",
                                          (plan.batch_size, 3, INPUT, INPUT), "adamw")
    assert measured.peak_bytes <= budget * 1.03
    assert plan.peak_bytes == pytest.approx(measured.peak_bytes, rel=0.03)


@pytest.mark.slow
def test_the_plans_recompute_macs_are_flop_counters_extra_forward(monkeypatch) -> None:
    """At batch 2: the plan's recompute MACs are what FlopCounterMode counts after the forward of the real
    checkpointed step beyond the plain step's (resnet20 has no grouped convolution to correct)."""
    budget = plain_peak(2) - 1  # batch 2 needs some checkpointing
    report = resnet_inspect.fit("resnet20", budget, INPUT, train=True, reserve=0, checkpoint="auto", batch_size=2)
    plan = report.checkpoint
    assert plan.batch_size == 2 and plan.modules and plan.peak_bytes <= budget
    monkeypatch.setenv("RESNET_INSPECT_TEST_PLAN", plan.python())
    torch.manual_seed(0)
    example = torch.randn(2, 3, INPUT, INPUT)
    _forward, planned = flop_counter_backward_macs(checkpoint_models.resnet20_planned(), example)
    _forward, plain = flop_counter_backward_macs(get_model("resnet20"), example)
    assert plan.recompute_macs == planned - plain > 0


def test_naming_a_module_that_does_not_exist_is_one_line_and_exit_2() -> None:
    result = runner.invoke(app, ["fit", "resnet20", "--train", "--memory", "1GiB", "--checkpoint",
                                 "encoder.layers.0.blocks.9"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "no module named 'encoder.layers.0.blocks.9'" in lines[0]


def test_checkpoint_needs_train() -> None:
    result = runner.invoke(app, ["fit", "resnet20", "--memory", "1GiB", "--checkpoint", "auto"])
    assert result.exit_code == 2 and "add --train" in result.output


def test_the_plans_curve_is_drawn_from_the_reports_json(tmp_path) -> None:
    """fit --checkpoint auto --plot: the picture's points are the JSON curve's (peak in MiB against recomputed
    GMACs), with the budget and the chosen plan; --plot without --checkpoint auto is one line, exit 2."""
    from typer.testing import CliRunner

    import resnet_inspect
    from resnet_inspect.cli.app import app
    from resnet_inspect.render.checkpoint_plot import checkpoint_figure

    report = resnet_inspect.fit("resnet20", "40MiB", 32, train=True, checkpoint="auto").to_dict()
    axes = checkpoint_figure(report).axes[0]
    xs, ys = axes.lines[0].get_data()
    curve = sorted(report["checkpoint"]["curve"], key=lambda point: point["recompute_macs"])
    assert list(xs) == [point["recompute_macs"] / 1e9 for point in curve]
    assert list(ys) == [point["peak_bytes"] / 2**20 for point in curve]
    assert axes.lines[1].get_ydata()[0] == report["budget_bytes"] / 2**20
    picture = tmp_path / "plan.png"
    result = CliRunner().invoke(app, ["fit", "resnet20", "-i", "32", "--train", "--memory", "40MiB", "--checkpoint",
                                      "auto", "--plot", str(picture)])
    assert result.exit_code == 0 and picture.read_bytes().startswith(b"\x89PNG")
    refused = CliRunner().invoke(app, ["fit", "resnet20", "--train", "--memory", "40MiB", "--plot",
                                       str(tmp_path / "x.png")])
    assert refused.exit_code == 2
    assert refused.output.strip() == "error: --plot draws the plans of --checkpoint auto: add --train --checkpoint auto"


@pytest.mark.slow
def test_a_vit_small_plan_applied_for_real_holds_what_was_estimated(monkeypatch) -> None:
    """timm's vit_small re-created (64 px, 17 tokens): with the budget of batch 20's plain step (the memory less a
    reserve of 5%, as fit keeps by default), the plan reaches a larger batch; applied by its printed lines to a real
    model, a live-storage tracker on the real step holds its estimated peak to the byte (within the budget), the
    measured step is within 3% of it and within the memory, and its recompute MACs are FlopCounterMode's extra
    forward."""
    from oracle_live import live_step_peak

    from tests.fixtures.user_steps import plain
    from tests.fixtures.vit_small import vit_small_64

    spec = "tests/fixtures/vit_small.py:vit_small_64"
    budget = resnet_inspect.training_memory(spec, 64, batch_size=20).peak_bytes
    memory = budget * 20 // 19
    plan = resnet_inspect.fit(spec, memory, 64, train=True, reserve=memory - budget, checkpoint="auto").checkpoint
    assert plan.baseline_batch_size == 20 and plan.batch_size > 20 and plan.modules
    torch.manual_seed(0)
    model = vit_small_64()
    exec(plan.python(), {"model": model})
    assert live_step_peak(model, torch.randn(plan.batch_size, 3, 64, 64), "adamw", plain) == plan.peak_bytes <= budget
    monkeypatch.setenv("RESNET_INSPECT_TEST_PLAN", plan.python())
    measured = oracle_memory.measure_step("tests/fixtures/checkpoint_models.py:vit_small_64_planned",
                                          (plan.batch_size, 3, 64, 64), "adamw")
    assert measured.peak_bytes <= memory and plan.peak_bytes == pytest.approx(measured.peak_bytes, rel=0.03)
    example = torch.randn(2, 3, 64, 64)
    _forward, planned = flop_counter_backward_macs(model, example)
    _forward, unplanned = flop_counter_backward_macs(vit_small_64(), example)
    small = resnet_inspect.fit(spec, budget, 64, train=True, reserve=0, checkpoint=list(plan.modules), batch_size=2)
    assert small.checkpoint.recompute_macs == planned - unplanned > 0


def test_a_plan_that_checkpoints_nothing_prints_python_that_runs() -> None:
    """When the batch fits without checkpointing, the printed lines still run and wrap no module."""
    from resnet_inspect.analysis.checkpoint_plan import CheckpointPlan

    model = get_model("resnet20")
    before = [type(module) for module in model.modules()]
    exec(CheckpointPlan((), ("encoder.layers.0.blocks.0",), 8, 1, 0, 1, ()).python(), {"model": model})
    assert [type(module) for module in model.modules()] == before


@pytest.mark.slow
def test_a_resnet50_plan_applied_for_real_fits_the_budget_it_was_made_for(monkeypatch) -> None:
    """resnet50 at 64 px with the budget of batch 8's plain step (the memory less a reserve of 5%, as fit keeps by
    default): the plan reaches a larger batch, and applied by its printed lines to a real model, the real step's
    live storages stay within the budget and within 1% of the estimate, and the measured step within the memory and
    within 3% of it."""
    from oracle_live import live_step_peak

    from tests.fixtures.user_steps import plain

    budget = resnet_inspect.training_memory("resnet50", 64, batch_size=8).peak_bytes
    memory = budget * 20 // 19
    plan = resnet_inspect.fit("resnet50", memory, 64, train=True, reserve=memory - budget,
                              checkpoint="auto").checkpoint
    assert plan.baseline_batch_size == 8 and plan.batch_size > 8
    torch.manual_seed(0)
    model = get_model("resnet50")
    exec(plan.python(), {"model": model})
    held = live_step_peak(model, torch.randn(plan.batch_size, 3, 64, 64), "adamw", plain)
    assert held <= budget and held == pytest.approx(plan.peak_bytes, rel=0.01)
    monkeypatch.setenv("RESNET_INSPECT_TEST_PLAN", plan.python())
    measured = oracle_memory.measure_step("tests/fixtures/checkpoint_models.py:resnet50_planned",
                                          (plan.batch_size, 3, 64, 64), "adamw")
    assert measured.peak_bytes <= memory and plan.peak_bytes == pytest.approx(measured.peak_bytes, rel=0.03)
