"""The training step's options: the optimizer, the precision, and the device whose kernels are modelled."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from resnet_inspect.errors import BadInputError
from resnet_inspect.limits import AMP_DTYPES, DEFAULT_LOSS, DTYPES, LOSSES, OPTIMIZERS


@dataclass(frozen=True)
class TrainOptions:
    """How the step is run: the optimizer, the precision, and the device whose kernels are modelled."""

    optimizer: str = "adamw"
    dtype: str | None = None  # convert the model and input to it (None: the model's own)
    amp: str | None = None  # "bf16" or "fp16": autocast, master weights and optimizer state in float32
    device: str = "cpu"  # which attention kernel and optimizer implementation torch would pick there
    loss: str = DEFAULT_LOSS  # what the built-in step backpropagates from the output (one of LOSSES)
    accumulate: int = 1  # micro-batches per step, their gradients accumulated
    step: Callable[..., Any] | None = None  # the user's own step(model, optimizer, *inputs) instead of the built-in
    checkpoint: tuple[str, ...] = ()  # modules the step's copy wraps in torch's checkpoint_wrapper (a plan's)

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise BadInputError(f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
        if self.dtype is not None and self.dtype not in DTYPES:
            raise BadInputError(f"unknown dtype {self.dtype!r}; choose one of {', '.join(DTYPES)}")
        if self.amp is not None and self.amp not in AMP_DTYPES:
            raise BadInputError(f"unknown --amp {self.amp!r}; choose one of {', '.join(AMP_DTYPES)}")
        if self.loss not in LOSSES:
            raise BadInputError(f"unknown loss {self.loss!r}; choose one of {', '.join(LOSSES)}")
        if not isinstance(self.accumulate, int) or self.accumulate < 1:
            raise BadInputError(f"accumulate must be a positive number of micro-batches, got {self.accumulate!r}")
        if self.amp is not None and self.dtype not in (None, "float32"):
            raise BadInputError(f"--amp {self.amp} keeps float32 master weights: it cannot be combined with --dtype "
                                f"{self.dtype} (use one or the other)")


__all__ = ["AMP_DTYPES", "DTYPES", "LOSSES", "OPTIMIZERS", "TrainOptions"]
