"""`time`: build the model on the meta device (or copy the module given), then time it with random weights on
the device per batch size, and per layer when asked, each after its memory guard."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from resnet_inspect.errors import BadInputError
from resnet_inspect.pipeline.options import Caller, TrainRequest, train_options
from resnet_inspect.report.timing import TimingReport

if TYPE_CHECKING:
    from torch import nn


def _phase(progress: Callable[[int], None] | None, runs: int) -> tuple[Callable[[int], None], Callable[[], None]]:
    """A progress callback that never advances past ``runs``, and a function that completes the phase."""
    done = [0]

    def advance(count: int) -> None:
        step = min(count, runs - done[0])
        done[0] += step
        if progress is not None and step > 0:
            progress(step)

    def finish() -> None:
        advance(runs - done[0])

    return advance, finish


def timing_report(spec: str | nn.Module, batch_sizes: list[int], input_size: int | tuple[int, ...], device: str = "cpu",
                  dtype: str = "float32", warmup: int = 10, repeat: int = 50, threads: int | None = None,
                  channels_last: bool = False, per_layer: bool = False, in_channels: int | None = None,
                  progress: Callable[[int], None] | None = None, model_name: str | None = None,
                  train: bool = False, optimizer: str = "adamw", amp: str | None = None,
                  caller: Caller = Caller.cli) -> TimingReport:
    """Build MODEL with random weights on ``device`` (or time a copy of the module given) at each batch size.

    ``train`` times a training step (``analysis.step_timing``) with ``optimizer`` and ``amp`` instead of a
    forward pass; ``per_layer`` is for forward passes only. ``progress`` is advanced by forward passes (or
    steps); the total is ``phase_runs(...)``.
    """
    from resnet_inspect.analysis.step_timing import time_training_step
    from resnet_inspect.analysis.timing import (
        check_dtype,
        profile_layers,
        resolve_device,
        time_model,
    )
    from resnet_inspect.capture.loader import load_model
    from resnet_inspect.capture.tensors import private_copy
    from resnet_inspect.capture.trace import input_shape_for

    options = train_options(TrainRequest(train, optimizer if train else None, amp if train else None, None, dtype),
                            "cpu", caller)
    if options is not None:
        optimizer, amp = options.optimizer, options.amp
        if per_layer:
            raise BadInputError(f"{caller.spell('per_layer')} times forward passes: it cannot be used with "
                                f"{caller.spell('train')}")
    device = resolve_device(device)
    check_dtype(device, dtype)
    if isinstance(spec, str):
        # on the meta device: each measurement gives it real weights once its memory guard has passed; a user
        # file's module-level code runs on real tensors (guarded), so that no meta tensor of its reaches a pass
        model, name = load_model(spec, in_channels=in_channels, runs_real=True)
    else:  # timing converts the model in place (device, dtype, eval): the caller's own stays as it was
        model, name = private_copy(spec), type(spec).__name__  # its hooks: docs/api.md
    name = model_name or name
    channels = in_channels or 3
    input_size = input_shape_for(model, input_size, 1, channels)[2:]  # an int: every spatial axis of the model
    results = []
    for batch_size in batch_sizes:
        advance, finish = _phase(progress, warmup + repeat)
        shape = (batch_size, channels, *input_size)
        if train:
            results.append(time_training_step(model, shape, device, dtype, optimizer, amp, warmup, repeat, threads,
                                              channels_last, advance))
        else:
            results.append(time_model(model, shape, device, dtype, warmup, repeat, threads, channels_last, advance))
        finish()
    profile = None
    if per_layer:
        advance, finish = _phase(progress, warmup + repeat)
        profile = profile_layers(model, (batch_sizes[0], channels, *input_size), device, dtype, warmup, repeat,
                                 threads, channels_last, advance)
        finish()
    return TimingReport(
        model=name, device=device, dtype=dtype, threads=results[0].threads, input_shape=(channels, *input_size),
        channels_last=channels_last, warmup=warmup, repeat=repeat, results=tuple(results), profile=profile,
        profile_batch_size=batch_sizes[0] if per_layer else None, train=train,
        optimizer=optimizer if train else None, amp=amp if train else None,
    )


def phase_runs(batch_sizes: list[int], warmup: int, repeat: int, per_layer: bool) -> int:
    """Forward passes the progress bar counts: warm-up plus timed passes per batch size (and per layer)."""
    return (len(batch_sizes) + int(per_layer)) * (warmup + repeat)


__all__ = ["phase_runs", "timing_report"]
