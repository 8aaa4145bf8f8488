"""Sparse tensors in the training step: an ``Embedding`` or ``EmbeddingBag`` with ``sparse=True`` gives its weight a
sparse COO gradient in the backward.

A sparse tensor has no storage of its own: its memory is its component tensors' storages (COO: indices and
values; the compressed layouts: their index tensors and values), so the ledger follows those. The meta device runs
a few sparse operations wrongly or not at all: its sparse ``clone`` (SGD's momentum does it to its first buffer)
gives a tensor with no entries, and ``add_`` and ``mul_`` with a sparse tensor are missing or ask for
``_coalesce``, which meta lacks. ``sparse_rules`` answers those as the CPU kernels do: ``clone`` copies indices
and values (except ``AccumulateGrad``'s in the backward, which only the dispatch mode causes: torch takes the
gradient as it is); a sparse tensor added into a dense one, or a sparse one scaled, allocates nothing; a sparse
tensor added into a sparse one concatenates their entries. SGD's sparse momentum
buffer is filled as the first step leaves it (``sparse_momentum_buffers``), so the step modelled is the second.
Adam and AdamW refuse a sparse gradient in torch; ``refuse_sparse`` says so in one line.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from resnet_inspect.errors import BadInputError

# torch.optim's algorithms that accept a sparse gradient (SGD, with or without momentum); the others raise
SPARSE_OPTIMIZERS = ("none", "sgd", "momentum")


def components(tensor: Any) -> list[Any]:
    """The tensors that hold ``tensor``'s memory: itself when strided, its index tensors and values when sparse."""
    import torch

    layout = tensor.layout
    if layout == torch.strided:
        return [tensor]
    if layout == torch.sparse_coo:
        return [tensor._indices(), tensor._values()]
    if layout in (torch.sparse_csr, torch.sparse_bsr):
        return [tensor.crow_indices(), tensor.col_indices(), tensor.values()]
    if layout in (torch.sparse_csc, torch.sparse_bsc):
        return [tensor.ccol_indices(), tensor.row_indices(), tensor.values()]
    return [tensor]


def storage_bytes(tensor: Any) -> int:
    """The bytes of the storages that hold ``tensor`` (a sparse tensor's: its indices' and values')."""
    return sum(part.untyped_storage().nbytes() for part in components(tensor))


def gradient_bytes(gradient: Any) -> int:
    """A gradient's bytes: its elements' when dense, its indices' and values' storages when sparse."""
    import torch

    if gradient.layout == torch.strided:
        return int(gradient.numel() * gradient.element_size())
    return storage_bytes(gradient)


def _sparse_like(tensor: Any, indices: Any, values: Any) -> Any:
    import torch

    return torch.ops.aten._sparse_coo_tensor_with_dims_and_tensors(
        tensor.sparse_dim(), tensor.dense_dim(), list(tensor.shape), indices, values, dtype=tensor.dtype,
        layout=torch.sparse_coo, device=tensor.device, is_coalesced=tensor.is_coalesced())


def _clone(in_backward: Callable[[], bool]) -> Callable[..., Any]:
    """A sparse COO tensor's clone as the CPU kernel makes it: new indices and values, the same entries.

    In the backward, the clone of a sparse gradient is ``AccumulateGrad``'s: torch takes a gradient that nothing
    else holds, with contiguous indices and values, as it is (a new sparse tensor over the same storages, see
    ``accumulate_grad.h``), and clones it only because the dispatch mode's Python references count as holders.
    Without a mode, as a user runs it, nothing is copied: that is what is modelled."""
    import torch

    def clone(tensor: Any, **options: Any) -> Any:
        if tensor.layout != torch.sparse_coo:
            return NotImplemented
        indices, values = tensor._indices(), tensor._values()
        if in_backward() and indices.is_contiguous() and values.is_contiguous():
            return _sparse_like(tensor, indices, values)
        return _sparse_like(tensor, indices.clone(), values.clone())

    return clone


def _add_sparse_into_dense(tensor: Any, other: Any, alpha: Any = 1) -> Any:
    """``dense.add_(sparse)``: written in place into the dense tensor (the CPU kernel adds entry by entry)."""
    import torch

    if tensor.layout != torch.strided or other.layout != torch.sparse_coo:
        return NotImplemented
    return tensor


