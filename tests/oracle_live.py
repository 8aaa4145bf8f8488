"""A live-storage tracker on a real CPU training step: the bytes held where the backward starts and where it ends,
an oracle that never uses resnet-inspect's estimator.

Every aten operation's outputs are seen through a dispatch mode; each storage is counted from then until nothing
holds it (a weak-reference finaliser on the storage), so the live bytes are torch's own. Held before the step, and
added to every reading: the parameters, buffers, the optimizer's state (after a warm-up step, its gradients set
to None as ``zero_grad`` does) and the input. The step is a training loop's: ``output = model(x)``,
``loss = output.sum()``, ``loss.backward()`` (the output and the loss held through it), ``optimizer.step()``.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
from oracle_memory import make_optimizer
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class LiveStorages(TorchDispatchMode):
    """The storages made under the mode that are still alive, by id; views of the storages held before the step
    (``weight.t()`` in a linear layer) are not new storages."""

    def __init__(self, resident: list[torch.Tensor]) -> None:
        super().__init__()
        self.live: dict[int, int] = {}
        self.resident = {t.untyped_storage().data_ptr() for t in resident}

    def _forget(self, key: int) -> None:
        self.live.pop(key, None)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(result):
            if isinstance(leaf, torch.Tensor):
                storage = leaf.untyped_storage()
                key = id(storage)
                if key not in self.live and storage.data_ptr() not in self.resident:
                    self.live[key] = storage.nbytes()
                    weakref.finalize(storage, self._forget, key)
        return result

    def bytes(self) -> int:
        return sum(self.live.values())


@dataclass(frozen=True)
class BackwardBounds:
    backward_start_bytes: int  # held when loss.backward() is called
    backward_end_bytes: int  # held once it has returned (the loop still holds the output and the loss)


def _storage_bytes(tensors: list[torch.Tensor]) -> int:
    return sum({t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}.values())


def backward_bounds(model: nn.Module, example: torch.Tensor, optimizer_name: str = "adamw") -> BackwardBounds:
    model.train()
    optimizer = make_optimizer(optimizer_name, model.parameters())
    model(example).sum().backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    state = [v for s in optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
    held = [*model.parameters(), *model.buffers(), *state, example]
    resident = _storage_bytes(held)
    with LiveStorages(held) as tracker:
        output = model(example)
        loss = output.sum()
        start = resident + tracker.bytes()
        loss.backward()
        end = resident + tracker.bytes()
        del output, loss
        optimizer.step()
    return BackwardBounds(start, end)
