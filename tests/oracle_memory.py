"""The measured memory of one training step on real tensors: an oracle that never uses resnet-inspect's estimator.

On the CPU the step runs in a child process whose C library maps every buffer of 64 KiB or more on its own
(``MALLOC_MMAP_THRESHOLD_=65536``), so a freed tensor goes back to the system at once and the resident set follows
the live tensors. A warm-up step first creates the optimizer's state (and the kernels' one-time set-up); the
gradients are set to None as ``optimizer.zero_grad()`` does; the peak resident set is then reset
(``/proc/self/clear_refs``) and the second step runs. The step's peak is

    measured peak = bytes resident before the step (weights, buffers, optimizer state, the input)
                    + (peak resident set during the step - resident set before it).

On a GPU (``device="cuda"``) it is ``torch.cuda.max_memory_allocated()`` over the second step, in the same process.

The loss is the sum of the model's output by default, so its gradient is a broadcast scalar that holds no memory of
its own; ``loss="cross-entropy"`` (class indices) or ``"mse"`` train against a target made with the warm-up step and
held, like the input, before the measured one. ``accumulate=K`` runs K forwards and backwards per optimizer step.

Run as a script it prints one JSON object: ``python tests/oracle_memory.py resnet18 8,3,224,224 momentum``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OPTIMIZERS = ("none", "sgd", "momentum", "adam", "adamw")


@dataclass(frozen=True)
class MeasuredStep:
    """One training step's memory as measured on real tensors (bytes)."""

    peak_bytes: int  # resident before the step + what the step added at its highest
    resident_bytes: int  # weights, buffers, optimizer state and the input, held before the step starts
    step_extra_bytes: int  # the step's own peak above what was resident before it
    state_bytes: int  # the optimizer's state after the warm-up step


def load_attribute(spec: str):
    """The object ``path/to/file.py:name`` names."""
    import importlib.util

    path, name = spec.rsplit(":", 1)
    module_spec = importlib.util.spec_from_file_location(Path(path).stem, ROOT / path)
    module = importlib.util.module_from_spec(module_spec)
    sys.path.insert(0, str(ROOT / Path(path).parent))
    module_spec.loader.exec_module(module)
    return getattr(module, name)


def build_model(spec: str):  # -> nn.Module
    """A registered name (``resnet50``) or ``path/to/file.py:factory`` (the test zoo)."""
    if ":" in spec:
        return load_attribute(spec)()
    from resnet_inspect.models import get_model

    return get_model(spec)


def make_optimizer(name: str, parameters):  # -> torch.optim.Optimizer | None
    """torch.optim's own optimizers with their default implementation on the device."""
    import torch

    trainable = [parameter for parameter in parameters if parameter.requires_grad]
    if name == "none" or not trainable:
        return None
    if name == "sgd":
        return torch.optim.SGD(trainable, lr=1e-3)
    if name == "momentum":
        return torch.optim.SGD(trainable, lr=1e-3, momentum=0.9)
    if name == "adam":
        return torch.optim.Adam(trainable, lr=1e-3)
    if name == "adamw":
        return torch.optim.AdamW(trainable, lr=1e-3)
    raise ValueError(f"unknown optimizer {name!r}; one of {', '.join(OPTIMIZERS)}")


def storages_of(tensor) -> list:  # -> list[torch.UntypedStorage]
    """The storages that hold ``tensor``: its own, or a sparse COO tensor's indices' and values'."""
    if tensor.is_sparse:
        return [tensor._indices().untyped_storage(), tensor._values().untyped_storage()]
    return [tensor.untyped_storage()]


def tensor_bytes(tensors) -> int:
    storages = {}
    for tensor in tensors:
        for storage in storages_of(tensor):
            storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


def state_tensors(optimizer) -> list:
    import torch

    if optimizer is None:
        return []
    return [value for state in optimizer.state.values() for value in state.values() if isinstance(value, torch.Tensor)]


def _loss(output, loss: str, targets: list):
    """The step's loss; ``targets`` holds the batch's target once made (as a data loader's batch holds it)."""
    import torch
    import torch.nn.functional as F

    outputs = output if isinstance(output, (tuple, list)) else (output,)
    trained = [item for item in outputs if item.requires_grad]
    if loss == "sum":
        return sum(item.sum() if item.dim() else item for item in trained)
    if not targets:
        targets.extend(torch.zeros(item.shape[:1] + item.shape[2:], dtype=torch.long) if loss == "cross-entropy"
                       else torch.zeros_like(item.detach()) for item in trained)
    function = F.cross_entropy if loss == "cross-entropy" else F.mse_loss
    return sum(function(item, target) for item, target in zip(trained, targets, strict=True))


def _step(model, example, optimizer, amp: str | None, device: str, loss: str = "sum", accumulate: int = 1,
          targets: list | None = None) -> None:
    import torch

    for _ in range(accumulate):
        if amp is not None:
            with torch.autocast(device, dtype=torch.bfloat16 if amp == "bf16" else torch.float16):
                output = model(example)
        else:
            output = model(example)
        value = _loss(output, loss, targets if targets is not None else [])
        value.backward()
    if optimizer is not None:
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    else:
        model.zero_grad(set_to_none=True)


def _memory_status() -> dict[str, int]:
    status = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            status[key] = int(value.split()[0]) * 1024
    return status


def measure_here(model_spec: str, input_shape: tuple[int, ...], optimizer_name: str, dtype: str = "float32",
                 amp: str | None = None, device: str = "cpu", seed: int = 0, loss: str = "sum",
                 accumulate: int = 1, step: str | None = None) -> MeasuredStep:
    """Measure in this process (the CPU figure is only clean in a child started by ``measure_step``)."""
    import torch

    torch.manual_seed(seed)
    model = build_model(model_spec).to(device=device, dtype=getattr(torch, dtype))
    example = torch.randn(input_shape, dtype=getattr(torch, dtype), device=device)
    return measure_model(model, example, optimizer_name, amp, device, loss, accumulate,
                         None if step is None else load_attribute(step))


