"""Where the input enters the model: the first windowed operation (convolution or pooling) that the input meets.

The number of spatial axes of the default input, and its channels, are that operation's. The order in which a
model registers its modules does not say which one the input meets first: timm's ECA-NFNet registers a ``Conv1d``
inside each ECA gate while its ``Conv2d`` stem runs through a convolution of its own (weight standardisation), so
the first windowed module in registration order is the gate's. Here a meta-device pass follows the values that
derive from the input and stops at the first windowed operation, module or function, that one of them reaches.
Nothing is computed; the pass ends before the rest of the model runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeGuard

from resnet_inspect.capture.tensors import structural_copy, tensors_in
from resnet_inspect.ops.registry import op_for_function, op_for_module
from resnet_inspect.ops.table import Call, OpSpec, function_name

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class Entry:
    """The first windowed operation fed by the input: its spatial rank, and the channels it takes (None for a
    pooling, which takes any)."""

    name: str
    rank: int
    channels: int | None


class _Reached(Exception):
    """Stops the probe's forward pass at the entry."""

    def __init__(self, entry: Entry) -> None:
        super().__init__(entry.name)
        self.entry = entry


def _channels(spec: OpSpec, call: Call, groups: int) -> int | None:
    """The input channels a convolution takes: its module's ``in_channels``, else its weight's shape."""
    if spec.name not in ("conv", "conv_transpose"):
        return None
    module_channels = getattr(call.module, "in_channels", None)
    if isinstance(module_channels, int):
        return module_channels
    weight = call.arg(1, "weight")
    shape = tuple(getattr(weight, "shape", ()))
    if len(shape) < 2:
        return None
    return int(shape[0]) if spec.name == "conv_transpose" else int(shape[1]) * groups


def _entry(spec: OpSpec, call: Call, name: str) -> Entry | None:
    try:
        geometry, _ = spec.geometry(call)
    except (RuntimeError, TypeError, ValueError, IndexError, KeyError, AttributeError):
        return None
    return Entry(name, geometry.rank, _channels(spec, call, geometry.groups))


@contextmanager
def _following_the_input(model: nn.Module, derived: dict[int, Any], convolutions_only: bool) -> Iterator[None]:
    """Module pre-hooks and a function mode that raise ``_Reached`` at the first windowed operation (convolution,
    with ``convolutions_only``) whose first tensor argument derives from the input; every other operation runs
    and passes derivation on."""
    import torch
    from torch.overrides import TorchFunctionMode

    def fed(value: Any) -> bool:
        return any(id(tensor) in derived for tensor in tensors_in(value))

    def stops_at(spec: OpSpec | None) -> TypeGuard[OpSpec]:
        return spec is not None and spec.checked and (not convolutions_only or spec.kind.is_weighted)

    names = {id(module): name for name, module in model.named_modules()}

    def pre_hook(module: Any, args: Any, kwargs: Any) -> None:
        spec = op_for_module(module)
        if spec is not None and stops_at(spec) and fed(list(args)[:1]):
            entry = _entry(spec, Call(module, tuple(args), kwargs), names.get(id(module), type(module).__name__))
            if entry is not None:
                raise _Reached(entry)

    class InputFollower(TorchFunctionMode):
        def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            kwargs = kwargs or {}
            spec = op_for_function(function_name(func))
            if spec is not None and stops_at(spec) and args and fed(args[0]):
                entry = _entry(spec, Call(None, tuple(args), kwargs), function_name(func))
                if entry is not None:
                    raise _Reached(entry)
            result = func(*args, **kwargs)
            if fed(list(args)) or fed(kwargs):
                for tensor in tensors_in(result):
                    derived[id(tensor)] = tensor  # held, so that no other tensor takes its id
            return result

    handles = [module.register_forward_pre_hook(pre_hook, with_kwargs=True) for module in model.modules()]
    try:
        with torch.no_grad(), InputFollower():
            yield
    finally:
        for handle in handles:
            handle.remove()


def input_entry(model: nn.Module, rank: int, channels: int = 3, size: int = 224,
                convolutions_only: bool = False) -> Entry | None:
    """The first windowed operation (the first convolution, with ``convolutions_only``) that a
    ``(1, channels, *(size,) * rank)`` input meets, on a meta-device copy of ``model``; None when the forward
    pass fails, or ends, before the input reaches one."""
    import torch

    on_meta = all(t.is_meta for t in (*model.parameters(), *model.buffers()))
    working = model if on_meta else structural_copy(model, "meta")
    image = torch.zeros((1, channels, *(size,) * rank), device="meta")
    derived: dict[int, Any] = {id(image): image}
    try:
        with _following_the_input(working, derived, convolutions_only):
            working(image)
    except _Reached as reached:
        return reached.entry
    except Exception:  # the model's own code may raise anything before the input reaches a window
        return None
    return None


__all__ = ["Entry", "input_channels", "input_entry", "spatial_rank"]


def _windowed_modules(model: nn.Module) -> Iterator[tuple[Any, OpSpec]]:
    """The model's convolution and pooling modules, in definition order, with their table entries."""
    for module in model.modules():
        spec = op_for_module(module)
        if spec is not None and spec.checked:
            yield module, spec


def _module_ranks(model: nn.Module) -> list[int]:
    """The spatial rank of each convolution and pooling module, in definition order."""
    ranks = []
    for module, spec in _windowed_modules(model):
        try:
            geometry, _ = spec.geometry(Call(module, (), {}))
        except (RuntimeError, TypeError, ValueError, IndexError, KeyError, AttributeError):
            continue
        ranks.append(geometry.rank)
    return ranks


def spatial_rank(model: nn.Module, default: int = 2) -> int:
    """How many spatial axes the model's input has: that of the first convolution or pooling the input meets
    (Conv1d: 1, Conv3d: 3), else ``default``.

    When every such module has one rank, that is it; when they differ (an ECA gate's Conv1d in a 2-D network),
    or the model has none (functional convolutions), a meta pass finds the one the input meets first.
    """
    ranks = _module_ranks(model)
    if len(set(ranks)) == 1:
        return ranks[0]
    entry = input_entry(model, ranks[0] if ranks else default)
    if entry is not None:
        return entry.rank
    return ranks[0] if ranks else default


def input_channels(model: nn.Module, default: int = 3) -> int:
    """The channels taken by the first convolution the input meets (``default`` when it meets none)."""
    entry = input_entry(model, spatial_rank(model), default, convolutions_only=True)
    if entry is not None and entry.channels is not None:
        return entry.channels
    for module, _ in _windowed_modules(model):
        channels = getattr(module, "in_channels", None)
        if isinstance(channels, int):
            return channels
    return default
