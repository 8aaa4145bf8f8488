"""The optimizer step: torch.optim's functional algorithms over the gradients the backward left."""

from __future__ import annotations

from typing import Any

from resnet_inspect.capture.training.meta_kernels import meta_like
from resnet_inspect.capture.training.sparse import refuse_sparse, sparse_momentum_buffers


def optimizer_step(name: str, parameters: list[Any], state: dict[int, list[Any]], foreach: bool | None = None
                   ) -> None:
    """One step of torch.optim's ``name`` over the ``parameters`` that have gradients, through torch's functional
    form of the algorithm (constructing an Optimizer would import torch._dynamo). ``state`` (id of a parameter ->
    its state tensors) is filled on the first step as torch's optimizers fill theirs: sgd none, momentum the
    momentum buffer, adam and adamw both moments (and the step count, a CPU scalar). A sparse gradient (an
    Embedding's with sparse=True) goes through SGD as in torch (its momentum buffer is sparse, and the step modelled
    is the second, the first that adds into it); Adam and AdamW refuse it, as torch's do."""
    import torch
    from torch.optim.adam import adam
    from torch.optim.sgd import sgd

    stepped = [p for p in parameters if p.grad is not None]
    if name == "none" or not stepped:
        return
    grads = [p.grad for p in stepped]
    refuse_sparse(name, stepped)
    if name in ("sgd", "momentum"):
        buffers = [state.get(id(p), [None])[0] for p in stepped]
        if name == "momentum":  # a sparse gradient's buffer as the first step leaves it (see sparse_momentum_buffers)
            buffers = sparse_momentum_buffers(grads, buffers)
        sgd(stepped, grads, buffers, has_sparse_grad=any(grad.is_sparse for grad in grads), foreach=foreach,
            weight_decay=0.0, momentum=0.9 if name == "momentum" else 0.0, lr=1e-3, dampening=0.0, nesterov=False,
            maximize=False)
        for parameter, buffer in zip(stepped, buffers, strict=True):
            if buffer is not None:
                state[id(parameter)] = [buffer]
        return
    for parameter in stepped:  # as torch.optim.Adam's _init_group: two like the parameter, a CPU step count
        if id(parameter) not in state:  # (their values do not matter on meta: no zeros_like, which imports sympy)
            state[id(parameter)] = [meta_like(parameter), meta_like(parameter), torch.tensor(0.0, dtype=torch.float32)]
    moments = [state[id(p)] for p in stepped]
    adam(stepped, grads, [m[0] for m in moments], [m[1] for m in moments], [], [m[2] for m in moments],
         foreach=foreach, decoupled_weight_decay=name == "adamw", amsgrad=False, beta1=0.9, beta2=0.999, lr=1e-3,
         weight_decay=1e-2 if name == "adamw" else 0.0, eps=1e-8, maximize=False)


__all__ = ["optimizer_step"]
