"""Inference latency: the whole model with torch.utils.benchmark, each layer with forward hooks.

The whole-model figure is ``Timer.blocked_autorange``'s median and interquartile range, per forward pass,
under ``torch.inference_mode`` with the model in eval mode. Per-layer times come from hooks around every
leaf module (synchronising the device, or CUDA events on a GPU); they add their own cost, which is reported
as the hook overhead.
"""

from __future__ import annotations

import re
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils import benchmark

from resnet_inspect.analysis.counting import element_bytes
from resnet_inspect.analysis.fvcore_count import materialize
from resnet_inspect.analysis.memory import ensure_fits, inference_bytes, real_pass_guard
from resnet_inspect.capture.tensors import private_copy
from resnet_inspect.capture.trace import capture
from resnet_inspect.errors import BadInputError
from resnet_inspect.ops.registry import op_for_module
from resnet_inspect.records import Shape

DTYPES = ("float32", "float16", "bfloat16")
_DEVICE_PATTERN = re.compile(r"(cpu|mps|cuda(:\d+)?)")

Progress = Callable[[int], None]  # called with the number of forward passes just run


@dataclass(frozen=True)
class LatencyResult:
    """Whole-model latency at one batch size: median and IQR per forward pass, in milliseconds."""

    batch_size: int
    median_ms: float
    iqr_ms: float
    images_per_s: float
    runs: int  # forward passes timed (blocks x passes per block)
    threads: int
    peak_memory_bytes: int | None = None  # measured on CUDA (torch.cuda.max_memory_allocated); None elsewhere


@dataclass(frozen=True)
class LayerTime:
    """One leaf module's median time per forward pass (all its calls in that pass added up)."""

    name: str  # qualified module name
    type: str
    median_ms: float
    share: float  # of the sum over layers; the shares add up to 1
    calls: int  # calls per forward pass


@dataclass(frozen=True)
class LayerProfile:
    """Per-layer times and the median of the hooked forward pass they were measured in."""

    layers: tuple[LayerTime, ...]  # slowest first
    hooked_model_ms: float

    @property
    def layers_total_ms(self) -> float:
        return sum(layer.median_ms for layer in self.layers)


def available_devices() -> list[str]:
    """The devices this machine can run on: cpu, each cuda:N, and mps."""
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{index}" for index in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        devices.append("mps")
    return devices


def resolve_device(text: str | torch.device) -> str:
    """A validated device string (from a name or a ``torch.device``); a device that is unknown or not available
    raises BadInputError."""
    device = str(text).strip().lower()
    available = available_devices()
    listing = ", ".join(available)
    if not _DEVICE_PATTERN.fullmatch(device):
        raise BadInputError(f"unknown device '{text}': use cpu, cuda, cuda:N or mps (available here: {listing})")
    if (device if device != "cuda" else "cuda:0") not in available:
        raise BadInputError(f"device '{device}' is not available on this machine; available devices: {listing}")
    return device


