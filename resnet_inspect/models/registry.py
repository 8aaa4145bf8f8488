"""A name -> model factory registry: one dict, filled by the ``register_model`` decorator."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from torch import nn

from resnet_inspect.errors import ModelNotFoundError
from resnet_inspect.limits import check_optional

ModelFactory = Callable[..., nn.Module]
FactoryT = TypeVar("FactoryT", bound=ModelFactory)


@dataclass(frozen=True)
class ModelSpec:
    """What a registered name builds, known without building it."""

    name: str
    family: str  # "resnet", "resnet-v1", "resnext", "wide-resnet", "cifar-resnet"
    block: str  # "basic" or "bottleneck"
    stages: tuple[int, ...]  # residual blocks per stage
    default_input_size: int  # side of the square input the model was designed for (224, or 32 for CIFAR)
    default_num_classes: int
    params: int = 0  # parameters at 3 input channels and the default classes, counted from the configuration


@dataclass(frozen=True)
class _Entry:
    spec: ModelSpec
    factory: ModelFactory


_REGISTRY: dict[str, _Entry] = {}


def register_model(spec: ModelSpec) -> Callable[[FactoryT], FactoryT]:
    """Register a factory ``(in_channels=3, num_classes=...) -> nn.Module`` under ``spec.name``.

    Refuses a name that is already taken, so two variants can never shadow each other.
    """

    def decorator(factory: FactoryT) -> FactoryT:
        if spec.name in _REGISTRY:
            raise ValueError(f"model {spec.name!r} is already registered")
        _REGISTRY[spec.name] = _Entry(spec, factory)
        return factory

    return decorator


def list_models() -> list[str]:
    """Registered names, in registration order."""
    return list(_REGISTRY)


def get_model(name: str, **kwargs: object) -> nn.Module:
    """Build the model registered as ``name``; ``kwargs`` (``in_channels``, ``num_classes``) go to its factory.

    An unknown name raises ``ModelNotFoundError`` (a ``ValueError``) that suggests the closest names; a channel or
    class count out of range a ``BadInputError`` (a ``ValueError`` too), with the command line's message.
    """
    entry = _entry(name)
    for option in ("in_channels", "num_classes"):
        check_optional(option, kwargs.get(option))
    return entry.factory(**kwargs)


def model_spec(name: str) -> ModelSpec:
    """The spec of the model registered as ``name``."""
    return _entry(name).spec


def _entry(name: str) -> _Entry:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ModelNotFoundError(_unknown_name_message(name)) from None


def _unknown_name_message(name: str) -> str:
    close = difflib.get_close_matches(name, list(_REGISTRY), n=3)
    if close:
        return f"unknown model {name!r}; did you mean {', '.join(close)}?"
    return f"unknown model {name!r}; available: {', '.join(_REGISTRY)}"
