"""The step as people write it: the loss (``--loss``), gradient accumulation (``--accumulate K``) and a step of
their own (``step=`` / ``--step file.py:function``), each against torch: what ``saved_tensors_hooks`` still holds
when the backward starts, FlopCounterMode's backward, and a measured real CPU step of the same code."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

import resnet_inspect
from resnet_inspect.cli.app import app
from resnet_inspect.errors import BadInputError
from resnet_inspect.models import get_model
from tests import oracle_memory
from tests.fixtures import user_steps
from tests.oracle_live import live_step_peak
from tests.oracle_torch import flop_counter_backward_macs, retained_for_backward

runner = CliRunner()
SHAPE = (8, 3, 64, 64)
TARGETS = {"cross-entropy": torch.zeros(SHAPE[0], dtype=torch.long), "mse": torch.zeros(SHAPE[0], 1000)}
LOSS_FUNCTIONS = {
    "cross-entropy": lambda output: torch.nn.functional.cross_entropy(output, TARGETS["cross-entropy"]),
    "mse": lambda output: torch.nn.functional.mse_loss(output, TARGETS["mse"]),
}


@pytest.mark.parametrize("loss", sorted(LOSS_FUNCTIONS))
def test_the_loss_keeps_what_torchs_loss_keeps_for_the_backward(loss: str) -> None:
    torch.manual_seed(0)
    model = get_model("resnet18")
    retained = retained_for_backward(model, torch.randn(SHAPE), LOSS_FUNCTIONS[loss], (TARGETS[loss],))
    report = resnet_inspect.summary(model, input_size=SHAPE, train=True, loss=loss)
    assert report.total("saved_bytes") == retained.activation_bytes


def test_a_loss_adds_no_multiply_accumulates_to_the_backward() -> None:
    model = get_model("resnet18")
    _, backward_macs = flop_counter_backward_macs(model, torch.randn(SHAPE))
    assert resnet_inspect.summary(model, input_size=SHAPE, train=True, loss="cross-entropy").total(
        "backward_macs") == backward_macs


def test_the_target_is_held_with_the_input() -> None:
    """Class indices for cross-entropy (N int64), a tensor like the output for mse (N x 1000 float32)."""
    plain = resnet_inspect.training_memory("resnet18", SHAPE).input_bytes
    assert resnet_inspect.training_memory("resnet18", SHAPE, loss="cross-entropy").input_bytes == plain + 8 * 8
    assert resnet_inspect.training_memory("resnet18", SHAPE, loss="mse").input_bytes == plain + 8 * 1000 * 4


def test_accumulating_gradients_holds_them_through_the_next_micro_batch() -> None:
    """From the second micro-batch on, its forward and backward run beside the gradients of the first: the peak
    in the backward rises by up to the gradients' bytes, and is the same for any K >= 2."""
    one, two, eight = (resnet_inspect.training_memory("resnet50", SHAPE, optimizer="sgd", accumulate=k)
                       for k in (1, 2, 8))
    assert one.peak_bytes < two.peak_bytes <= one.peak_bytes + one.gradient_bytes
    assert eight.peak_bytes == two.peak_bytes


def test_a_step_written_out_is_the_built_in_step() -> None:
    built_in = resnet_inspect.summary("resnet18", SHAPE, train=True).to_dict()
    written = resnet_inspect.summary("resnet18", SHAPE, train=True, step=user_steps.plain).to_dict()
    assert written["totals"]["backward_macs"] == built_in["totals"]["backward_macs"]
    assert written["totals"]["saved_bytes"] == built_in["totals"]["saved_bytes"]
    assert abs(written["training"]["peak_bytes"] - built_in["training"]["peak_bytes"]) <= 64  # a scalar's bytes


def test_autocast_inside_a_users_step_is_the_amp_option() -> None:
    """``torch.autocast`` does not act on meta tensors: the pass applies its lists while the step's block is open,
    as ``--amp`` does for the built-in step (a block for CUDA when the GPU is the device planned for, a GradScaler
    around it; a block turned off inside another casts nothing)."""
    def figures(**options):
        report = resnet_inspect.summary("resnet18", SHAPE, train=True, **options).to_dict()
        return report["totals"]["saved_bytes"], report["totals"]["backward_macs"], report["training"]["peak_bytes"]

    assert figures(step=user_steps.autocast_bf16)[:2] == figures(amp="bf16")[:2]
    scaled = resnet_inspect.training_memory("resnet18", SHAPE, step=user_steps.autocast_fp16_scaled, device="cuda")
    amp = resnet_inspect.training_memory("resnet18", SHAPE, amp="fp16", device="cuda")
    assert scaled.saved_bytes == amp.saved_bytes
    assert figures(step=user_steps.autocast_disabled) == figures(step=user_steps.plain)
    assert figures(step=user_steps.autocast_fp16_scaled)[0] == figures()[0]  # a CUDA block on the CPU casts nothing


