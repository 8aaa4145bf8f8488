"""Resolve a MODEL argument: a registry name, `path/to/file.py:factory` or `package.module:factory`."""

from __future__ import annotations

import importlib
import importlib.util
import inspect as pyinspect
import sys
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

from resnet_inspect.errors import FactoryError

if TYPE_CHECKING:
    from torch import nn


def _import_file(path_text: str) -> Any:
    path = Path(path_text)
    if not path.is_file():
        raise FactoryError(f"factory file not found: {path_text}")
    module_name = f"_resnet_inspect_user_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise FactoryError(f"cannot import {path_text}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(module_name, None)
        raise FactoryError(f"cannot import {path_text}: {type(exc).__name__}: {exc}".splitlines()[0]) from exc
    return module


def _import_module(module_text: str) -> Any:
    try:
        return importlib.import_module(module_text)
    except Exception as exc:
        raise FactoryError(f"cannot import module {module_text}: {type(exc).__name__}: {exc}".splitlines()[0]) from exc


def resolve_factory(spec: str) -> Callable[..., Any]:
    """The callable named by `file.py:factory` or `package.module:factory`."""
    location, _, attribute = spec.rpartition(":")
    if not location or not attribute:
        raise FactoryError(f"'{spec}' is not a factory spec: use path/to/file.py:factory or package.module:factory")
    is_file = location.endswith(".py") or "/" in location or "\\" in location
    module = _import_file(location) if is_file else _import_module(location)
    factory = getattr(module, attribute, None)
    if factory is None:
        callables = sorted(name for name, value in vars(module).items() if callable(value) and not name.startswith("_"))
        hint = f"; it defines {', '.join(callables[:8])}" if callables else ""
        raise FactoryError(f"{location} has no attribute '{attribute}'{hint}")
    if not callable(factory):
        raise FactoryError(f"{spec} is not callable")
    return factory


def _accepted(factory: Callable[..., Any], options: dict[str, Any]) -> dict[str, Any]:
    """The options the factory's signature accepts (all of them if it takes **kwargs)."""
    try:
        parameters = pyinspect.signature(factory).parameters
    except (TypeError, ValueError):
        return {}
    if any(p.kind is pyinspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return options
    return {key: value for key, value in options.items() if key in parameters}


def default_input_size(spec: str) -> int:
    """The model's designed input side for registry names (32 for the CIFAR ResNets), else 224 (on every spatial
    axis the model has)."""
    from resnet_inspect.models import list_models, model_spec

    if spec in list_models():
        return model_spec(spec).default_input_size
    return 224  # factories, and unknown names (loading the model reports those)


def load_model(spec: str, *, in_channels: int | None = None, num_classes: int | None = None,
               device: str | None = "meta") -> tuple[nn.Module, str]:
    """Build the model a MODEL argument names; returns (model, display name).

    With ``device="meta"`` registry models are built without allocating weights. User factories are tried on
    the meta device first and built normally if that fails (a factory may load weights or need real data).
    """
    import torch

    from resnet_inspect.models import get_model

    options = {key: value for key, value in (("in_channels", in_channels), ("num_classes", num_classes))
               if value is not None}
    device_context = torch.device(device) if device else nullcontext()
    if ":" not in spec and not spec.endswith(".py"):
        with device_context:
            return get_model(spec, **options), spec  # an unknown name raises ModelNotFoundError
    if ":" not in spec:
        raise FactoryError(f"'{spec}' names a file but no factory: use {spec}:factory_name")
    factory = resolve_factory(spec)
    accepted = _accepted(factory, options)
    model: Any = None
    if device:
        try:
            with device_context:
                model = factory(**accepted)
        except Exception:
            model = None
    if model is None:
        try:
            model = factory(**accepted)
        except Exception as exc:
            raise FactoryError(f"{spec} raised {type(exc).__name__}: {exc}".splitlines()[0]) from exc
    if not isinstance(model, torch.nn.Module):
        raise FactoryError(f"{spec} returned {type(model).__name__}, not a torch.nn.Module")
    return model, spec
