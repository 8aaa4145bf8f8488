"""resnet-inspect: shapes, convolution arithmetic, receptive fields, FLOPs and timing of ResNets.

The public API is imported lazily so that ``import resnet_inspect`` (and ``resnet-inspect --help``)
does not pay for importing torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "list_models": "resnet_inspect.models",
    "get_model": "resnet_inspect.models",
    "model_spec": "resnet_inspect.models",
    "load_torchvision_weights": "resnet_inspect.models",
    "summary": "resnet_inspect.api",
    "inspect": "resnet_inspect.api",
    "verify": "resnet_inspect.api",
    "receptive_field": "resnet_inspect.api",
    "compare": "resnet_inspect.api",
    "time_model": "resnet_inspect.api",
    "fit": "resnet_inspect.api",
    "training_memory": "resnet_inspect.api",
    "load_model": "resnet_inspect.capture.loader",
    "register_op": "resnet_inspect.ops",
    "OpSpec": "resnet_inspect.ops",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'resnet_inspect' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
