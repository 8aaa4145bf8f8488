"""The counters papers cite, run beside ours: fvcore's FlopCountAnalysis and torch's FlopCounterMode.

fvcore counts "one fused multiply-add = one flop" and also counts BatchNorm and adaptive pooling, so its
total is a little above our MACs (4,111,512,576 against 4,089,184,256 for ResNet-50 at 224x224). It traces
with TorchScript, which needs real tensors: it runs at batch 1 on a real copy of the model and is scaled by
the batch size (every operator it counts is linear in the batch). FlopCounterMode counts 2 FLOPs per MAC
of mm/addmm/convolution and works on the meta device.

fvcore is imported inside ``fvcore_count``, only when a report asks for its count: its import alone takes most
of a second.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from resnet_inspect.analysis.counting import Counts, count
from resnet_inspect.analysis.memory import ensure_fits
from resnet_inspect.capture.tensors import private_copy
from resnet_inspect.capture.trace import structural_copy
from resnet_inspect.records import Capture, Shape
from resnet_inspect.units import bytes_text

DEFAULT_MEMORY_BUDGET_BYTES = 2 * 1024**3
# fvcore operator names that are convolutions or matrix products: the share every counter agrees on.
CONV_LINEAR_OPERATORS = frozenset({"conv", "linear", "addmm", "matmul", "bmm", "einsum"})


@dataclass(frozen=True)
class FvcoreCounts:
    """fvcore's counts at the capture's batch size; its unit: one fused multiply-add = one flop."""

    total_flops: int
    by_module: dict[str, int]  # qualified module name -> fvcore flops ("" is the whole model)
    by_operator: dict[str, int]  # "conv", "batch_norm", "linear", "adaptive_avg_pool2d", ...
    unsupported_ops: dict[str, int]  # operators fvcore saw but could not count, with how often (batch 1)
    uncalled_modules: tuple[str, ...]
    batch_size: int

    @property
    def conv_linear_flops(self) -> int:
        """fvcore's count for convolutions and matrix products only (equal to our MACs)."""
        return sum(flops for operator, flops in self.by_operator.items() if operator in CONV_LINEAR_OPERATORS)


def materialize(model: nn.Module, device: str = "cpu") -> nn.Module:
    """A model with real tensors on ``device``: ``model`` itself when it already is there, else a copy.

    A meta-device model gets uninitialised storage, then each module's ``reset_parameters`` (random init;
    weights do not change any count or timing); buffers without a rule are zeroed.
    """

    target = torch.device(device)
    tensors = [*model.parameters(), *model.buffers()]
    if all(t.device.type == target.type and target.index in (None, t.device.index) for t in tensors):
        return model
    if not any(tensor.is_meta for tensor in tensors):
        return private_copy(model).to(device)
    real = private_copy(model).to_empty(device=device)
    with torch.no_grad():
        for tensor in real.buffers():
            tensor.zero_()
        for module in real.modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()
            elif not any(True for _ in module.children()):
                for parameter in module.parameters(recurse=False):
                    torch.nn.init.normal_(parameter, std=0.02)
    return real


def batch1_memory_bytes(capture: Capture, counts: Counts | None = None) -> int:
    """Memory a batch-1 real forward needs, estimated from the capture: weights, buffers, all activations."""
    counts = counts or count(capture)
    batch_size = max(capture.input_shape[0], 1) if capture.input_shape else 1
    return counts.param_bytes + counts.buffer_bytes + (counts.input_bytes + counts.activation_bytes) // batch_size


def fvcore_count(model: nn.Module, capture: Capture, *, memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES,
                 counts: Counts | None = None) -> tuple[FvcoreCounts | None, str | None]:
    """fvcore's FlopCountAnalysis of ``model`` on the capture's input; (counts, None) or (None, why skipped).

    A run that needs more memory than the budget is skipped; one that needs more than the machine has
    raises MemoryGuardError.

    fvcore's log warnings are silenced; the operators it could not count are returned in
    ``unsupported_ops`` so the report can list them.
    """
    needed_bytes = batch1_memory_bytes(capture, counts)
    ensure_fits(needed_bytes, "--fvcore (a real batch-1 forward pass)", "lower --input-size, or leave out --fvcore")
    if needed_bytes > memory_budget_bytes:
        return None, (f"fvcore skipped: a real batch-1 forward needs about {bytes_text(needed_bytes)}, "
                      f"over the {bytes_text(memory_budget_bytes)} budget")
    batch_size = capture.input_shape[0]
    real = materialize(model, "cpu")
    if real is model:  # fvcore's hooks and the eval switch must not touch the caller's model
        real = private_copy(model)
    real.eval()
    dtype = next((parameter.dtype for parameter in real.parameters()), getattr(torch, capture.dtype))
    sample = torch.zeros((1, *capture.input_shape[1:]), dtype=dtype)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            from fvcore.nn import FlopCountAnalysis

            analysis = (FlopCountAnalysis(real, sample).unsupported_ops_warnings(False)
                        .uncalled_modules_warnings(False).tracer_warnings("none"))
            total_flops = analysis.total()
            by_module = analysis.by_module()
            by_operator = analysis.by_operator()
            unsupported_ops = analysis.unsupported_ops()
            uncalled = analysis.uncalled_modules()
    except Exception as exc:  # TorchScript tracing rejects some models (data-dependent control flow, ...)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return None, f"fvcore could not trace the model: {reason}"
    fvcore_counts = FvcoreCounts(
        total_flops=int(total_flops) * batch_size,
        by_module={name: int(flops) * batch_size for name, flops in by_module.items()},
        by_operator={name: int(flops) * batch_size for name, flops in by_operator.items()},
        unsupported_ops=dict(sorted(unsupported_ops.items())),
        uncalled_modules=tuple(sorted(uncalled)),
        batch_size=batch_size,
    )
    return fvcore_counts, None


def flop_counter_flops(model: nn.Module, input_shape: Shape) -> int:
    """torch.utils.flop_counter's total (2 FLOPs per MAC of mm/addmm/convolution), run on the meta device."""
    working = structural_copy(model, "meta").eval()
    sample = torch.empty(tuple(input_shape), device="meta")
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        working(sample)
    return int(counter.get_total_flops())


__all__ = ["FvcoreCounts", "flop_counter_flops", "fvcore_count", "materialize"]