@pytest.mark.slow
def test_a_users_autocast_step_holds_what_it_holds_for_real() -> None:
    torch.manual_seed(0)
    model, shape = get_model("resnet18"), (4, 3, 64, 64)  # bfloat16 convolutions are slow on a CPU
    real = live_step_peak(model, torch.randn(shape), "adamw", user_steps.autocast_bf16)
    estimate = resnet_inspect.training_memory(model, shape, step=user_steps.autocast_bf16)
    assert estimate.peak_bytes == real


def test_a_step_that_reads_a_value_is_told_it_read_zero() -> None:
    report = resnet_inspect.summary("resnet18", SHAPE, train=True, step=user_steps.clipped_accumulated)
    assert any("Tensor.item()" in warning for warning in report.to_dict()["warnings"])


@pytest.mark.slow
def test_the_peak_with_a_loss_is_within_3_percent_of_a_measured_step() -> None:
    """Cross-entropy, whose log-softmax and logits' gradient the step holds (mse's saved bytes are pinned exactly
    above, and its target is the output's size)."""
    loss, shape = "cross-entropy", (16, 3, 96, 96)
    measured = oracle_memory.measure_step("resnet18", shape, "sgd", loss=loss)
    estimate = resnet_inspect.training_memory("resnet18", shape, optimizer="sgd", loss=loss)
    assert estimate.peak_bytes == pytest.approx(measured.peak_bytes, rel=0.03)


def _accumulated(micro_batches: int):
    def step(model, optimizer, x):
        for _ in range(micro_batches):
            output = model(x)
            loss = output.sum()
            loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


@pytest.mark.slow
@pytest.mark.parametrize(("optimizer", "accumulate"), [("sgd", 3), ("adamw", 2)])
def test_the_peak_with_accumulation_is_what_a_real_step_holds_at_its_most(optimizer: str, accumulate: int) -> None:
    """The live-storage tracker sees every storage torch allocates through its dispatcher; what oneDNN's CPU
    kernels take inside themselves is beyond both it and the estimate (docs/training.md)."""
    torch.manual_seed(0)
    model, shape = get_model("resnet18"), (16, 3, 96, 96)
    real = live_step_peak(model, torch.randn(shape), optimizer, _accumulated(accumulate))
    estimate = resnet_inspect.training_memory(model, shape, optimizer=optimizer, accumulate=accumulate)
    assert estimate.peak_bytes == real


@pytest.mark.slow
def test_a_users_own_step_holds_what_the_same_step_holds_for_real() -> None:
    torch.manual_seed(0)
    model, shape = get_model("resnet18"), (16, 3, 96, 96)
    real = live_step_peak(model, torch.randn(shape), "momentum", user_steps.clipped_accumulated)
    estimate = resnet_inspect.training_memory(model, shape, optimizer="momentum",
                                              step=user_steps.clipped_accumulated)
    assert estimate.peak_bytes == real


@pytest.mark.parametrize(("arguments", "message"), [
    (["--accumulate", "0"], "--accumulate must be positive, got 0"),
    (["--loss", "hinge"], "unknown --loss 'hinge'; choose one of sum, cross-entropy, mse"),
    (["--step", "tests/fixtures/user_steps.py:raising"],
     "the training step raised ValueError: expected 10 classes, got 1000"),
    (["--step", "tests/fixtures/user_steps.py:never_calls_the_model"], "the training step never called the model"),
    (["--step", "tests/fixtures/user_steps.py:plain", "--loss", "mse"],
     "--loss shapes the built-in step: a step of your own runs its own loss and micro-batches (leave it out)"),
])
@pytest.mark.parametrize("command", ["summary", "fit"])
def test_bad_step_options_are_one_line_and_exit_2(command: str, arguments: list[str], message: str) -> None:
    budget = ["--memory", "1GiB"] if command == "fit" else []
    result = runner.invoke(app, [command, "resnet18", "-i", "64", "--train", *budget, *arguments])
    assert result.exit_code == 2
    assert result.output.strip() == f"error: {message}"


def test_loop_options_without_train_are_refused() -> None:
    with pytest.raises(BadInputError, match="accumulate applies to a training step: pass train=True"):
        resnet_inspect.summary("resnet18", 32, accumulate=2)
