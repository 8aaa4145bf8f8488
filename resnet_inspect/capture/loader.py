"""Resolve a MODEL argument: a registry name, `torchvision:NAME`, `timm:NAME`, `path/to/file.py:factory` or
`package.module:factory`.

A spec other than a registry name imports and runs code, exactly as `python path/to/file.py` would: it must
never come from untrusted input. The factory is called with no arguments beyond the `--in-channels` (where it
takes that parameter) and `--num-classes` the user gave, once, on the meta device (only small tensors whose
values the constructor may read are real); only where its constructor reads the value of a large tensor is it
called a second time, on real tensors, under the memory guard. The attribute may also be a module instance,
which is used as it is: the file's module-level code runs on the meta device in the same way, so that an
instance made at import allocates nothing.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import inspect as pyinspect
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from resnet_inspect.capture.host_memory import MemoryGuardError
from resnet_inspect.capture.tensors import guarded_allocations, meta_except_small
from resnet_inspect.errors import FactoryError, InspectError, ModelNotFoundError, UnsupportedModelError
from resnet_inspect.names import first_line, printable
from resnet_inspect.units import bytes_text

if TYPE_CHECKING:
    from torch import nn

ECOSYSTEM_PREFIXES = ("torchvision", "timm")
EXTRA_HINT = "install it with: pip install 'resnet-inspect[{package}]'"
_CLOSE_MATCHES = 5


def _exit_reason(exc: SystemExit) -> str:
    return f"called sys.exit({exc.code!r})"


@contextmanager
def _user_code(what: str) -> Iterator[None]:
    """Run user code: an exit (``sys.exit``, ``SystemExit``) becomes a FactoryError instead of ending the tool."""
    try:
        yield
    except SystemExit as exc:
        raise FactoryError(f"{what} {_exit_reason(exc)}: the model's code must not exit the process") from exc


@contextmanager
def _fresh_neighbours(directory: Path, keep: str) -> Iterator[None]:
    """Forget, once the body has run, the modules it imported first from ``directory`` (the user file's
    neighbours, under a top-level name that was new), but ``keep`` (the file's own): each import of a user file
    imports them afresh, so that no meta tensor of an import on the meta device reaches one on real tensors."""
    known = set(sys.modules)
    try:
        yield
    finally:
        for name in [name for name in sys.modules if name not in known and name != keep]:
            origin = getattr(sys.modules[name], "__file__", None)
            if name.partition(".")[0] not in known and origin and Path(origin).resolve().is_relative_to(directory):
                del sys.modules[name]


def _import_file(path_text: str, device: str | None) -> Any:
    """Import ``path_text`` as `python path_text` would: its directory comes first on sys.path.

    Its module-level code is run as a factory is (``_build``): on ``device="meta"`` on the meta device, so that a
    model instance made at import (``net = Net()``) allocates nothing, and once more on real tensors, under the
    memory guard, only where that code reads a value the meta device cannot give; on another ``device`` (the CPU
    for None) on real tensors there, under the guard. A module-level tensor made on meta is meta: such a module
    serves the analyses, never a pass on real tensors, which imports the file (and its neighbours) for real.
    """
    path = Path(path_text)
    if not path.is_file():
        raise FactoryError(f"factory file not found: {path_text}")
    resolved = path.resolve()
    module_name = f"_resnet_inspect_user_{abs(hash(str(resolved)))}"
    spec = importlib.util.spec_from_file_location(module_name, resolved)
    if spec is None or spec.loader is None:
        raise FactoryError(f"cannot import {path_text}: not a Python file")
    loader = spec.loader
    directory = str(resolved.parent)
    if not sys.path or sys.path[0] != directory:
        sys.path.insert(0, directory)  # neighbours of the file import as they do under `python file.py`

    def execute() -> Any:
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            with _user_code(f"importing {path_text}"), _fresh_neighbours(resolved.parent, module_name):
                loader.exec_module(module)
        except (FactoryError, MemoryGuardError):  # an exit, or the guard's refusal of a real import
            sys.modules.pop(module_name, None)
            raise
        except Exception as exc:
            sys.modules.pop(module_name, None)
            raise FactoryError(f"cannot import {path_text}: {type(exc).__name__}: {first_line(str(exc))}") from exc
        return module

    return _build(_Subject(path_text, "importing", "imported", "module-level code"), execute, device)


def _import_module(module_text: str) -> Any:
    """Import ``module_text`` with the working directory on sys.path, as `python -m` has it."""
    working_directory = os.getcwd()
    if not any(entry in ("", working_directory) for entry in sys.path):
        sys.path.insert(0, working_directory)
    try:
        with _user_code(f"importing {module_text}"):
            return importlib.import_module(module_text)
    except FactoryError:
        raise
    except Exception as exc:
        raise FactoryError(f"cannot import module {module_text}: {type(exc).__name__}: {first_line(str(exc))}") from exc


def resolve_factory(spec: str, device: str | None = "meta") -> Any:
    """The object named by `file.py:factory` or `package.module:factory`: a callable or a module instance.

    A file is imported with its module-level code on ``device`` (see ``_import_file``); a package module is
    imported as Python imports it."""
    location, _, attribute = spec.rpartition(":")
    if not location or not attribute:
        raise FactoryError(f"'{spec}' is not a factory spec: use path/to/file.py:factory or package.module:factory")
    is_file = location.endswith(".py") or "/" in location or "\\" in location
    module = _import_file(location, device) if is_file else _import_module(location)
    factory = getattr(module, attribute, None)
    if factory is None:
        callables = sorted(name for name, value in vars(module).items() if callable(value) and not name.startswith("_"))
        hint = f"; it defines {', '.join(callables[:8])}" if callables else ""
        raise FactoryError(f"{location} has no attribute '{attribute}'{hint}")
    if not callable(factory):
        raise FactoryError(f"{spec} is not callable")
    return factory


def _parameters(factory: Callable[..., Any]) -> dict[str, pyinspect.Parameter] | None:
    try:
        return dict(pyinspect.signature(factory).parameters)
    except (TypeError, ValueError):  # builtins and some C extensions have no signature
        return None


def _call_options(spec: str, factory: Callable[..., Any], options: dict[str, Any]) -> dict[str, Any]:
    """The options the factory is called with; refuses a factory that needs other arguments.

    ``num_classes`` must be a parameter (or ``**kwargs``): --num-classes would otherwise be ignored without a
    word. ``in_channels`` is given only where accepted: --in-channels also sets the input's channels.
    """
    parameters = _parameters(factory)
    if parameters is None:
        return options
    takes_any = any(p.kind is pyinspect.Parameter.VAR_KEYWORD for p in parameters.values())
    if "num_classes" in options and not takes_any and "num_classes" not in parameters:
        raise FactoryError(f"{spec} has no parameter 'num_classes', so --num-classes cannot be applied; "
                           "leave the option out or add the parameter to the factory")
    accepted = {key: value for key, value in options.items() if takes_any or key in parameters}
    required = [name for name, p in parameters.items()
                if p.default is pyinspect.Parameter.empty and name not in accepted
                and p.kind not in (pyinspect.Parameter.VAR_POSITIONAL, pyinspect.Parameter.VAR_KEYWORD)]
    if required:
        raise FactoryError(f"{spec} needs arguments {', '.join(required)}: give them defaults, or point MODEL at a "
                           "factory that takes none")
    return accepted


def default_input_size(spec: str) -> int:
    """The model's designed input side for registry names (32 for the CIFAR ResNets), else 224 (on every spatial
    axis the model has)."""
    from resnet_inspect.models import list_models, model_spec

    if spec in list_models():
        return model_spec(spec).default_input_size
    return 224  # factories, ecosystem names, and unknown names (loading the model reports those)


def _no_weights(hub: Any, name: str) -> dict[str, None]:
    """``weights=None`` and every other ``weights_*`` argument the torchvision builder takes (a segmentation or
    detection model's ``weights_backbone`` would otherwise fetch ImageNet weights for its backbone)."""
    builder = getattr(hub, "get_model_builder", None)
    parameters = _parameters(builder(name)) if builder is not None else None
    names = [key for key in parameters or {} if key == "weights" or key.startswith("weights_")]
    return dict.fromkeys(names or ["weights"])


def _ecosystem_builder(spec: str, options: dict[str, Any]) -> Callable[[], Any]:
    """`torchvision:NAME` or `timm:NAME`: the package's own factory with no pretrained weights, ready to call (the
    package is imported and the name checked here, outside the build)."""
    package, _, name = spec.partition(":")
    try:
        if package == "torchvision":
            hub = importlib.import_module("torchvision.models")

            names, build = hub.list_models(), lambda: hub.get_model(name, **_no_weights(hub, name), **options)
        else:
            hub = importlib.import_module("timm")

            names, build = hub.list_models(), lambda: hub.create_model(name, pretrained=False, **options)
    except ImportError as exc:
        missing = getattr(exc, "name", None) or package
        hint = EXTRA_HINT.format(package=package)
        raise FactoryError(f"{spec} needs the package {package}, which cannot be imported ({missing}): {hint}") \
            from exc
    if name not in names:
        close = difflib.get_close_matches(name, names, n=_CLOSE_MATCHES, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; `{package}` lists {len(names)} models"
        raise ModelNotFoundError(f"unknown {package} model '{name}'{hint}")
    if "in_channels" in options:  # timm builds for any channel count; torchvision's models read 3
        channels = options.pop("in_channels")
        if package == "timm":
            options["in_chans"] = channels
    return build


class _Subject(NamedTuple):
    """What a build runs, for its messages: a factory's call (``spec``, "building", "built", "constructor") or a
    file's import (its path, "importing", "imported", "module-level code")."""

    name: str
    action: str = "building"
    done: str = "built"
    source: str = "constructor"


def _run_build(subject: _Subject, build: Callable[[], Any], *contexts: AbstractContextManager[Any]) -> Any:
    """``build()`` inside ``contexts``: its exit or exception becomes one FactoryError line (the memory guard's
    refusal, and an import's own one-line failure, pass as they are)."""
    try:
        with ExitStack() as stack:
            for context in contexts:
                stack.enter_context(context)
            with _user_code(subject.name):
                return build()
    except InspectError:
        raise
    except Exception as exc:
        raise FactoryError(f"{subject.name} raised {type(exc).__name__}: {first_line(str(exc))}") from exc


# What a build on real tensors is told to do when it would not fit: the analyses need no weights.
_REAL_BUILD_ADVICE = ("the model can be analysed without its weights (summary, verify, rf without --erf, fit), but "
                      "not built for real here")
_META_BUILD_ADVICE = ("compute the values the {source} reads from Python numbers, not from tensors, so that it "
                      "can be {done} on the meta device")


def _guarded_build(subject: _Subject, build: Callable[[], Any], device: str | None, meta_failure: str | None) -> Any:
    """``build()`` on real tensors on ``device`` (the CPU for None), refused before any torch call whose result would
    take what it has made beyond the memory available when it started (``MemoryGuardError``, exit code 2).

    ``meta_failure`` is why the meta device could not build it (None: real weights were asked for)."""
    import torch

    from resnet_inspect.capture import host_memory

    target = device or "cpu"
    available = host_memory.available_memory_bytes(target)
    if meta_failure is None:
        what, advice = f"{subject.action} {subject.name} with real weights", _REAL_BUILD_ADVICE
    else:
        what = (f"{subject.action} {subject.name} on real tensors (on the meta device its {subject.source} raised: "
                f"{meta_failure})")
        advice = _META_BUILD_ADVICE.format(source=subject.source, done=subject.done)

    def guard(held_bytes: int, next_bytes: int) -> None:
        if available is not None and held_bytes + next_bytes > available:
            where = "" if target == "cpu" else f" on {target}"
            raise host_memory.MemoryGuardError(
                f"{what} needs more than {bytes_text(held_bytes + next_bytes)} but only "
                f"{bytes_text(available)} is available{where}: {advice}")

    placed = torch.device(device) if device else nullcontext()
    return _run_build(subject, build, placed, guarded_allocations(guard))


# Failures that no device causes, which a real build would meet again.
_NOT_FROM_THE_DEVICE = (SyntaxError, ImportError)


def _build(subject: _Subject | str, build: Callable[[], Any], device: str | None) -> Any:
    """Run a factory's or a package's build, or a file's import: on the meta device when ``device`` is "meta"
    (only the small tensors whose values a constructor may read are real, ``meta_except_small``), falling back to
    a guarded real build on the CPU where the constructor needs more (the value of a large tensor); on a real
    ``device`` (the CPU for None), a guarded real build."""
    subject = _Subject(subject) if isinstance(subject, str) else subject
    if device != "meta":
        return _guarded_build(subject, build, device, None)
    try:
        return _run_build(subject, build, meta_except_small())
    except FactoryError as error:
        cause = error.__cause__
        if not isinstance(cause, Exception) or isinstance(cause, _NOT_FROM_THE_DEVICE):
            raise  # sys.exit, a syntax error, a missing package: a real build would fail the same way
        failure = first_line(str(error.__cause__))
    return _guarded_build(subject, build, None, failure)


# Where torch keeps its quantized module classes, whose weights are packed integers and whose forward needs
# quantized kernels: the capture can neither count them nor run them on the meta device.
_QUANTIZED_PACKAGES = ("torch.ao.nn.quantized", "torch.nn.quantized", "torch.ao.nn.intrinsic.quantized",
                       "torch.nn.intrinsic.quantized")


def _is_quantized(module: Any) -> bool:
    package = type(module).__module__
    return any(package == prefix or package.startswith(f"{prefix}.") for prefix in _QUANTIZED_PACKAGES) \
        and ".reference" not in package  # reference modules hold float weights


def usable_module(model: Any, what: str, *, from_factory: bool = False) -> nn.Module:
    """The module the tool inspects for ``model``, or an UnsupportedModelError (one line, naming ``what``).

    A ``torch.compile`` wrapper gives the module it compiled. TorchScript, quantized modules and lazy modules whose
    parameters do not exist yet are refused, with what to do instead; ``from_factory`` says it for a factory spec.
    The command line's loader and the Python API both call this.
    """
    import torch
    from torch.nn.modules.lazy import LazyModuleMixin

    if not isinstance(model, torch.nn.Module):
        raise UnsupportedModelError(f"{what} returned {type(model).__name__}, not a torch.nn.Module" if from_factory
                                    else f"model must be an nn.Module or a model name, got {type(model).__name__}")
    give = "return" if from_factory else "pass"
    if isinstance(model, torch.jit.ScriptModule):
        raise UnsupportedModelError(f"{what} is a TorchScript module (torch.jit.trace or torch.jit.script), which has "
                                    f"no Python layers to inspect: {give} the nn.Module before tracing or scripting it")
    compiled = getattr(model, "_orig_mod", None)  # torch.compile's wrapper: inspect the module it compiled
    if isinstance(compiled, torch.nn.Module):
        model = compiled
    for name, module in model.named_modules():
        label = f"{name or 'the model'} ({type(module).__name__})"
        if _is_quantized(module):
            raise UnsupportedModelError(
                f"{what}: {label} is a quantized module, whose packed integer weights cannot be analysed: {give} the "
                "float model, before it is quantized")
        # torch types the mixin's self as a private protocol that the narrowed module does not match
        if isinstance(module, LazyModuleMixin) and module.has_uninitialized_params():  # type: ignore[misc]
            remedy = ("in the factory before returning the model" if from_factory
                      else "on the model before passing it")
            raise UnsupportedModelError(
                f"{what}: {label} is a lazy module whose parameters are not initialised yet: run one forward pass "
                f"{remedy}")
    return model


def load_model(spec: str, *, in_channels: int | None = None, num_classes: int | None = None,
               device: str | None = "meta", runs_real: bool = False) -> tuple[nn.Module, str]:
    """Build the model a MODEL argument names; returns (model, display name).

    On ``device="meta"`` (the default) no weights are allocated: a registry model, a factory and a torchvision or
    timm builder all run on the meta device, where a factory's small tensors (64 MiB in all at most) stay real so
    that its constructor can read their values. A constructor that reads the value of a large tensor is run once
    more on the CPU, guarded: it is refused, before the allocation that would not fit in the memory available,
    with one line (``MemoryGuardError``). Another ``device`` (the CPU for None)
    builds real weights there, under the same guard. A user's file is imported the same way (``_import_file``),
    so that a module instance it makes at import (``file.py:net``) is on the meta device too; it is used as it is.
    ``runs_real`` (a model that will run on real tensors, as `time`'s) imports the file on real tensors, guarded,
    so that its module-level tensors are real, while a factory in it still runs on ``device``.
    """
    import torch

    from resnet_inspect.models import get_model

    options = {key: value for key, value in (("in_channels", in_channels), ("num_classes", num_classes))
               if value is not None}
    display = printable(spec)  # a path that is not UTF-8 shows its odd bytes as \xNN in every output
    if ":" not in spec and not spec.endswith(".py"):
        with torch.device(device) if device else nullcontext():
            return get_model(spec, **options), display  # an unknown name raises ModelNotFoundError
    if ":" not in spec:
        raise FactoryError(f"'{spec}' names a file but no factory: use {spec}:factory_name")
    if spec.partition(":")[0] in ECOSYSTEM_PREFIXES:
        model = _build(spec, _ecosystem_builder(spec, options), device)
        return usable_module(model, spec, from_factory=True), display
    factory = resolve_factory(spec, None if runs_real and device == "meta" else device)
    if isinstance(factory, torch.nn.Module):  # a module instance: used as it is, never called
        if "num_classes" in options:
            raise FactoryError(f"{spec} is a module instance, not a factory: --num-classes cannot be applied to it")
        return usable_module(factory, spec, from_factory=True), display
    accepted = _call_options(spec, factory, options)
    model = _build(spec, lambda: factory(**accepted), device)
    return usable_module(model, spec, from_factory=True), display


__all__ = ["ECOSYSTEM_PREFIXES", "default_input_size", "load_model", "resolve_factory", "usable_module"]
