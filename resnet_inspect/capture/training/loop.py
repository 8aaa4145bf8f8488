"""The step as a training loop writes it: the model's forward, the loss, the backward (over micro-batches), the
optimizer's step. The built-in step is a plain Python function, so what it holds and when it lets go are Python's
own: the output and the loss live until the next micro-batch's replace them, and to the end of the step after the
last. A user's own step (``step=`` in the API) is called the same way, with the same three handles.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from resnet_inspect.capture.trace import tensors_in
from resnet_inspect.errors import BadInputError
from resnet_inspect.limits import LOSSES

# step(model, optimizer, *inputs, **keyword_inputs): one training step as the user writes it
StepFunction = Callable[..., Any]


def loss_terms(output: Any, loss: str, target: Callable[[Any, str], Any]) -> list[Any]:
    """The losses a loop backpropagates from ``output``: one per floating output that needs a gradient (a scalar
    output is a loss already). ``loss`` is one of LOSSES: ``sum`` of the output; ``cross-entropy`` against class
    indices, of shape (N, *spatial) for an output (N, C, *spatial); ``mse`` against a target of the output's shape.
    ``target(output, loss)`` gives the batch's target, loaded with the input before the step."""
    import torch.nn.functional as F

    terms = []
    for tensor in tensors_in(output):
        if not (tensor.requires_grad and tensor.is_floating_point()):
            continue
        if tensor.dim() == 0:
            terms.append(tensor)
        elif loss == "sum":
            terms.append(tensor.sum())
        elif loss == "mse":
            terms.append(F.mse_loss(tensor, target(tensor, loss)))
        else:
            if tensor.dim() < 2:
                raise BadInputError(f"the cross-entropy loss needs outputs of shape (N, C, ...); the model returns "
                                    f"one of shape {tuple(tensor.shape)}: use the sum or mse loss")
            terms.append(F.cross_entropy(tensor, target(tensor, loss)))
    return terms


def builtin_step(model: Any, optimizer: Any, inputs: Any, losses: Callable[[Any], list[Any]],
                 micro_batches: int) -> None:
    """The tool's own step: ``micro_batches`` forwards and backwards (the gradients accumulate), then the optimizer
    step and ``zero_grad(set_to_none=True)``."""
    import torch

    for _ in range(micro_batches):
        output = model(*inputs.args, **inputs.kwargs)
        terms = losses(output)
        if terms:
            torch.autograd.backward(terms)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


class StepOptimizer:
    """The optimizer a step is handed: ``step()`` runs the chosen torch.optim algorithm over the gradients (through
    ``run``), ``zero_grad`` lets them go as torch's does; ``param_groups`` as torch's, for code that reads them
    (gradient clipping, GradScaler)."""

    def __init__(self, parameters: list[Any], run: Callable[[], None]) -> None:
        self.parameters, self._run = parameters, run
        self.param_groups = [{"params": parameters, "lr": 1e-3}]
        self.state: dict[Any, Any] = {}

    def step(self, closure: Callable[[], Any] | None = None) -> None:
        if closure is not None:
            raise BadInputError("the training step passes a closure to optimizer.step(): call the closure in the "
                                "step itself")
        self._run()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for parameter in self.parameters:
            if parameter.grad is None:
                continue
            if set_to_none:
                parameter.grad = None
            else:
                parameter.grad.zero_()


class ModelHandle:
    """The model a step is handed: calling it runs ``forward`` (the instrumented forward of the meta copy); every
    other attribute is the copy's own (``parameters()``, ``train()``, submodules)."""

    def __init__(self, working: Any, forward: Callable[..., Any]) -> None:
        self._working, self._forward = working, forward

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._forward(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._working, name)


__all__ = ["LOSSES", "ModelHandle", "StepFunction", "StepOptimizer", "builtin_step", "loss_terms"]
