"""The options every command shares, checked in one place for the command line and the Python API.

Each front end says who is asking (``Caller``), and every message names the option as that caller spells it:
``--amp`` on the command line, ``amp`` in the API, where "add --train" becomes "pass train=True". The ranges of
the numeric options live in ``limits``; the choices of the training step (optimizers, precisions) in
``limits``, with the defaults, which the command line's help texts are built from too.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from resnet_inspect.capture.training import TrainOptions
from resnet_inspect.errors import BadInputError
from resnet_inspect.limits import (
    AMP_DTYPES,
    DEFAULT_DEPTH,
    DEFAULT_LOSS,
    DEFAULT_OPTIMIZER,
    DEFAULT_SHARD_UNITS,
    DTYPES,
    LOSSES,
    OPTIMIZERS,
    check_option,
    check_optional,
)

DEVICES = "cpu, cuda, cuda:N or mps"
_DEVICE_PATTERN = re.compile(r"cpu|mps|cuda(:\d+)?")


class Caller(StrEnum):
    """Who passed the options: messages spell them as that front end does."""

    cli = "cli"
    api = "api"

    def spell(self, option: str) -> str:
        """``--input-size`` for the command line, ``input_size`` for the API."""
        return f"--{option.replace('_', '-')}" if self is Caller.cli else option

    def needs_train(self) -> str:
        return "add --train" if self is Caller.cli else "pass train=True"


def device_name(device: Any, caller: Caller, *, meta: bool = False) -> str:
    """A device name from a name or a ``torch.device`` (``torch.device("cuda", 1)`` -> ``"cuda:1"``), lower case;
    a typo is refused whatever the command (``meta`` only where the command can run there)."""
    import torch

    if not isinstance(device, (str, torch.device)):
        raise BadInputError(f"{caller.spell('device')} must be a device name ({DEVICES}) or a torch.device, got "
                            f"{type(device).__name__}")
    name = str(device).strip().lower()
    if not (_DEVICE_PATTERN.fullmatch(name) or (meta and name == "meta")):
        allowed = f"{DEVICES}{' or meta' if meta else ''}".replace(" or mps or", ", mps or")
        raise BadInputError(f"unknown device '{device}': use {allowed}")
    return name


def available_device(device: Any, caller: Caller) -> str:
    """``device_name``, and a device this machine has (BadInputError lists those it has)."""
    from resnet_inspect.analysis.timing import resolve_device

    return resolve_device(device_name(device, caller))


def dtype_name(dtype: Any, caller: Caller) -> str | None:
    """The name of a floating-point dtype the analyses know (float32, bfloat16, float16), from a name or a
    ``torch.dtype``; None stays None (the model's own)."""
    import torch

    if dtype is None:
        return None
    name = str(dtype).removeprefix("torch.") if isinstance(dtype, (str, torch.dtype)) else None
    if name not in DTYPES:
        raise BadInputError(f"dtype must be a torch.dtype or its name ({', '.join(DTYPES)}), got {dtype!r}"
                            if caller is Caller.api else f"unknown dtype '{dtype}': use one of {', '.join(DTYPES)}")
    return name


@dataclass(frozen=True)
class TrainRequest:
    """A training step as the caller asked for it, before its checks."""

    train: bool
    optimizer: str | None = None
    amp: str | None = None
    shard: int | None = None
    dtype: str | None = None
    shard_units: str | None = None  # the modules fully_shard wraps (None: each block)
    loss: str | None = None  # what the built-in step backpropagates (None: DEFAULT_LOSS)
    accumulate: int | None = None  # micro-batches per step (None: 1)
    step: Callable[..., Any] | str | None = None  # the user's own step, or where it is: file.py:function


def train_options(request: TrainRequest, device: str, caller: Caller) -> TrainOptions | None:
    """The training step's options, checked once for every command (None without ``train``).

    ``optimizer``, ``amp`` and ``shard`` describe a training step: given without it they are refused, never
    ignored. The optimizer and amp mode are case-blind; amp keeps float32 master weights, so it cannot be
    combined with a half-precision ``dtype``; ``shard`` has the limits of a count."""
    given = [option for option, value in (("optimizer", request.optimizer), ("amp", request.amp),
                                          ("shard", request.shard), ("shard_units", request.shard_units),
                                          ("loss", request.loss), ("accumulate", request.accumulate),
                                          ("step", request.step))
             if value is not None]
    if not request.train:
        if given:
            raise BadInputError(f"{caller.spell(given[0])} applies to a training step: {caller.needs_train()}")
        return None
    check_optional("shard", request.shard, caller.spell("shard"))
    if request.shard_units is not None and (request.shard or 1) == 1:
        raise BadInputError(f"{caller.spell('shard_units')} names the units of a sharded step: add "
                            f"{caller.spell('shard')} N (N > 1)")
    optimizer = (request.optimizer or DEFAULT_OPTIMIZER).strip().lower()
    if optimizer not in OPTIMIZERS:
        raise BadInputError(f"unknown optimizer {request.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
    amp = request.amp.strip().lower() if request.amp is not None else None
    if amp is not None and amp not in AMP_DTYPES:
        raise BadInputError(f"unknown {caller.spell('amp')} {request.amp!r}; choose one of {', '.join(AMP_DTYPES)}")
    if amp is not None and request.dtype not in (None, "float32"):
        raise BadInputError(f"{caller.spell('amp')} {amp} keeps float32 master weights: it cannot be combined with "
                            f"{caller.spell('dtype')} {request.dtype} (use one or the other)")
    loss, accumulate, step = _loop_options(request, caller)
    return TrainOptions(optimizer=optimizer, dtype=request.dtype, amp=amp, device=device, loss=loss,
                        accumulate=accumulate, step=step)


def _loop_options(request: TrainRequest, caller: Caller) -> tuple[str, int, Callable[..., Any] | None]:
    """The loss and the micro-batches of the built-in step, or the user's own step (a function, or a
    ``file.py:function`` / ``package.module:function`` spec), checked."""
    from resnet_inspect.capture.loader import resolve_factory

    if not isinstance(request.loss, str | None):
        raise BadInputError(f"{caller.spell('loss')} must be one of {', '.join(LOSSES)}, got {request.loss!r}")
    loss = (request.loss or DEFAULT_LOSS).strip().lower()
    if loss not in LOSSES:
        raise BadInputError(f"unknown {caller.spell('loss')} {request.loss!r}; choose one of {', '.join(LOSSES)}")
    accumulate = check_optional("accumulate", request.accumulate, caller.spell("accumulate")) or 1
    step = resolve_factory(request.step) if isinstance(request.step, str) else request.step
    if step is not None:
        if not callable(step):
            raise BadInputError(f"{caller.spell('step')} must be a function step(model, optimizer, *inputs), got "
                                f"{type(step).__name__}")
        extra = next((name for name in ("loss", "accumulate") if getattr(request, name) is not None), None)
        if extra is not None:
            raise BadInputError(f"{caller.spell(extra)} shapes the built-in step: a step of your own runs its own "
                                "loss and micro-batches (leave it out)")
    sharded = (request.shard or 1) > 1
    if sharded and (accumulate > 1 or request.step is not None):
        what = caller.spell("accumulate" if accumulate > 1 else "step")
        raise BadInputError(f"{what} with {caller.spell('shard')}: a sharded step is modelled as the built-in one, "
                            "one micro-batch")
    return loss, accumulate, step


def shard_count(request: TrainRequest) -> int:
    """Devices the step is sharded over (1 unless given)."""
    return request.shard or 1


def shard_units_of(request: TrainRequest) -> str:
    """The modules fully_shard is applied to: each block unless given."""
    return request.shard_units or DEFAULT_SHARD_UNITS


def check_counts(caller: Caller, **counts: int | None) -> None:
    """Counts (``batch_size``, ``in_channels``, ``depth`` ...) within their limits, named as ``caller`` spells
    them; None is left out. ``batch_size`` is spelt "batch size" on the command line, which takes it as text."""
    for option, value in counts.items():
        name = "batch size" if option == "batch_size" and caller is Caller.cli else caller.spell(option)
        check_optional(option, value, name)


__all__ = ["DEFAULT_DEPTH", "DEFAULT_OPTIMIZER", "Caller", "TrainRequest", "available_device", "check_counts",
           "check_option", "device_name", "dtype_name", "shard_count", "shard_units_of", "train_options"]
