"""The temporaries torch's interpolation kernels allocate inside themselves, and the peak of a segmentation model's
training step, which ends in a bilinear interpolation of its logits back to the input's size.

A kernel's temporaries are invisible to the training pass's dispatch mode; ``kernel_temporaries`` models them
(resnet_inspect/capture/training/kernels.py). Here they are compared with what the CPU kernels really allocate
(tests/oracle_interpolation.py, the resident set of a child process), and the estimated peak of whole steps with a
measured step (tests/oracle_memory.py).
"""

from __future__ import annotations

import pytest
import torch
from oracle_interpolation import Case, inputs, interpolate, measure
from oracle_memory import measure_step
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import resnet_inspect
from resnet_inspect.capture.training.kernels import kernel_temporaries
from tests.fixtures import segmentation_models

SEGMENTATION = "tests/fixtures/segmentation_models.py"


def predicted(case: Case, device: str = "cpu") -> tuple[int, int]:
    """The forward's and the backward's temporaries by ``kernel_temporaries``, on meta tensors laid out as the
    real ones."""
    rule = kernel_temporaries(device)
    totals = [0, 0]
    phase = 0

    class Sum(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            result = func(*args, **(kwargs or {}))
            if any(isinstance(leaf, torch.Tensor) for leaf in tree_leaves(result)):
                totals[phase] += sum(rule(func, tuple(args), result))
            return result

    x, gradient = inputs(case, "meta")
    with Sum():
        output = interpolate(case, x)
        phase = 1
        torch.autograd.grad(output, x, gradient(output))
    return totals[0], totals[1]


CASES = {
    # the gradient of a summed output is a broadcast scalar: every backward kernel copies it whole
    "bilinear, broadcast gradient": Case("bilinear", (32, 32), 8, broadcast=True),
    "bilinear, dense gradient": Case("bilinear", (32, 32), 8),
    "bilinear, channels-last": Case("bilinear", (32, 32), 8, channels_last=True),
    "nearest 1-D, broadcast gradient": Case("nearest", (1024,), 8, broadcast=True, channels=64),
    "linear 1-D, dense gradient": Case("linear", (1024,), 8, channels=64),
    "nearest, channels-last, broadcast": Case("nearest", (32, 32), 8, channels_last=True, broadcast=True),
    # bicubic has no channels-last backward kernel: a channels-last gradient is copied to row-major
    "bicubic, channels-last": Case("bicubic", (32, 32), 8, channels_last=True),
    "bicubic, dense gradient": Case("bicubic", (32, 32), 8),
    "trilinear, channels-last": Case("trilinear", (12, 12, 12), 4, channels_last=True),
    "nearest 3-D, broadcast gradient": Case("nearest", (12, 12, 12), 4, broadcast=True),
    "bilinear, bfloat16, broadcast": Case("bilinear", (32, 32), 8, dtype="bfloat16", broadcast=True),
    # antialiased: the forward resizes the width first into an (N, C, H_in, W_out) temporary
    "antialiased bilinear, downsampled": Case("bilinear", (256, 256), 0.25, antialias=True),
    "antialiased bicubic, broadcast": Case("bicubic", (512, 384), 0.25, antialias=True, broadcast=True),
    # a small output (height + width <= 128) takes the channels-last forward: input and output copied
    "nearest, small output": Case("nearest", (16, 16), 4, batch=4, channels=128),
    "bilinear, small output, bfloat16": Case("bilinear", (16, 16), 4, dtype="bfloat16", batch=4, channels=128),
    # its backward writes a row-major gradient: the channels-last input's gradient is copied too
    "antialiased bilinear, channels-last": Case("bilinear", (64, 64), 4, channels_last=True, antialias=True),
    "bicubic, bfloat16, channels-last": Case("bicubic", (32, 32), 8, dtype="bfloat16", channels_last=True),
}


@pytest.mark.slow
def test_the_modelled_temporaries_are_what_the_cpu_kernels_allocate():
    cases = list(CASES.values())
    measured = measure(cases, threads=torch.get_num_threads())  # the per-task buffers: as many tasks as here
    for name, case, real in zip(CASES, cases, measured, strict=True):
        forward, backward = predicted(case)
        # The slack: 3% of the larger of the result and the temporary, and the C library's free blocks, which serve
        # a buffer from memory already resident (a few hundred KiB, depending on what ran before). The forward's
        # index and weight vectors (one entry per output position along each axis) are not modelled.
        for modelled, real_bytes in ((forward, real.forward_bytes), (backward, real.backward_bytes)):
            slack = 0.03 * max(real.output_bytes, modelled) + 320 * 1024
            assert abs(modelled - real_bytes) <= slack, (name, modelled, real)
    # the rule is not vacuous: the broadcast gradients are copied whole, the dense ones are not
    assert predicted(CASES["bilinear, broadcast gradient"])[1] == measured[0].output_bytes
    assert predicted(CASES["bilinear, dense gradient"]) == (0, 0)


def test_cuda_antialiased_forward_takes_no_temporary_and_its_backward_copies_a_broadcast_gradient():
    case = CASES["antialiased bicubic, broadcast"]
    forward, backward = predicted(case, "cuda")
    cpu_forward, cpu_backward = predicted(case, "cpu")
    assert forward == 0 and cpu_forward > 0
    assert backward == cpu_backward > 0


def test_the_16_bit_backward_accumulates_in_a_float32_buffer_per_task_on_the_cpu_only():
    case = Case("bilinear", (64, 64), 2, dtype="bfloat16", channels_last=True, batch=4, channels=64)
    one_image = 64 * 64 * 64 * 4  # channels x input pixels, float32
    assert predicted(case, "cuda")[1] == 0
    threads = torch.get_num_threads()
    assert predicted(case, "cpu")[1] == min(threads, 4) * one_image


@pytest.mark.slow
def test_the_peak_of_a_segmentation_step_is_within_3_percent_of_a_measured_step():
    # the peak falls in the backward of the final upsampling: the logits at full size, and their gradient copied
    estimated = resnet_inspect.training_memory(segmentation_models.fcn_small(), 128, batch_size=4, optimizer="adamw")
    measured = measure_step(f"{SEGMENTATION}:fcn_small", (4, 3, 128, 128), "adamw")
    assert estimated.peak_bytes == pytest.approx(measured.peak_bytes, rel=0.03)


@pytest.mark.slow
def test_fit_never_answers_a_batch_whose_measured_segmentation_step_exceeds_the_budget():
    budget = 160 << 20
    report = resnet_inspect.fit(segmentation_models.fcn_small(), budget, 128, train=True, optimizer="adamw",
                                reserve=0)
    batch = report.batch_size
    assert measure_step(f"{SEGMENTATION}:fcn_small", (batch, 3, 128, 128), "adamw").peak_bytes <= budget
    # and the answer is not loose: one more image does not fit
    assert measure_step(f"{SEGMENTATION}:fcn_small", (batch + 1, 3, 128, 128), "adamw").peak_bytes > budget