def measure_model(model, example, optimizer_name: str, amp: str | None = None, device: str = "cpu",
                  loss: str = "sum", accumulate: int = 1, step=None) -> MeasuredStep:
    """Measure a built model on ``example`` (both on ``device``) in this process."""
    import torch

    model.train()
    optimizer = make_optimizer(optimizer_name, model.parameters())
    targets: list = []

    def run() -> None:
        if step is not None:  # the user's own step(model, optimizer, x)
            step(model, optimizer, example)
        else:
            _step(model, example, optimizer, amp, device, loss, accumulate, targets)

    run()  # warm-up: the optimizer's state, the kernels' set-up
    state_bytes = tensor_bytes(state_tensors(optimizer))
    resident = tensor_bytes([*model.parameters(), *model.buffers(), example, *state_tensors(optimizer), *targets])
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        run()
        torch.cuda.synchronize()
        extra = torch.cuda.max_memory_allocated() - before
    else:
        Path("/proc/self/clear_refs").write_text("5")  # the peak resident set starts again from the current one
        before = _memory_status()["VmRSS"]
        run()
        extra = _memory_status()["VmHWM"] - before
    return MeasuredStep(resident + extra, resident, extra, state_bytes)


class LiveStorages:
    """A live-storage tracker for real CPU tensors: every storage an aten operation returns that it has not seen is
    an allocation, released when torch frees it (a weak-reference finaliser on the storage); ``peak_bytes`` is the
    most that was live at once. Storages held before it starts (``resident``: weights, the input, the optimizer's
    state, which in-place operations return again) are not counted. A sparse tensor counts its indices' and values'
    storages. Its dispatch mode holds Python references that make autograd's AccumulateGrad clone a sparse gradient
    it would otherwise take as it is: there its count is the clone's, above a real step (``measure_step`` is the
    oracle for sparse gradients). Written for these tests alone: it shares no code with resnet-inspect."""

    def __init__(self, resident) -> None:  # resident: list[torch.Tensor]
        self.resident = {storage.data_ptr() for tensor in resident for storage in storages_of(tensor)}
        self.live: dict[int, int] = {}  # data pointer -> bytes
        self.current = 0
        self.peak_bytes = 0

    def add(self, tensor) -> None:  # tensor: torch.Tensor
        if tensor.device.type != "cpu":
            return
        if tensor.is_sparse:  # a sparse COO tensor's memory is its indices' and values' storages
            self.add(tensor._indices())
            self.add(tensor._values())
            return
        self._add_storage(tensor.untyped_storage())

    def _add_storage(self, storage) -> None:  # storage: torch.UntypedStorage
        import weakref

        key = storage.data_ptr()
        if key == 0 or key in self.live or key in self.resident:
            return
        self.live[key] = storage.nbytes()
        self.current += storage.nbytes()
        self.peak_bytes = max(self.peak_bytes, self.current)
        weakref.finalize(storage, self._release, key)

    def _release(self, key: int) -> None:
        self.current -= self.live.pop(key, 0)

    def mode(self):  # -> TorchDispatchMode
        import torch
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_leaves

        tracker = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                result = func(*args, **(kwargs or {}))
                for leaf in tree_leaves(result):
                    if isinstance(leaf, torch.Tensor):
                        tracker.add(leaf)
                return result

        return Mode()


def tracked_step(model, example, optimizer_name: str) -> MeasuredStep:
    """The second training step of ``model`` on ``example`` (real CPU tensors), its peak counted by
    ``LiveStorages``: the bytes resident before the step plus the most the step held beyond them."""
    model.train()
    optimizer = make_optimizer(optimizer_name, model.parameters())
    _step(model, example, optimizer, None, "cpu")  # warm-up: the optimizer's state
    state_bytes = tensor_bytes(state_tensors(optimizer))
    held = [*model.parameters(), *model.buffers(), example, *state_tensors(optimizer)]
    resident = tensor_bytes(held)
    tracker = LiveStorages(held)
    with tracker.mode():
        _step(model, example, optimizer, None, "cpu")
    return MeasuredStep(resident + tracker.peak_bytes, resident, tracker.peak_bytes, state_bytes)


def measure_step(model_spec: str, input_shape: tuple[int, ...], optimizer_name: str, dtype: str = "float32",
                 amp: str | None = None, timeout_s: float = 600, loss: str = "sum", accumulate: int = 1,
                 step: str | None = None) -> MeasuredStep:
    """The CPU measurement, in a child process with every large buffer mapped on its own."""
    environment = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, str(Path(__file__).resolve()), model_spec, ",".join(map(str, input_shape)),
               optimizer_name, dtype, amp or "none", loss, str(accumulate), step or "none"]
    completed = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=timeout_s,
                               cwd=ROOT, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"the measuring child failed: {completed.stderr.strip()[-2000:]}")
    return MeasuredStep(**json.loads(completed.stdout.strip().splitlines()[-1]))


if __name__ == "__main__":
    spec, shape_text, optimizer_text, dtype_text, amp_text = sys.argv[1:6]
    loss_text, accumulate_text, step_text = (sys.argv[6:9] + ["sum", "1", "none"][len(sys.argv[6:9]):])
    measured = measure_here(spec, tuple(int(size) for size in shape_text.split(",")), optimizer_text, dtype_text,
                            None if amp_text == "none" else amp_text, loss=loss_text, accumulate=int(accumulate_text),
                            step=None if step_text == "none" else step_text)
    print(json.dumps(measured.__dict__))
