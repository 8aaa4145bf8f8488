"""What torch's CPU interpolation kernels allocate inside themselves, measured on real tensors: an oracle that never
uses resnet-inspect.

A temporary allocated inside an aten kernel is invisible to a dispatch mode, so each case runs in a child process
whose C library maps every buffer of 64 KiB or more on its own (``MALLOC_MMAP_THRESHOLD_=65536``): the resident
set then follows the live buffers. For one call of the forward (``F.interpolate``) and one of the backward
(``torch.autograd.grad`` with a given output gradient), the temporaries are

    the peak resident set during the call - the resident set before it - the bytes of the call's result.

A buffer may still be served from memory the C library already holds (freed small blocks): such a temporary reads
up to a few hundred KiB short.

Run as a script it prints one JSON object per case: ``python tests/oracle_interpolation.py THREADS CASES_JSON``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Case:
    """One interpolation: ``mode`` of an (N, C, *spatial) input, its layout (``channels_last``), the output
    gradient dense (in the output's layout) or the broadcast one a summed output gets (``broadcast``)."""

    mode: str
    spatial: tuple[int, ...]
    scale: float
    dtype: str = "float32"
    channels_last: bool = False
    broadcast: bool = False
    antialias: bool = False
    batch: int = 2
    channels: int = 16


@dataclass(frozen=True)
class Measured:
    forward_bytes: int  # the forward kernel's temporaries
    backward_bytes: int  # the backward kernel's temporaries
    output_bytes: int


def interpolate(case: Case, x):  # x: torch.Tensor -> torch.Tensor
    """``F.interpolate`` as the case asks (align_corners=False for the modes that take it)."""
    import torch.nn.functional as F

    options: dict = {"scale_factor": case.scale, "mode": case.mode}
    if case.mode in ("linear", "bilinear", "bicubic", "trilinear"):
        options["align_corners"] = False
    if case.antialias:
        options["antialias"] = True
    return F.interpolate(x, **options)


def inputs(case: Case, device: str):  # -> (x, output gradient maker)
    import torch

    dtype = getattr(torch, case.dtype)
    x = torch.randn((case.batch, case.channels, *case.spatial), dtype=torch.float32).to(dtype)
    x = x.to(device)
    if case.channels_last:
        x = x.contiguous(memory_format=torch.channels_last if len(case.spatial) == 2 else torch.channels_last_3d)
    x.requires_grad_(True)

    def gradient(output):
        if case.broadcast:
            return torch.ones((), dtype=dtype, device=device).expand(output.shape)
        return torch.ones_like(output)  # like the output: its layout

    return x, gradient


def _resident() -> dict[str, int]:
    from oracle_memory import _memory_status  # the measuring child runs with tests/ on its path

    return _memory_status()


def _added_by(call):  # -> (result, bytes the call added at its peak)
    Path("/proc/self/clear_refs").write_text("5")
    before = _resident()["VmRSS"]
    result = call()
    return result, _resident()["VmHWM"] - before


def measure_here(case: Case) -> Measured:
    import torch

    torch.manual_seed(0)
    x, gradient = inputs(case, "cpu")
    interpolate(case, x.detach())  # the kernels' one-time set-up
    output, forward_peak = _added_by(lambda: interpolate(case, x))
    output_gradient = gradient(output)
    torch.autograd.grad(output, x, output_gradient, retain_graph=True)
    (input_gradient,), backward_peak = _added_by(
        lambda: torch.autograd.grad(output, x, output_gradient, retain_graph=True))
    output_bytes = output.untyped_storage().nbytes()
    return Measured(forward_peak - output_bytes, backward_peak - input_gradient.untyped_storage().nbytes(),
                    output_bytes)


def measure(cases: list[Case], threads: int = 1, timeout_s: float = 120) -> list[Measured]:
    """Each case's kernel temporaries, in a child process with ``threads`` intra-op threads."""
    environment = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, str(Path(__file__).resolve()), str(threads),
               json.dumps([asdict(case) for case in cases])]
    completed = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=timeout_s,
                               cwd=ROOT, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"the measuring child failed: {completed.stderr.strip()[-2000:]}")
    return [Measured(**json.loads(line)) for line in completed.stdout.strip().splitlines()]


if __name__ == "__main__":
    import torch

    torch.set_num_threads(int(sys.argv[1]))
    for entry in json.loads(sys.argv[2]):
        measured = measure_here(Case(**{**entry, "spatial": tuple(entry["spatial"])}))
        print(json.dumps(asdict(measured)), flush=True)
