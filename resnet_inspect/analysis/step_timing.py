"""The time of one training step: forward, loss, backward, optimizer step, gradients cleared.

The step is the one a training loop runs: the model in train mode (batch-norm batch statistics, dropout),
``loss = sum of the outputs' means`` (in float32), ``loss.backward()``, ``optimizer.step()`` and
``optimizer.zero_grad(set_to_none=True)``, with torch.optim's optimizers and the settings the training estimate
steps with (``capture.training.optimizer_step``: learning rate 0.001, momentum 0.9). Under ``amp`` the forward pass runs
in ``torch.autocast``; with ``fp16`` a ``GradScaler`` scales the loss, as mixed-precision training in float16
needs. The median and IQR come from ``torch.utils.benchmark`` exactly as for inference
(``timing.measure_callable``). The model is always a copy: a step changes the weights, and the caller's must not
change.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import nullcontext
from typing import Any

import torch
from torch import nn

from resnet_inspect.analysis.memory import ensure_fits
from resnet_inspect.analysis.timing import LatencyResult, Progress, make_input, measure_callable, prepare_model
from resnet_inspect.analysis.training import step_memory
from resnet_inspect.capture.tensors import private_copy
from resnet_inspect.capture.trace import size_inputs
from resnet_inspect.capture.training import AMP_DTYPES, TrainOptions, run_training_pass
from resnet_inspect.errors import BadInputError
from resnet_inspect.records import Shape

DEFAULT_OPTIMIZER = "adamw"
LEARNING_RATE, MOMENTUM = 1e-3, 0.9  # as capture.training.optimizer_step


def check_training_options(optimizer: str, amp: str | None, dtype: str) -> None:
    """An unknown optimizer or amp mode, or ``amp`` with weights already in half precision: BadInputError (the
    training options' own checks, ``capture.training.TrainOptions``)."""
    TrainOptions(optimizer=optimizer, dtype=dtype, amp=amp)


def make_optimizer(name: str, parameters: list[torch.nn.Parameter]) -> torch.optim.Optimizer | None:
    """torch.optim's optimizer ``name`` over ``parameters`` (None for ``none``: forward and backward only)."""
    if name == "none":
        return None
    if name in ("sgd", "momentum"):
        return torch.optim.SGD(parameters, lr=LEARNING_RATE, momentum=MOMENTUM if name == "momentum" else 0.0)
    if name in ("adam", "adamw"):
        return (torch.optim.AdamW if name == "adamw" else torch.optim.Adam)(parameters, lr=LEARNING_RATE)
    raise BadInputError(f"unknown optimizer {name!r}")


def _tensors(output: Any) -> Iterator[torch.Tensor]:
    """Every tensor in a model's output: a tensor, or tuples, lists and dicts of them (nested)."""
    if isinstance(output, torch.Tensor):
        yield output
    elif isinstance(output, dict):
        for value in output.values():
            yield from _tensors(value)
    elif isinstance(output, (tuple, list)):
        for item in output:
            yield from _tensors(item)


def output_loss(output: Any) -> torch.Tensor:
    """A scalar loss that reaches every floating-point output: the sum of their means, in float32."""
    outputs = [tensor for tensor in _tensors(output) if tensor.is_floating_point() and tensor.requires_grad]
    if not outputs:
        raise BadInputError("the model's output does not depend on any trainable parameter: there is no backward "
                            "pass to time")
    loss = outputs[0].float().mean()
    for tensor in outputs[1:]:
        loss = loss + tensor.float().mean()
    return loss


def training_step(model: nn.Module, x: torch.Tensor, optimizer: str = DEFAULT_OPTIMIZER, amp: str | None = None,
                  device: str = "cpu") -> Callable[[], None]:
    """One training step of ``model`` (already on ``device``, in train mode) on the batch ``x``, as a function."""
    parameters = [parameter for parameter in model.parameters() if parameter.requires_grad]
    if not parameters:
        raise BadInputError("the model has no trainable parameters: there is nothing to train (time it without "
                            "--train)")
    step_optimizer = make_optimizer(optimizer, parameters)
    device_type = torch.device(device).type
    autocast = (torch.autocast(device_type, dtype=getattr(torch, AMP_DTYPES[amp])) if amp is not None
                else nullcontext())
    scaler = torch.amp.GradScaler(device_type) if amp == "fp16" else None

    def step() -> None:
        with autocast:
            output = model(x)
        loss = output_loss(output)
        if scaler is not None:
            scaler.scale(loss).backward()
            if step_optimizer is not None:
                scaler.step(step_optimizer)
            scaler.update()
        else:
            loss.backward()
            if step_optimizer is not None:
                step_optimizer.step()
        model.zero_grad(set_to_none=True)

    return step


def ensure_training_step_fits(model: nn.Module, input_shape: Shape, device: str = "cpu", dtype: str = "float32",
                              optimizer: str = DEFAULT_OPTIMIZER, amp: str | None = None) -> None:
    """Refuse (MemoryGuardError) a training step whose estimated peak does not fit, before allocating anything.

    The estimate is the step's own, from one training pass on the meta device (``analysis.training``).
    """
    if len(input_shape) < 3:  # no spatial axis: nothing to estimate the activations from
        return
    inputs = size_inputs(model, tuple(input_shape[2:]), input_shape[0], input_shape[1])
    step = step_memory(run_training_pass(model, inputs, TrainOptions(optimizer, dtype, amp, device)))
    if step.peak_bytes is not None:  # else the backward cannot run on meta: the real step will say what it needs
        ensure_fits(step.peak_bytes, f"a training step at batch size {input_shape[0]} and input "
                    f"{'x'.join(map(str, input_shape[1:]))}", "lower --batch-size or --input-size", device)


def time_training_step(model: nn.Module, input_shape: Shape, device: str = "cpu", dtype: str = "float32",
                       optimizer: str = DEFAULT_OPTIMIZER, amp: str | None = None, warmup: int = 10, repeat: int = 50,
                       threads: int | None = None, channels_last: bool = False,
                       progress: Progress | None = None) -> LatencyResult:
    """Median time of one training step of ``model`` on a random batch of ``input_shape`` (batch first).

    The first warm-up step also creates the optimizer's state, so it is never timed (there is always one).
    """
    check_training_options(optimizer, amp, dtype)
    ensure_training_step_fits(model, input_shape, device, dtype, optimizer, amp)
    modes = {module: module.training for module in model.modules()}
    try:
        prepared = prepare_model(model, device, dtype, channels_last)
        if prepared is model:  # the step changes the weights: never the caller's
            prepared = private_copy(model)
        prepared.train()
        x = make_input(input_shape, device, dtype, channels_last)
        step = training_step(prepared, x, optimizer, amp, device)
        return measure_callable(step, input_shape[0], device, max(warmup, 1), repeat, threads, progress)
    finally:
        for module, training in modes.items():
            module.training = training


__all__ = [
    "DEFAULT_OPTIMIZER", "check_training_options", "ensure_training_step_fits", "make_optimizer", "output_loss",
    "time_training_step", "training_step",
]
