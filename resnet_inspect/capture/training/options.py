"""The training step's options: the optimizer, the precision, and the device whose kernels are modelled."""

from __future__ import annotations

from dataclasses import dataclass

from resnet_inspect.errors import BadInputError

OPTIMIZERS = ("none", "sgd", "momentum", "adam", "adamw")
AMP_DTYPES = {"bf16": "bfloat16", "fp16": "float16"}
DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class TrainOptions:
    """How the step is run: the optimizer, the precision, and the device whose kernels are modelled."""

    optimizer: str = "adamw"
    dtype: str | None = None  # convert the model and input to it (None: the model's own)
    amp: str | None = None  # "bf16" or "fp16": autocast, master weights and optimizer state in float32
    device: str = "cpu"  # which attention kernel and optimizer implementation torch would pick there

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise BadInputError(f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
        if self.dtype is not None and self.dtype not in DTYPES:
            raise BadInputError(f"unknown dtype {self.dtype!r}; choose one of {', '.join(DTYPES)}")
        if self.amp is not None and self.amp not in AMP_DTYPES:
            raise BadInputError(f"unknown --amp {self.amp!r}; choose one of {', '.join(AMP_DTYPES)}")
        if self.amp is not None and self.dtype not in (None, "float32"):
            raise BadInputError(f"--amp {self.amp} keeps float32 master weights: it cannot be combined with --dtype "
                                f"{self.dtype} (use one or the other)")


__all__ = ["AMP_DTYPES", "DTYPES", "OPTIMIZERS", "TrainOptions"]
