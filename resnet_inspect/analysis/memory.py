"""The memory guard: estimate a real run's peak before it starts, and refuse when it cannot fit.

Every path that allocates real tensors (the ERF, `rf --check`, `time`, `summary --time`, `--fvcore`,
`compare --time`) calls ``ensure_fits`` with an estimate made from the meta capture, before allocating
anything. The memory available is the smaller of the kernel's ``MemAvailable`` and what the process's
cgroup still allows (its ``memory.max`` less its current use), or the free memory of the CUDA device.
Without the guard, such a run is killed by the kernel, or takes the machine down with it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from resnet_inspect.capture.host_memory import (
    MemoryGuardError,
    available_memory_bytes,
    cgroup_available_bytes,
    meminfo_available_bytes,
)
from resnet_inspect.records import Capture
from resnet_inspect.units import bytes_text

FLOAT64_BYTES = 8


def ensure_fits(needed_bytes: int, what: str, lower_with: str, device: str = "cpu",
                available_bytes: int | None = None) -> None:
    """Raise MemoryGuardError naming both figures and the option that lowers the need, when it does not fit.

    ``available_bytes`` is a figure read earlier (a run that checks as it goes compares with what it started
    with); by default the memory available now."""
    available = available_bytes if available_bytes is not None else available_memory_bytes(device)
    if available is not None and needed_bytes > available:
        where = "" if device == "cpu" else f" on {device}"
        raise MemoryGuardError(f"{what} needs about {bytes_text(needed_bytes)} but only {bytes_text(available)} is "
                               "available"
                               f"{where}: {lower_with}")


def real_pass_guard(lower_with: str = "lower --input-size or --batch-size") -> Callable[[int, int, str], None]:
    """The guard of the capture's fallback to real tensors (``capture_inputs``'s ``real_pass_guard``), which
    allocates: it is refused, before each operation, when what the pass holds and the operation's result (with
    the kernels' own copies) exceed the memory available when it started."""
    available: list[int | None] = []  # read once, at the first question: the pass's own use must not count twice

    def guard(held_bytes: int, next_bytes: int, where: str) -> None:
        if not available:
            available.append(available_memory_bytes())
        ensure_fits(held_bytes + KERNEL_OVERHEAD * next_bytes,
                    f"the forward pass on real tensors{f' up to {where}' if where else ''} (the model reads tensor "
                    "values, so the meta device cannot stand in for them)", lower_with, available_bytes=available[0])

    return guard


# ------------------------------------------------------------------------------------------------ estimates


def _per_sample(total_bytes: int, capture: Capture) -> float:
    batch = capture.input_shape[0] if capture.input_shape and capture.input_shape[0] > 0 else 1
    return total_bytes / batch


# The kernels' own copies (oneDNN's reordered layouts, workspaces) on top of the live activations, and of the
# weights once more (reordered weights and the primitives' caches): ResNet-50 on the CPU measured weights x 2 plus
# about 1.45x the live activations both at batch 16 (420 MB) and at batch 128 (1.85 GiB against 1.15 GiB live).
KERNEL_OVERHEAD = 2
WEIGHT_COPIES = 2


def inference_bytes(capture: Capture, batch_size: int, element_bytes: int | None = None) -> int:
    """A real inference pass at ``batch_size``: the weights WEIGHT_COPIES times, the buffers, and the largest set
    of live activations times KERNEL_OVERHEAD (an upper bound: the guard must not let a run through that then
    cannot fit).

    ``element_bytes`` rescales the activations for another dtype than the capture's (float16 halves them).
    """
    from resnet_inspect.analysis.counting import count
    from resnet_inspect.analysis.counting import element_bytes as bytes_of

    counts = count(capture)
    scale = 1.0 if element_bytes is None else element_bytes / bytes_of(capture.dtype)
    activations = KERNEL_OVERHEAD * _per_sample(counts.peak_activation_bytes, capture) * batch_size * scale
    return int(WEIGHT_COPIES * capture.param_bytes * scale + capture.buffer_bytes + activations)


def gradient_bytes(capture: Capture, batch_size: int = 1) -> int:
    """A forward pass kept for backward, then the backward (the ERF): every activation, twice the largest."""
    from resnet_inspect.analysis.counting import count

    counts = count(capture)
    kept = _per_sample(counts.input_bytes + counts.activation_bytes, capture) * batch_size
    live = _per_sample(counts.peak_activation_bytes, capture) * batch_size
    return int(capture.param_bytes + capture.buffer_bytes + kept + 2 * live)


def replay_bytes(capture: Capture, check_size: tuple[int, ...]) -> int:
    """`rf --check`'s one-channel float64 replay at ``check_size``: each operation's map, kept for backward."""
    scale = math.prod(check_size) / max(math.prod(capture.input_shape[2:]), 1)
    maps = sum(math.prod(node.output_shape[2:]) for node in capture.nodes if len(node.output_shape) > 2)
    return int(2 * FLOAT64_BYTES * (maps * scale + math.prod(check_size)))


__all__ = [
    "MemoryGuardError", "available_memory_bytes", "cgroup_available_bytes", "ensure_fits", "gradient_bytes",
    "inference_bytes", "meminfo_available_bytes", "real_pass_guard", "replay_bytes",
]
