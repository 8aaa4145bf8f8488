"""The limits on numeric options, the choices and the defaults, in one place for the command line and the API.

A count beyond these would never finish (``--warmup``, ``--repeat``, ``--erf-samples``) or asks torch for
something it answers obscurely (a ``Conv2d(0, 64)``, ``set_num_threads(0)``). The command line passes the
option's own spelling (``--warmup``), the API its argument's (``warmup``); the rule and the wording are the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from resnet_inspect.errors import BadInputError

MAX_INPUT_SIZE = 65536  # on each spatial axis
MAX_COUNT = 1 << 20  # the largest batch size, channel count or class count accepted
MAX_WARMUP = 10_000  # untimed passes
MAX_REPEAT = 100_000  # timed passes
MAX_ERF_SAMPLES = 1_000  # each is a forward and a backward pass
MAX_THREADS = 4096

# The choices and defaults that both the code and the command line's help texts read (this module imports
# nothing heavy, so `resnet-inspect --help` stays fast).
OPTIMIZERS = ("none", "sgd", "momentum", "adam", "adamw")  # of a training step: torch.optim's
DEFAULT_OPTIMIZER = "adamw"
LOSSES = ("sum", "cross-entropy", "mse")  # --loss: what the built-in step backpropagates from the output
DEFAULT_LOSS = "sum"
AMP_DTYPES = {"bf16": "bfloat16", "fp16": "float16"}  # --amp: autocast to this dtype
DTYPES = ("float32", "bfloat16", "float16")  # what --dtype converts a model to
DEFAULT_SHARD_UNITS = "block"  # --shard-units: fully_shard on each residual block, then the model
DEFAULT_DEPTH = 4  # summary's table: a ResNet's blocks (the JSON and the queries keep every layer)
# fit: what the reserve leaves out of the memory budget by default (see pipeline/fit.py for why)
RESERVE_SHARE = 0.05
GPU_RESERVE_FIXED_BYTES = 512 << 20


@dataclass(frozen=True)
class Limit:
    """An integer option's range: ``minimum`` to ``maximum`` (None: no upper bound)."""

    minimum: int
    maximum: int | None

    def check(self, value: Any, name: str) -> int:
        """``value`` when it is an int in range, else BadInputError naming ``name`` and the bound it broke."""
        lowest = "positive" if self.minimum == 1 else f"{self.minimum} or more"
        if not isinstance(value, int) or isinstance(value, bool):
            raise BadInputError(f"{name} must be an integer, {lowest}, got {value!r}")
        if value < self.minimum:
            raise BadInputError(f"{name} must be {lowest}, got {value}")
        if self.maximum is not None and value > self.maximum:
            raise BadInputError(f"{name} {value} is larger than the maximum {self.maximum}")
        return value


LIMITS: dict[str, Limit] = {
    "input_size": Limit(1, MAX_INPUT_SIZE),
    "batch_size": Limit(1, MAX_COUNT),
    "in_channels": Limit(1, MAX_COUNT),
    "num_classes": Limit(1, MAX_COUNT),
    "depth": Limit(1, None),
    "warmup": Limit(0, MAX_WARMUP),
    "repeat": Limit(1, MAX_REPEAT),
    "threads": Limit(1, MAX_THREADS),
    "erf_samples": Limit(1, MAX_ERF_SAMPLES),
    "shard": Limit(1, MAX_COUNT),
    "accumulate": Limit(1, MAX_COUNT),
}


def check_option(option: str, value: Any, name: str | None = None) -> int:
    """Check ``value`` against the limit of ``option`` (a key of LIMITS); ``name`` is how the caller spells it
    in the message (default: the option itself)."""
    return LIMITS[option].check(value, name or option)


def check_optional(option: str, value: Any, name: str | None = None) -> int | None:
    """``check_option`` for an option that may be left out (None)."""
    return None if value is None else check_option(option, value, name)


__all__ = [
    "AMP_DTYPES",
    "DEFAULT_DEPTH",
    "DEFAULT_LOSS",
    "DEFAULT_OPTIMIZER",
    "DEFAULT_SHARD_UNITS",
    "DTYPES",
    "GPU_RESERVE_FIXED_BYTES",
    "LIMITS",
    "LOSSES",
    "MAX_COUNT",
    "MAX_ERF_SAMPLES",
    "MAX_INPUT_SIZE",
    "MAX_REPEAT",
    "MAX_THREADS",
    "MAX_WARMUP",
    "OPTIMIZERS",
    "RESERVE_SHARE",
    "Limit",
    "check_option",
    "check_optional",
]