def _scale_in_place(tensor: Any, factor: Any) -> Any:
    """``sparse.mul_(scalar)``: the CPU kernel scales the values where they are, allocating nothing."""
    import torch

    if tensor.layout != torch.sparse_coo or isinstance(factor, torch.Tensor):
        return NotImplemented
    return tensor


def _add_sparse_into_sparse(track: Callable[[Any], None], tensor: Any, other: Any, alpha: Any = 1) -> Any:
    """``sparse.add_(sparse)`` (SGD's momentum buffer taking each new gradient): the CPU kernel concatenates both
    tensors' indices and values (``other``'s values scaled first when ``alpha`` is not 1) and makes those the
    result's, merging no rows, so the buffer grows by one gradient each step. Meta cannot swap a sparse tensor's
    storages in place: the concatenations are allocated (and ``track``ed) while the old storages live, as in torch,
    and let go at once; ``tensor`` keeps its own, the bytes it held when the step began."""
    import torch

    values = other._values() if alpha == 1 else other._values() * alpha
    parts = [values, torch.cat([tensor._indices(), other._indices()], 1), torch.cat([tensor._values(), values], 0)]
    for part in parts:
        track(part)
    return tensor


def _add_in_place(track: Callable[[Any], None]) -> Callable[..., Any]:
    """``add_`` with a sparse COO argument: into a dense tensor, or into a sparse one."""
    import torch

    def add(tensor: Any, other: Any, alpha: Any = 1) -> Any:
        if tensor.layout == torch.sparse_coo and other.layout == torch.sparse_coo:
            return _add_sparse_into_sparse(track, tensor, other, alpha)
        return _add_sparse_into_dense(tensor, other, alpha)

    return add


def sparse_rules(track: Callable[[Any], None], in_backward: Callable[[], bool]) -> dict[Any, Any]:
    """aten operation -> its answer for sparse meta tensors (NotImplemented: not a case handled here); ``track``
    is given the tensors a rule allocates and lets go before it returns (the dispatch mode does not see them);
    ``in_backward`` says whether the backward is running."""
    import torch

    aten = torch.ops.aten
    return {aten.clone.default: _clone(in_backward), aten.add_.Tensor: _add_in_place(track),
            aten.mul_.Tensor: _scale_in_place, aten.mul_.Scalar: _scale_in_place}


def is_sparse_call(args: tuple[Any, ...]) -> bool:
    """Whether an operation's positional arguments hold a sparse meta tensor."""
    import torch

    return any(isinstance(arg, torch.Tensor) and arg.is_meta and arg.layout != torch.strided for arg in args)


def sparse_momentum_buffers(gradients: list[Any], buffers: list[Any]) -> list[Any]:
    """SGD's momentum buffers, those of sparse gradients filled as torch's first step leaves them.

    A dense buffer costs a step the same every time, so the first step (which clones the gradient) stands for
    all. A sparse one does not: the first step clones the gradient, and every later one concatenates the new
    gradient's entries to the buffer's (``_add_sparse_into_sparse``). Given the first step's clone, the step run is
    the second: the buffer held before it, and the concatenation it allocates."""
    return [gradient.detach().clone() if buffer is None and gradient.is_sparse else buffer
            for gradient, buffer in zip(gradients, buffers, strict=True)]


def refuse_sparse(optimizer: str, parameters: list[Any]) -> None:
    """Adam and AdamW raise on a sparse gradient in torch ("does not support sparse gradients"): one line that says
    which parameters have one and what does accept them."""
    if optimizer in SPARSE_OPTIMIZERS:
        return
    shapes = ["x".join(map(str, p.shape)) for p in parameters if p.grad is not None and p.grad.is_sparse]
    if shapes:
        torch_name = {"adam": "Adam", "adamw": "AdamW"}.get(optimizer, optimizer)
        raise BadInputError(
            f"the {', '.join(shapes)} weight{'s' if len(shapes) > 1 else ''} of an Embedding or EmbeddingBag with "
            f"sparse=True get{'' if len(shapes) > 1 else 's'} a sparse gradient, and --optimizer {optimizer} does not "
            f"support sparse gradients (torch.optim.{torch_name} raises): use --optimizer sgd or momentum, or "
            "sparse=False")


__all__ = ["SPARSE_OPTIMIZERS", "components", "gradient_bytes", "is_sparse_call", "refuse_sparse",
           "sparse_momentum_buffers", "sparse_rules", "storage_bytes"]
