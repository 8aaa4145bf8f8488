"""The memory a new allocation can use on this host or device, and the refusal when a run would not fit.

The capture layer reads it before a build or a pass allocates anything (the loader's real builds); the analyses'
memory guard (``analysis.memory``) compares its estimates with it. The memory available is the smaller of the
kernel's ``MemAvailable`` and what the process's cgroup still allows (its ``memory.max`` less its current use), or
the free memory of the CUDA device.
"""

from __future__ import annotations

from pathlib import Path

from resnet_inspect.errors import InspectError

PROC_MEMINFO = Path("/proc/meminfo")
PROC_CGROUP = Path("/proc/self/cgroup")
CGROUP_ROOT = Path("/sys/fs/cgroup")


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


__all__ = [
    "MemoryGuardError", "available_memory_bytes", "cgroup_available_bytes", "meminfo_available_bytes",
]
