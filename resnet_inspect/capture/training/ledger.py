"""The storage ledger: every storage a training step allocates, from its allocation to its release, and which of
them autograd saves for the backward.

A storage is known by ``id(untyped_storage)`` while it lives; a weak-reference finaliser records its release when
nothing holds it any more, so lifetimes are torch's own. Each allocation gets a number, in order, so that a storage
saved in the forward and a later one that reuses its id are told apart.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from resnet_inspect.capture.training.meta_kernels import pointwise
from resnet_inspect.capture.training.sparse import components, is_sparse_call, sparse_rules
from resnet_inspect.records import StepPhase


@dataclass(frozen=True)
class Allocation:
    """A live storage: its allocation number and size."""

    number: int
    bytes: int


@dataclass(frozen=True)
class LedgerEvent:
    """One allocation (``bytes`` > 0) or release (< 0) of the storage allocated ``number``-th."""

    number: int
    bytes: int
    phase: StepPhase
    layer: str  # the innermost layer running (its backward, in the backward phase)


@dataclass(frozen=True)
class SavedStorage:
    """A storage autograd saved for the backward during the forward."""

    number: int  # its allocation number (0: the step never saw it allocated)
    bytes: int
    layer: int | None  # the LayerRecord index of the innermost call running when it was saved


@dataclass
class StorageLedger:
    """The step's storages. ``weights`` and ``inputs`` (storage ids) are held before the step starts: never
    allocations, and counted apart when saved."""

    weights: set[int]
    inputs: set[int]
    phase: StepPhase = StepPhase.FORWARD
    layer: str = ""
    follow: Callable[[], str] | None = None  # during the forward: names the innermost layer running
    live: dict[int, Allocation] = field(default_factory=dict)  # id(storage) -> its allocation
    events: list[LedgerEvent] = field(default_factory=list)
    saved: dict[int, SavedStorage] = field(default_factory=dict)  # id(storage) -> the activation saved
    saved_weights: dict[int, int] = field(default_factory=dict)  # id(storage) -> bytes, weights saved
    saved_inputs: dict[int, int] = field(default_factory=dict)  # id(storage) -> bytes, the input saved
    count: int = 0

    def track(self, tensor: Any) -> None:
        """Record ``tensor``'s storage as an allocation, unless it is already live or held before the step (a
        sparse tensor's: its indices' and values' storages)."""
        if self.follow is not None:
            self.layer = self.follow()
        for part in components(tensor):
            self._track_storage(part.untyped_storage())

    def _track_storage(self, storage: Any) -> None:
        key = id(storage)
        if key in self.live or key in self.weights or key in self.inputs:
            return
        size = storage.nbytes()
        self.count += 1
        self.live[key] = Allocation(self.count, size)
        self.events.append(LedgerEvent(self.count, size, self.phase, self.layer))
        weakref.finalize(storage, self._release, key, self.count, size)

    def _release(self, key: int, number: int, size: int) -> None:
        entry = self.live.get(key)
        if entry is not None and entry.number == number:
            del self.live[key]
        self.events.append(LedgerEvent(number, -size, self.phase, self.layer))

    def number_of(self, tensor: Any) -> int | None:
        """The allocation number of ``tensor``'s storage while it lives (None: not allocated by the step); of a
        sparse tensor, its values' storage."""
        entry = self.live.get(id(components(tensor)[-1].untyped_storage()))
        return entry.number if entry else None

    def numbers_of(self, tensors: list[Any]) -> set[int]:
        """The allocation numbers of the storages of ``tensors`` (all of a sparse tensor's) the step allocated and
        that still live."""
        parts = [part for tensor in tensors for part in components(tensor)]
        return {number for number in (self.number_of(part) for part in parts) if number}

    def save(self, tensor: Any, layer: int | None) -> None:
        """Autograd saves ``tensor`` for the backward (each storage once; a sparse tensor's indices and values)."""
        for part in components(tensor):
            self._save_storage(part, layer)

    def _save_storage(self, tensor: Any, layer: int | None) -> None:
        storage = tensor.untyped_storage()
        key = id(storage)
        if key in self.weights:
            self.saved_weights[key] = storage.nbytes()
        elif key in self.inputs:
            self.saved_inputs[key] = storage.nbytes()
        else:  # a storage saved before and since freed may lend its id to a new one: that one is saved anew
            number = self.number_of(tensor) or 0
            entry = self.saved.get(key)
            if entry is None or entry.number != number:
                self.saved[key] = SavedStorage(number, storage.nbytes(), layer)

    def kept(self) -> list[SavedStorage]:
        """The saved activations still alive now (the same allocation as when saved)."""
        return [entry for key, entry in self.saved.items()
                if entry.number and key in self.live and self.live[key].number == entry.number]




def tracking_mode(ledger: StorageLedger, fast: dict[Any, Any] | None = None,
                  temporaries: Callable[[Any, tuple[Any, ...], Any], list[int]] | None = None) -> Any:
    """A dispatch mode that sees every aten operation's outputs (a storage not seen before is an allocation) and
    runs the ``fast`` meta kernels (and the pointwise shortcut) before torch's own; sparse meta tensors go to
    sparse.py's rules first, never to the shortcuts. ``temporaries`` gives the bytes a device's kernel allocates
    inside itself (invisible here): each is allocated after the outputs and released before the operation
    returns."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    sparse = sparse_rules(ledger.track, lambda: ledger.phase == StepPhase.BACKWARD)

    class StorageMode(TorchDispatchMode):
        """Sees every aten operation's outputs: a storage not seen before is an allocation."""

        @classmethod
        def _should_skip_dynamo(cls) -> bool:  # nothing is compiled in here: no need to import torch._dynamo
            return False

        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            import torch

            kwargs = kwargs or {}
            rule = (fast or {}).get(func)
            result = NotImplemented
            if is_sparse_call(tuple(args)):  # the meta device's own sparse kernels are wrong or missing
                result = sparse.get(func, lambda *_args, **_kwargs: NotImplemented)(*args, **kwargs)
            elif rule is not None and all(not isinstance(a, torch.Tensor) or a.is_meta for a in args):
                result = rule(*args, **kwargs)
            elif fast is not None and torch.Tag.pointwise in func.tags:
                result = pointwise(func, tuple(args), kwargs)
            if result is NotImplemented:
                result = func(*args, **kwargs)
            for leaf in tree_leaves(result):
                if isinstance(leaf, torch.Tensor):
                    ledger.track(leaf)
            held = [torch.empty(size, dtype=torch.uint8, device="meta")
                    for size in (temporaries(func, tuple(args), result) if temporaries is not None else ())]
            for temporary in held:
                ledger.track(temporary)
            del held  # freed as the kernel returns (the last with this frame)
            return result

    return StorageMode()


__all__ = ["Allocation", "LedgerEvent", "SavedStorage", "StorageLedger", "tracking_mode"]
