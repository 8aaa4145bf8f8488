"""The per-device memory of a real FSDP2 step, measured by PyTorch's own ``FSDPMemTracker``: an oracle that never
uses resnet-inspect's estimator.

``torch.distributed.fsdp.fully_shard`` is applied to the chosen units (modules of one class, or every module that
owns parameters itself: "layer"), then to the model. The process group is torch's fake one
(``dist.init_process_group("fake", ...)``, rank 0 of N): collectives return at once, yet FSDP2 allocates its
all-gather and reduce-scatter buffers as on real devices, on CPU tensors, so no GPU is needed. A warm-up step
creates the optimizer's state; the tracker's peak is that of the second step. The loss is the sum of the output.

It runs in a child process (a process group cannot be set up twice in one):
``python tests/oracle_fsdp.py resnet50 2,3,64,64 8 ResNetBottleNeckBlock``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _units(model, units: str) -> list:  # -> list[nn.Module]
    if units == "layer":
        return [module for name, module in model.named_modules()
                if name and any(True for _ in module.parameters(recurse=False))]
    return [module for module in model.modules() if type(module).__name__ == units]


def measure_here(model_spec: str, input_shape: tuple[int, ...], devices: int, units: str) -> int:
    """FSDPMemTracker's peak of the second AdamW step on rank 0 of ``devices`` (bytes)."""
    import torch
    import torch.distributed as dist
    from oracle_memory import build_model
    from torch.distributed._tools.fsdp2_mem_tracker import FSDPMemTracker
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.testing._internal.distributed.fake_pg import FakeStore

    dist.init_process_group("fake", rank=0, world_size=devices, store=FakeStore())
    mesh = init_device_mesh("cpu", (devices,))
    torch.manual_seed(0)
    model = build_model(model_spec)
    for module in _units(model, units):
        fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    example = torch.randn(input_shape)
    tracker = FSDPMemTracker(model, optimizer)
    tracker.track_inputs((example,))
    with tracker:
        for step in range(2):
            model(example).sum().backward()
            optimizer.step()
            optimizer.zero_grad()
            if step == 0:
                tracker.reset_mod_stats()
    peak = tracker.get_tracker_snapshot("peak")
    dist.destroy_process_group()
    return int(peak[torch.device("cpu")]["Total"])


def measure_sharded(model_spec: str, input_shape: tuple[int, ...], devices: int, units: str,
                    timeout_s: float = 900) -> int:
    """``measure_here`` in a child process."""
    command = [sys.executable, str(Path(__file__).resolve()), model_spec, ",".join(map(str, input_shape)),
               str(devices), units]
    completed = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
                               timeout=timeout_s, cwd=ROOT, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"the FSDP oracle failed: {completed.stderr.strip()[-2000:]}")
    return int(json.loads(completed.stdout.strip().splitlines()[-1])["peak_bytes"])


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "tests"))
    spec, shape_text, devices_text, units_text = sys.argv[1:5]
    peak_bytes = measure_here(spec, tuple(int(size) for size in shape_text.split(",")), int(devices_text), units_text)
    print(json.dumps({"peak_bytes": peak_bytes}))
