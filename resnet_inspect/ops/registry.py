"""The operation table itself: the registered entries, the built-in ones loaded on first use, and the lookups
the capture and the analyses make (by name, by function name, by module class)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from resnet_inspect.ops.table import OpSpec


@dataclass
class _Table:
    entries: dict[str, OpSpec] = field(default_factory=dict)
    by_function: dict[str, OpSpec] = field(default_factory=dict)
    module_entries: list[OpSpec] = field(default_factory=list)  # user entries first, then built-ins
    loaded: bool = False


_TABLE = _Table()


def register_op(spec: OpSpec, *, replace: bool = False) -> OpSpec:
    """Add ``spec`` to the table (a user's entry is matched before the built-in ones).

    An entry with the same name, or a function name another entry claims, raises ValueError unless
    ``replace=True``, which takes the name and the function names over.
    """
    _load_builtins()
    return _register(spec, replace=replace, first=True)


def _register(spec: OpSpec, *, replace: bool, first: bool) -> OpSpec:
    if not spec.modules and not spec.functions:
        raise ValueError(f"operation {spec.name!r} matches nothing: give modules or functions")
    if not replace:
        if spec.name in _TABLE.entries:
            raise ValueError(f"operation {spec.name!r} is already registered (pass replace=True to override it)")
        taken = [name for name in spec.functions if name in _TABLE.by_function]
        if taken:
            owner = _TABLE.by_function[taken[0]].name
            raise ValueError(f"function {taken[0]!r} is already matched by operation {owner!r}")
    old = _TABLE.entries.get(spec.name)
    if old is not None:
        _TABLE.module_entries = [entry for entry in _TABLE.module_entries if entry is not old]
        for name in old.functions:
            _TABLE.by_function.pop(name, None)
    _TABLE.entries[spec.name] = spec
    for name in spec.functions:
        _TABLE.by_function[name] = spec
    if spec.modules:
        if first:
            _TABLE.module_entries.insert(0, spec)
        else:
            _TABLE.module_entries.append(spec)
    return spec


def unregister_op(name: str) -> None:
    """Remove a user's entry (built-in entries can be replaced, not removed)."""
    _load_builtins()
    spec = _TABLE.entries.pop(name)
    _TABLE.module_entries = [entry for entry in _TABLE.module_entries if entry is not spec]
    for function in spec.functions:
        if _TABLE.by_function.get(function) is spec:
            del _TABLE.by_function[function]
    from resnet_inspect.ops.builtin import builtin_ops

    for builtin in builtin_ops():  # a replaced built-in comes back
        if builtin.name == name:
            _register(builtin, replace=True, first=False)


def _load_builtins() -> None:
    if _TABLE.loaded:
        return
    _TABLE.loaded = True
    from resnet_inspect.ops.builtin import UNKNOWN_OP, builtin_ops

    for spec in builtin_ops():
        _register(spec, replace=False, first=False)
    _TABLE.entries[UNKNOWN_OP.name] = UNKNOWN_OP


def get_op(name: str) -> OpSpec:
    """The entry called ``name`` (the ``unknown`` entry for a name the table has lost)."""
    _load_builtins()
    return _TABLE.entries.get(name) or _TABLE.entries["unknown"]


def ops() -> tuple[OpSpec, ...]:
    """Every entry, in matching order for modules."""
    _load_builtins()
    return tuple(_TABLE.entries.values())


def op_for_function(name: str) -> OpSpec | None:
    _load_builtins()
    return _TABLE.by_function.get(name)


def _stock_forward(module: Any, spec: OpSpec) -> bool:
    """The module runs the matched class's own forward: the first class in its MRO that the entry names or that
    torch.nn defines."""
    for cls in type(module).__mro__:
        if cls in spec.modules or cls.__module__.startswith("torch.nn."):
            return type(module).forward is getattr(cls, "forward", None)
    return True


def op_for_module(module: Any) -> OpSpec | None:
    """The entry that takes ``module`` as one operation, or None to look inside it."""
    _load_builtins()
    for spec in _TABLE.module_entries:
        if isinstance(module, spec.modules):
            return spec if _stock_forward(module, spec) else None
    return None


def declared_op(module: Any) -> OpSpec | None:
    """The entry of the class ``module`` derives from, whether or not it runs that class's forward: what it
    declares (a ``Conv2d`` subclass that pads in its own forward still declares a convolution's geometry)."""
    _load_builtins()
    return next((spec for spec in _TABLE.module_entries if isinstance(module, spec.modules)), None)


__all__ = [
    "declared_op",
    "get_op",
    "op_for_function",
    "op_for_module",
    "ops",
    "register_op",
    "unregister_op",
]
