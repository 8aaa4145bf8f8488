"""The memory guard: estimate a real run's peak before it starts, and refuse when it cannot fit.

Every path that allocates real tensors (the ERF, `rf --check`, `time`, `summary --time`, `--fvcore`,
`compare --time`) calls ``ensure_fits`` with an estimate made from the meta capture, before allocating
anything. The memory available is the smaller of the kernel's ``MemAvailable`` and what the process's
cgroup still allows (its ``memory.max`` less its current use), or the free memory of the CUDA device.
Without the guard, such a run is killed by the kernel, or takes the machine down with it.
"""

from __future__ import annotations

import math
from pathlib import Path

from resnet_inspect.errors import InspectError
from resnet_inspect.records import Capture
from resnet_inspect.units import bytes_text

PROC_MEMINFO = Path("/proc/meminfo")
PROC_CGROUP = Path("/proc/self/cgroup")
CGROUP_ROOT = Path("/sys/fs/cgroup")
FLOAT64_BYTES = 8


class MemoryGuardError(InspectError):
    """A run whose estimated peak exceeds the memory available (exit code 2, nothing allocated)."""


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def meminfo_available_bytes(meminfo: Path = PROC_MEMINFO) -> int | None:
    """The kernel's estimate of memory available to new work (``MemAvailable``), None where unknown."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_directories(proc_cgroup: Path, root: Path) -> list[Path]:
    """The process's memory cgroup directories, innermost first (cgroup v2, then v1's memory controller)."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return []
    directories: list[Path] = []
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, relative = rest.partition(":")
        if hierarchy == "0" and controllers == "":
            base = root
        elif "memory" in controllers.split(","):
            base = root / "memory"
        else:
            continue
        directory = base / relative.lstrip("/")
        while True:  # a parent's limit binds its children too
            directories.append(directory)
            if directory == base or base not in directory.parents:
                break
            directory = directory.parent
    return directories


def cgroup_available_bytes(proc_cgroup: Path = PROC_CGROUP, root: Path = CGROUP_ROOT) -> int | None:
    """What the tightest enclosing cgroup still allows: its limit less its use (reclaimable cache excluded)."""
    tightest: int | None = None
    for directory in _cgroup_directories(proc_cgroup, root):
        limit = _read_int(directory / "memory.max") or _read_int(directory / "memory.limit_in_bytes")
        if limit is None or limit >= 1 << 60:  # "max", or v1's "no limit" (a huge round number)
            continue
        used = _read_int(directory / "memory.current") or _read_int(directory / "memory.usage_in_bytes") or 0
        used -= _inactive_file_bytes(directory)
        room = max(0, limit - max(used, 0))
        tightest = room if tightest is None else min(tightest, room)
    return tightest


def _inactive_file_bytes(directory: Path) -> int:
    """Page cache the kernel can drop before it kills anything (``inactive_file`` in memory.stat)."""
    try:
        for line in (directory / "memory.stat").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key in ("inactive_file", "total_inactive_file"):
                return int(value)
    except (OSError, ValueError):
        return 0
    return 0


def available_memory_bytes(device: str = "cpu") -> int | None:
    """Memory a new allocation on ``device`` can use; None when the system does not say."""
    if device.startswith("cuda"):
        import torch

        free, _total = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    if device == "mps":
        return None  # unified memory: the CPU figures below would be a guess, and MPS reports its own errors
    figures = [figure for figure in (meminfo_available_bytes(), cgroup_available_bytes()) if figure is not None]
    return min(figures) if figures else None


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
    "inference_bytes", "meminfo_available_bytes", "replay_bytes",
]