def check_dtype(device: str, dtype: str) -> None:
    """Run a tiny conv/BN/pool/linear in ``dtype`` on ``device``; BadInputError if the device cannot."""
    if dtype not in DTYPES:
        raise BadInputError(f"unknown dtype '{dtype}': use one of {', '.join(DTYPES)}")
    torch_dtype = getattr(torch, dtype)
    try:
        x = torch.ones(1, 2, 6, 6, device=device, dtype=torch_dtype)
        y = F.conv2d(x, torch.ones(2, 2, 3, 3, device=device, dtype=torch_dtype), padding=1)
        stats = torch.ones(2, device=device, dtype=torch_dtype)
        y = F.relu(F.batch_norm(y, stats, stats, stats, stats, training=False))
        y = F.adaptive_avg_pool2d(F.max_pool2d(y, 3, 2, 1), 1).flatten(1)
        F.linear(y, torch.ones(3, 2, device=device, dtype=torch_dtype)).sum().item()
    except (RuntimeError, TypeError, NotImplementedError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BadInputError(f"dtype {dtype} cannot run on {device}: {reason}") from exc


def synchronizer(device: str) -> Callable[[], None]:
    """A function that waits for the device's queued work (a no-op on the CPU)."""
    if device.startswith("cuda"):
        return lambda: torch.cuda.synchronize(device)
    if device == "mps":
        return torch.mps.synchronize
    return lambda: None


def prepare_model(model: nn.Module, device: str, dtype: str = "float32", channels_last: bool = False) -> nn.Module:
    """The model with real weights on ``device`` in ``dtype`` and eval mode (a meta model is materialized).

    A model already on ``device`` in ``dtype`` (and, for ``channels_last``, in that memory format) is returned
    itself, switched to eval mode; any other is copied, so the caller's weights keep their dtype and format.
    """
    torch_dtype = getattr(torch, dtype)
    prepared = materialize(model, device)
    if prepared is model and _needs_conversion(model, torch_dtype, channels_last):
        prepared = private_copy(model)
    prepared = prepared.to(dtype=torch_dtype).eval()
    if channels_last:
        # Module.to takes memory_format (torch documents it), but its typed overloads leave it out
        prepared = prepared.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return prepared


def _needs_conversion(model: nn.Module, dtype: torch.dtype, channels_last: bool) -> bool:
    """Whether ``.to(dtype)`` or ``.to(channels_last)`` would change one of ``model``'s tensors in place."""
    for tensor in [*model.parameters(), *model.buffers()]:
        if tensor.is_floating_point() and tensor.dtype != dtype:
            return True
        if channels_last and tensor.dim() == 4 and not tensor.is_contiguous(memory_format=torch.channels_last):
            return True
    return False


@contextmanager
def _timed_model(model: nn.Module, input_shape: Shape, device: str, dtype: str,
                 channels_last: bool) -> Iterator[nn.Module]:
    """The prepared model for a measurement, after the memory guard; the caller's train/eval modes come back."""
    ensure_timing_fits(model, input_shape, device, dtype)
    modes = {module: module.training for module in model.modules()}
    try:
        yield prepare_model(model, device, dtype, channels_last)
    finally:
        for module, training in modes.items():
            module.training = training


def ensure_timing_fits(model: nn.Module, input_shape: Shape, device: str = "cpu", dtype: str = "float32") -> None:
    """Refuse (MemoryGuardError) a measurement whose estimated peak does not fit; a too-small input names its layer.

    The estimate comes from a batch-1 capture (on the meta device, or on real tensors at batch 1 for
    data-dependent code, as the capture decides, under the same guard as it goes); a forward pass that fails
    raises ForwardError naming the layer.
    """
    if len(input_shape) < 3:  # no spatial axis: nothing to estimate the activations from
        return
    captured = capture(model, tuple(input_shape[2:]), 1, input_shape[1],
                       real_pass_guard=real_pass_guard("lower --input-size"))
    batch_size = input_shape[0]
    needed = inference_bytes(captured, batch_size, element_bytes(dtype))
    ensure_fits(needed, f"timing at batch size {batch_size} and input {'x'.join(map(str, input_shape[1:]))}",
                "lower --batch-size or --input-size", device)


def make_input(input_shape: Shape, device: str, dtype: str = "float32", channels_last: bool = False) -> torch.Tensor:
    x = torch.randn(tuple(input_shape), device=device, dtype=getattr(torch, dtype))
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x


@contextmanager
def thread_count(threads: int | None) -> Iterator[int]:
    """Set torch's intra-op thread count for a block (None keeps it); yields the count in force."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)


def _warm_up(run: Callable[[], Any], warmup: int, synchronize: Callable[[], None],
             progress: Progress | None) -> float:
    """Call ``run`` ``warmup`` times (at least once); the median seconds per call."""
    seconds = []
    for _ in range(max(warmup, 1)):
        start = time.perf_counter()
        run()
        synchronize()
        seconds.append(time.perf_counter() - start)
        if progress is not None:
            progress(1)
    return statistics.median(seconds)


def measure_callable(run: Callable[[], Any], batch_size: int, device: str, warmup: int = 10, repeat: int = 50,
                     threads: int | None = None, progress: Progress | None = None) -> LatencyResult:
    """Time ``run()`` (one forward pass, or one training step) as it is: warm-up calls, then about ``repeat``
    timed calls in ``torch.utils.benchmark`` blocks, each waiting for the device; the peak memory on CUDA."""
    synchronize = synchronizer(device)

    def device_timer() -> float:
        synchronize()
        return time.perf_counter()

    on_cuda = device.startswith("cuda")
    if on_cuda:
        torch.cuda.reset_peak_memory_stats(device)
    with thread_count(threads) as used_threads:
        per_call_s = _warm_up(run, warmup, synchronize, progress)
        timer = benchmark.Timer(stmt="run()", globals={"run": run}, num_threads=used_threads, timer=device_timer)

        def on_block(number: int, _seconds: float) -> None:
            if progress is not None:
                progress(number)

        # torch annotates the callback as returning NoReturn; it is called after each block and may return
        measurement = timer.blocked_autorange(callback=on_block,  # type: ignore[arg-type]
                                              min_run_time=max(repeat, 1) * per_call_s)
    return LatencyResult(
        batch_size=batch_size, median_ms=measurement.median * 1e3, iqr_ms=measurement.iqr * 1e3,
        images_per_s=batch_size / measurement.median, runs=len(measurement.raw_times) * measurement.number_per_run,
        threads=used_threads, peak_memory_bytes=int(torch.cuda.max_memory_allocated(device)) if on_cuda else None,
    )


def measure(model: nn.Module, x: torch.Tensor, device: str, warmup: int = 10, repeat: int = 50,
            threads: int | None = None, progress: Progress | None = None) -> LatencyResult:
    """Time ``model(x)`` as it is, under ``torch.inference_mode`` (see ``measure_callable``)."""
    with torch.inference_mode():  # the timer calls ``run`` in this thread, so the mode holds for every pass
        return measure_callable(lambda: model(x), x.shape[0] if x.dim() else 1, device, warmup, repeat, threads,
                                progress)


def time_model(model: nn.Module, input_shape: Shape, device: str = "cpu", dtype: str = "float32", warmup: int = 10,
               repeat: int = 50, threads: int | None = None, channels_last: bool = False,
               progress: Progress | None = None) -> LatencyResult:
    """Whole-model latency of ``model`` on a random input of ``input_shape`` (batch first)."""
    with _timed_model(model, input_shape, device, dtype, channels_last) as prepared:
        x = make_input(input_shape, device, dtype, channels_last)
        return measure(prepared, x, device, warmup, repeat, threads, progress)


def leaf_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The modules timed one by one: known layers (conv, BN, ...) and modules without children."""
    leaves: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        if not name or any(name.startswith(parent + ".") for parent, _ in leaves):
            continue
        if op_for_module(module) is not None or not any(True for _ in module.children()):
            leaves.append((name, module))
    return leaves


class _LayerClock:
    """Forward hooks that time each leaf call: device events on CUDA, synchronised wall clock elsewhere."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.synchronize = synchronizer(device)
        self.use_events = device.startswith("cuda")
        self.started: dict[int, list[Any]] = {}
        self.spans: list[tuple[str, Any, Any]] = []  # (name, start, end): seconds or CUDA events

    def _now(self) -> Any:
        if self.use_events:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        self.synchronize()
        return time.perf_counter()

    def hooks(self, name: str) -> tuple[Callable[..., None], Callable[..., None]]:
        def before(module: Any, args: Any) -> None:
            self.started.setdefault(id(module), []).append(self._now())

        def after(module: Any, args: Any, output: Any) -> None:
            self.spans.append((name, self.started[id(module)].pop(), self._now()))

        return before, after

    def collect(self) -> dict[str, tuple[float, int]]:
        """Milliseconds and calls per layer name for the pass just run; clears the spans."""
        self.synchronize()
        result: dict[str, tuple[float, int]] = {}
        for name, start, end in self.spans:
            elapsed_ms = start.elapsed_time(end) if self.use_events else (end - start) * 1e3
            total_ms, calls = result.get(name, (0.0, 0))
            result[name] = (total_ms + elapsed_ms, calls + 1)
        self.spans.clear()
        return result


def profile_layers(model: nn.Module, input_shape: Shape, device: str = "cpu", dtype: str = "float32",
                   warmup: int = 10, repeat: int = 50, threads: int | None = None, channels_last: bool = False,
                   progress: Progress | None = None) -> LayerProfile:
    """Per-layer medians over ``repeat`` hooked forward passes (after ``warmup`` untimed ones)."""
    with _timed_model(model, input_shape, device, dtype, channels_last) as prepared:
        x = make_input(input_shape, device, dtype, channels_last)
        leaves = leaf_modules(prepared)
        types = {name: type(module).__name__ for name, module in leaves}
        clock = _LayerClock(device)
        handles = []
        samples: dict[str, list[float]] = {name: [] for name, _ in leaves}
        calls: dict[str, int] = {}
        hooked_ms: list[float] = []
        try:
            for name, module in leaves:
                before, after = clock.hooks(name)
                handles += [module.register_forward_pre_hook(before), module.register_forward_hook(after)]
            on_device = torch.cuda.device(device) if device.startswith("cuda") else nullcontext()
            with on_device, thread_count(threads), torch.inference_mode():  # CUDA events use the current device
                for step in range(max(warmup, 0) + max(repeat, 1)):
                    clock.synchronize()
                    start = time.perf_counter()
                    prepared(x)
                    clock.synchronize()
                    elapsed_ms = (time.perf_counter() - start) * 1e3
                    layer_ms = clock.collect()
                    if step >= warmup:
                        hooked_ms.append(elapsed_ms)
                        for name, (total_ms, count) in layer_ms.items():
                            samples[name].append(total_ms)
                            calls[name] = count
                    if progress is not None:
                        progress(1)
        finally:
            for handle in handles:
                handle.remove()
    medians = {name: statistics.median(values) for name, values in samples.items() if values}
    total_ms = sum(medians.values()) or 1.0
    layers = sorted(
        (LayerTime(name, types[name], ms, ms / total_ms, calls[name]) for name, ms in medians.items()),
        key=lambda layer: layer.median_ms, reverse=True,
    )
    return LayerProfile(tuple(layers), statistics.median(hooked_ms))


def time_layers(model: nn.Module, input_shape: Shape, device: str = "cpu", dtype: str = "float32", warmup: int = 10,
                repeat: int = 50, threads: int | None = None, channels_last: bool = False,
                progress: Progress | None = None) -> list[LayerTime]:
    """Per-layer median times, slowest first (``{t.name: t.median_ms}`` gives them by module name)."""
    return list(profile_layers(model, input_shape, device, dtype, warmup, repeat, threads, channels_last,
                               progress).layers)


__all__ = [
    "DTYPES", "LatencyResult", "LayerProfile", "LayerTime", "available_devices", "check_dtype", "ensure_timing_fits",
    "prepare_model", "profile_layers", "resolve_device", "time_layers", "time_model",
]
