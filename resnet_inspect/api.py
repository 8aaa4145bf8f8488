"""The Python API for notebooks and scripts, in the manner of ``torchinfo.summary``.

Every function takes an ``nn.Module`` or a model name (a registry name, ``path/to/file.py:factory`` or
``package.module:factory``) and returns a report: ``print(report)`` shows the table, a notebook shows it as
HTML, and ``report.to_dict()`` is the JSON of the matching command. Bad arguments raise ``ValueError`` saying
what was expected.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from resnet_inspect.limits import check_option, check_optional
from resnet_inspect.records import Pair, Shape

if TYPE_CHECKING:
    import torch
    from torch import nn

    from resnet_inspect.analysis.training import StepMemory
    from resnet_inspect.records import TrainingCapture
    from resnet_inspect.report.compare import CompareReport
    from resnet_inspect.report.fit import FitReport
    from resnet_inspect.report.rf import RfReport
    from resnet_inspect.report.summary import SummaryReport, VerifyReport
    from resnet_inspect.report.timing import TimingReport

DEFAULT_DEPTH = 4  # the table's depth in the API: a ResNet's blocks (the JSON and the queries keep every layer)
SIZE_EXPECTED = ("input_size must be a spatial size (224 or (224, 320)), a full shape such as (1, 3, 224, 224), "
                 "or a list of full shapes for a model with several inputs")


@dataclass(frozen=True)
class InputSpec:
    """What to feed the model: a spatial size (with batch and channels), full shapes, or the caller's tensors."""

    size: int | Pair | None = None  # an int: every spatial axis the model has
    shapes: tuple[Shape, ...] | None = None
    data: Any = None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _positive_shape(values: Sequence[Any], what: str) -> tuple[int, ...]:
    """Positive ints within the command line's limits: a spatial size, or a full shape (batch, channels, spatial)."""
    if not values or not all(_is_int(value) and value > 0 for value in values):
        raise ValueError(f"{SIZE_EXPECTED}; {what} {tuple(values)!r} has a size that is not a positive int")
    spatial = values[2:] if what == "shape" else values
    if what == "shape":
        check_option("batch_size", values[0])
        check_option("in_channels", values[1])
    for size in spatial:
        check_option("input_size", size)
    return tuple(values)


def parse_input(input_size: Any = None, input_data: Any = None, rank: int = 2) -> InputSpec:
    """Sort ``input_size`` / ``input_data`` into one ``InputSpec``; ``ValueError`` says what was expected.

    ``rank`` is the model's number of spatial axes: a sequence of that many ints is a spatial size (``(224, 320)``
    for a 2-D network, ``(16, 112, 112)`` for a 3-D one); a longer one is a full shape.
    """
    if input_size is not None and input_data is not None:
        raise ValueError("give input_size or input_data, not both")
    if input_data is not None:
        return InputSpec(data=_check_input_data(input_data))
    if input_size is None:
        return InputSpec()
    if _is_int(input_size):
        return InputSpec(size=_positive_shape((input_size,), "size")[0])
    if isinstance(input_size, list) and input_size and all(isinstance(item, (tuple, list)) for item in input_size):
        shapes = tuple(_positive_shape(tuple(shape), "shape") for shape in input_size)
        if any(len(shape) < 3 for shape in shapes):
            raise ValueError(f"{SIZE_EXPECTED}; each shape of a list needs batch, channels and spatial sizes, "
                             f"got {input_size!r}")
        return InputSpec(shapes=shapes)
    if isinstance(input_size, (tuple, list)) and all(_is_int(value) for value in input_size):
        if len(input_size) == rank:
            return InputSpec(size=_positive_shape(input_size, "size"))  # type: ignore[arg-type]
        if len(input_size) > rank:
            return InputSpec(shapes=(_positive_shape(input_size, "shape"),))
    raise ValueError(f"{SIZE_EXPECTED}; got {input_size!r}")


def _check_input_data(input_data: Any) -> Any:
    import torch

    tensors = (input_data.values() if isinstance(input_data, Mapping)
               else input_data if isinstance(input_data, (tuple, list)) else (input_data,))
    if not tensors or not all(isinstance(tensor, torch.Tensor) for tensor in tensors):
        raise ValueError("input_data must be a tensor, a tuple or list of tensors (positional arguments of forward) "
                         f"or a dict of tensors (keyword arguments), got {type(input_data).__name__}")
    return tuple(input_data) if isinstance(input_data, list) else input_data


def _dtype(dtype: Any) -> torch.dtype | None:
    import torch

    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    candidate = getattr(torch, str(dtype).removeprefix("torch."), None)
    if not isinstance(candidate, torch.dtype):
        raise ValueError(f"dtype must be a torch.dtype or its name (float32, float16, bfloat16), got {dtype!r}")
    return candidate


def _model(model: nn.Module | str, in_channels: int | None, num_classes: int | None,
           model_name: str | None, device: str | None = "meta") -> tuple[nn.Module, str]:
    """An ``nn.Module`` as given (labelled by its class; a compiled one through the module it wraps), or the model
    a name stands for."""
    from torch import nn

    if isinstance(model, str):
        from resnet_inspect.capture.loader import load_model

        built, name = load_model(model, in_channels=in_channels, num_classes=num_classes, device=device)
        return built, model_name or name
    from resnet_inspect.capture.loader import usable_module

    if num_classes is not None and isinstance(model, nn.Module):
        raise ValueError("num_classes applies to models given by name; this one is already built")
    label = model_name or type(model).__name__
    return usable_module(model, label), label


def _device(device: Any) -> str:
    """A device name from a name or a ``torch.device`` (``torch.device("cuda", 1)`` -> ``"cuda:1"``)."""
    import torch

    if isinstance(device, torch.device):
        return str(device)
    if not isinstance(device, str):
        raise ValueError(f"device must be a device name (cpu, cuda, cuda:N, mps, meta) or a torch.device, "
                         f"got {type(device).__name__}")
    return device


def _default_size(model: nn.Module | str) -> int:
    """The model's own input side on every spatial axis: 32 for the CIFAR ResNets, else 224."""
    from resnet_inspect.capture.loader import default_input_size

    return default_input_size(model) if isinstance(model, str) else 224


def _capture(network: nn.Module, spec: InputSpec, default: int, batch_size: int, in_channels: int | None,
             name: str, exact_checked_shapes: bool = False, device: str = "meta") -> Any:
    """One capture: the CLI's own call for a size, else the model's forward fed full shapes or tensors.

    ``exact_checked_shapes`` (verify) takes every checked layer's output size from torch's own kernels."""
    from resnet_inspect.pipeline.build import capture_model

    if spec.data is not None:
        return capture_model(network, model_name=name, input_data=spec.data,
                             exact_checked_shapes=exact_checked_shapes, device=device)
    if spec.shapes is not None:
        return capture_model(network, model_name=name, input_shapes=spec.shapes,
                             exact_checked_shapes=exact_checked_shapes, device=device)
    return capture_model(network, spec.size or default, batch_size, in_channels, name,
                         exact_checked_shapes=exact_checked_shapes, device=device)


def _in_dtype(network: nn.Module, dtype: torch.dtype | None) -> nn.Module:
    """The model as it would be in ``dtype``: a meta copy converted (nothing allocated, the model untouched)."""
    if dtype is None:
        return network
    from resnet_inspect.capture.trace import structural_copy

    return structural_copy(network, "meta").to(dtype)


def summary(model: nn.Module | str, input_size: Any = None, *, input_data: Any = None, batch_size: int = 1,
            depth: int | None = None, device: str | torch.device = "meta", dtype: Any = None,
            in_channels: int | None = None, num_classes: int | None = None, model_name: str | None = None,
            fvcore: bool = False, torchinfo: bool = False, train: bool = False, optimizer: str = "adamw",
            amp: str | None = None, shard: int = 1) -> SummaryReport:
    """Every layer of ``model``: shapes checked against convolution arithmetic, parameters, MACs, receptive field.

    ``input_size`` is a spatial size (``224``, ``(224, 320)``; with ``batch_size`` and ``in_channels``), a full
    shape ``(1, 3, 224, 224)``, or a list of full shapes for a model with several inputs; ``input_data`` is a
    tensor, a tuple of them (positional arguments of ``forward``) or a dict (keyword arguments). Without either,
    the model's own size (224, or 32 for the CIFAR ResNets). ``depth`` limits the table (default 4); the JSON
    and the queries keep every layer. ``device="meta"`` (the default) traces a meta-device copy of the model
    (real CPU tensors only when its forward needs data): the model is not changed and no weights are allocated;
    ``"cpu"`` or ``"cuda"`` runs the pass for real on a copy there, once its peak memory is known to fit.
    ``dtype`` analyses the model as if converted to it (parameters and input; default: its own).
    ``fvcore`` and ``torchinfo`` add those tools' counts beside ours. ``train`` adds what one training step
    costs (see ``training_memory`` for ``optimizer``, ``amp`` and ``shard``): per layer ``backward_macs``,
    ``saved_bytes`` (activations kept for the backward) and ``grad_bytes``; ``total("backward_macs")``,
    ``total("saved_bytes")``, ``total("grad_bytes")``, ``total("train_peak_bytes")``; the breakdown in
    ``to_dict()["training"]``. ``device`` is then the device whose kernels are modelled (``"meta"``: the CPU's).
    """
    from resnet_inspect.pipeline.build import summary_from_capture

    check_option("batch_size", batch_size)
    check_optional("depth", depth)
    check_optional("in_channels", in_channels)
    check_optional("num_classes", num_classes)
    dtype = _dtype(dtype)
    device = _device(device)
    network, name = _model(model, in_channels, num_classes, model_name)
    spec = parse_input(input_size, input_data, _rank(network))
    network = _in_dtype(network, dtype)
    training = None
    if train:
        options = _train_options(optimizer, dtype, amp, shard, "cpu" if device == "meta" else device)
        training = _train_from_spec(network, spec, _default_size(model), batch_size, in_channels, name, options)
        device = "meta"
    elif amp is not None or shard != 1:
        raise ValueError("amp and shard describe a training step: pass train=True")
    captured = _capture(network, spec, _default_size(model), batch_size, in_channels, name, device=device)
    return summary_from_capture(captured, model=network, fvcore=fvcore, max_depth=depth or DEFAULT_DEPTH,
                                torchinfo=torchinfo, input_data=spec.data, training=training, shard=shard)


def _train_options(optimizer: str, dtype: Any, amp: str | None, shard: int, device: str) -> Any:
    """The training options, checked (``ValueError`` says what was expected)."""
    import re

    from resnet_inspect.capture.training import TrainOptions

    check_option("shard", shard)
    device = _device(device)
    if not re.fullmatch(r"cpu|mps|cuda(:\d+)?", device):
        raise ValueError(f"device must be cpu, cuda, cuda:N or mps, got {device!r}")
    name = None if dtype is None else str(dtype).removeprefix("torch.")
    return TrainOptions(optimizer=optimizer, dtype=name, amp=amp, device=device)


def training_memory(model: nn.Module | str, input_size: Any = None, *, input_data: Any = None, batch_size: int = 1,
                    optimizer: str = "adamw", dtype: Any = None, amp: str | None = None, shard: int = 1,
                    device: str | torch.device = "cpu", in_channels: int | None = None,
                    num_classes: int | None = None,
                    model_name: str | None = None) -> StepMemory:
    """The memory of one training step (forward, backward, optimizer step) of ``model``, estimated on the meta
    device (nothing is allocated, the model is not changed)::

        step = training_memory("resnet50", 224, batch_size=32, optimizer="adamw")
        step.peak_bytes, step.where           # the peak, and "the backward of ..." where it falls
        step.weights_bytes, step.gradient_bytes, step.optimizer_state_bytes, step.saved_bytes, step.input_bytes

    ``input_size`` and ``input_data`` as in ``summary``. ``optimizer``: none, sgd, momentum, adam or adamw
    (torch.optim's, run on meta tensors). ``dtype``: float32, bfloat16 or float16 (the model and its input
    converted); ``amp``: "bf16" or "fp16" (autocast, float32 weights and state). ``shard``: the number of devices
    of a fully sharded run (FSDP2, ZeRO-3): per-device figures, ``batch_size`` per device. ``device``: whose
    kernels are modelled (the attention backend, the optimizer's implementation). ``to_dict()`` gives the JSON.
    """
    from resnet_inspect.analysis.training import step_memory

    return step_memory(_training_capture(model, input_size, input_data, batch_size, optimizer, dtype, amp, shard,
                                         device, in_channels, num_classes, model_name), shard)


def _training_capture(model: nn.Module | str, input_size: Any, input_data: Any, batch_size: int, optimizer: str,
                      dtype: Any, amp: str | None, shard: int, device: str, in_channels: int | None,
                      num_classes: int | None, model_name: str | None) -> TrainingCapture:
    check_option("batch_size", batch_size)
    check_optional("in_channels", in_channels)
    options = _train_options(optimizer, dtype, amp, shard, device)
    network, name = _model(model, in_channels, num_classes, model_name)
    spec = parse_input(input_size, input_data, _rank(network))
    return _train_from_spec(network, spec, _default_size(model), batch_size, in_channels, name, options)


def _train_from_spec(network: nn.Module, spec: InputSpec, default: int, batch_size: int, in_channels: int | None,
                     name: str, options: Any) -> TrainingCapture:
    from resnet_inspect.pipeline.build import training_capture

    if spec.data is not None:
        return training_capture(network, model_name=name, options=options, input_data=spec.data)
    if spec.shapes is not None:
        return training_capture(network, model_name=name, options=options, input_shapes=spec.shapes)
    return training_capture(network, spec.size or default, batch_size, in_channels, name, options=options)


def inspect(model: nn.Module | str, input_size: Any = None, *, input_data: Any = None, batch_size: int = 1,
            depth: int | None = None, device: str | torch.device = "meta", dtype: Any = None,
            in_channels: int | None = None, num_classes: int | None = None, model_name: str | None = None,
            fvcore: bool = False,
            torchinfo: bool = False) -> SummaryReport:
    """The earlier name of ``summary``, kept as an alias."""
    return summary(model, input_size, input_data=input_data, batch_size=batch_size, depth=depth, device=device,
                   dtype=dtype, in_channels=in_channels, num_classes=num_classes, model_name=model_name,
                   fvcore=fvcore, torchinfo=torchinfo)


def verify(model: nn.Module | str, input_size: Any = None, *, input_data: Any = None, batch_size: int = 1,
           in_channels: int | None = None, num_classes: int | None = None,
           model_name: str | None = None) -> VerifyReport:
    """Check every convolution and pooling layer's output size against its own geometry (``.failed`` counts)."""
    from resnet_inspect.pipeline.build import verify_from_capture

    check_option("batch_size", batch_size)
    check_optional("in_channels", in_channels)
    check_optional("num_classes", num_classes)
    network, name = _model(model, in_channels, num_classes, model_name)
    spec = parse_input(input_size, input_data, _rank(network))
    captured = _capture(network, spec, _default_size(model), batch_size, in_channels, name,
                        exact_checked_shapes=True)
    return verify_from_capture(captured)


def _rank(model: nn.Module | str) -> int:
    """The model's number of spatial axes (2 for a name, which is not built here)."""
    from resnet_inspect.capture.trace import spatial_rank

    return 2 if isinstance(model, str) else spatial_rank(model)


def _spatial(input_size: Any, model: nn.Module | str) -> int | tuple[int, ...]:
    """A spatial size only (``receptive_field``, ``time_model``): 224, (224, 320), or one full shape's."""
    if input_size is None:
        return _default_size(model)
    spec = parse_input(input_size, rank=_rank(model))
    if spec.size is not None:
        return spec.size
    assert spec.shapes is not None
    if len(spec.shapes) == 1:
        return spec.shapes[0][2:]
    raise ValueError(f"input_size must be a spatial size (224 or (224, 320)) or one full shape here, "
                     f"got {input_size!r}")


def receptive_field(model: nn.Module | str, input_size: Any = None, *, in_channels: int | None = None,
                    check: bool = False, erf: bool = False, erf_samples: int = 8, weights: str | None = None,
                    png: str | None = None, model_name: str | None = None) -> RfReport:
    """Receptive field, effective stride and padding per stage; ``check`` confirms it with gradients, ``erf``
    measures the effective field (a module given as such is measured with its own weights)."""
    from pathlib import Path

    from resnet_inspect.pipeline.rf import OWN_WEIGHTS, load_rf_model, rf_report, weights_label
    from resnet_inspect.render.files import check_png_name, check_writable

    if png is not None:  # a directory or an unwritable place first, then the name's suffix
        check_writable(Path(png))
    check_png_name(png, "png=")
    size = _spatial(input_size, model)
    channels = in_channels
    check_optional("in_channels", in_channels)
    check_option("erf_samples", erf_samples)
    wants_erf = erf or weights is not None or png is not None
    label = OWN_WEIGHTS
    if isinstance(model, str):
        network, name = load_rf_model(model, channels, None, real=wants_erf)
        name = model_name or name
        if wants_erf and weights is None:
            label = weights_label(model, channels, None, network)
    else:
        network, name = _model(model, in_channels, None, model_name)
        if weights is not None:  # loading them must not overwrite the caller's own
            import copy

            network = copy.deepcopy(network)
    report = rf_report(network, name, size, channels, check, wants_erf, erf_samples,
                       Path(weights) if weights is not None else None, label)
    if png is not None and report.erf is not None:
        from dataclasses import replace

        from resnet_inspect.render.files import write_output
        from resnet_inspect.render.heatmap import png_bytes

        write_output(Path(png), png_bytes(report.erf.mass))
        report = replace(report, png=str(png))
    return report


def compare(models: Sequence[nn.Module | str] | Mapping[str, nn.Module | str], input_sizes: Any = None, *,
            batch_size: int = 1, stages: bool = False, time: bool = False, device: str | torch.device = "cpu",
            warmup: int = 3, repeat: int = 10, train: bool = False, optimizer: str = "adamw",
            amp: str | None = None) -> CompareReport:
    """Models side by side: depth, blocks per stage, parameters, MACs, activation memory, receptive field.

    ``models`` lists modules or names (a module is labelled by its class), or maps labels to them.
    ``input_sizes`` is one size or a list of sizes (224 or (224, 320)); every model is compared at each.
    ``train`` adds one training step per row (``optimizer``, ``amp``): backward MACs, saved bytes and the step's peak.
    """
    from resnet_inspect.pipeline.compare import Candidate, compare_rows, load_candidates, time_rows, train_rows
    from resnet_inspect.report.compare import CompareReport

    items = list(models.items()) if isinstance(models, Mapping) else [(None, item) for item in models]
    if not items:
        raise ValueError("models must name at least one model (an nn.Module or a model name)")
    check_option("batch_size", batch_size)
    if time:
        check_option("warmup", warmup)
        check_option("repeat", repeat)
    sizes = _sizes(input_sizes)
    candidates: list[Candidate] = []
    labels: set[str] = set()
    for label, item in items:
        if isinstance(item, str):
            candidate = load_candidates([item], sizes)[0]
            candidate = Candidate(candidate.spec, label or candidate.name, candidate.model, candidate.sizes)
        else:
            network, name = _model(item, None, None, label)
            candidate = Candidate(name, name, network, tuple(sizes) if sizes else (_default_size(network),))
        if candidate.name in labels:  # two modules of one class: number them
            candidate = Candidate(candidate.spec, f"{candidate.name} #{len(candidates) + 1}", candidate.model,
                                  candidate.sizes)
        labels.add(candidate.name)
        candidates.append(candidate)
    rows = compare_rows(candidates, batch_size)
    if train:
        rows = train_rows(candidates, rows, optimizer, amp)
    resolved = None
    if time:
        from resnet_inspect.analysis.timing import resolve_device

        resolved = resolve_device(_device(device))
        rows = time_rows(candidates, rows, resolved, warmup, repeat)
    return CompareReport(tuple(rows), stages, resolved, warmup if time else None, repeat if time else None)


def _sizes(input_sizes: Any) -> list[int | Pair] | None:
    if input_sizes is None:
        return None
    if _is_int(input_sizes) or (isinstance(input_sizes, tuple) and len(input_sizes) == 2
                                and all(_is_int(value) for value in input_sizes)):
        input_sizes = [input_sizes]
    if not isinstance(input_sizes, (list, tuple)) or not input_sizes:
        raise ValueError(f"input_sizes must be a size (224 or (224, 320)) or a list of them, got {input_sizes!r}")
    sizes = []
    for size in input_sizes:
        spec = parse_input(size)
        if spec.size is None:
            raise ValueError(f"input_sizes must be spatial sizes (224 or (224, 320)), got {size!r}")
        sizes.append(spec.size)
    return sizes


def time_model(model: nn.Module | str, batch_sizes: int | Sequence[int] = 1, input_size: Any = None, *,
               device: str | torch.device = "cpu", dtype: str = "float32", warmup: int = 10, repeat: int = 50,
               threads: int | None = None, channels_last: bool = False, per_layer: bool = False,
               in_channels: int | None = None, model_name: str | None = None, train: bool = False,
               optimizer: str = "adamw", amp: str | None = None) -> TimingReport:
    """Median latency, IQR and images/s per batch size on ``device``; a name gets random weights, a module keeps
    its own (it is copied to ``device`` and ``dtype`` when it is not there already).

    ``train=True`` times one training step instead (forward in train mode, backward, ``optimizer`` step: none,
    sgd, momentum, adam or adamw), under autocast when ``amp`` is ``"bf16"`` or ``"fp16"``; always on a copy."""
    from resnet_inspect.pipeline.timing import timing_report

    batches = [batch_sizes] if _is_int(batch_sizes) else list(batch_sizes)  # type: ignore[arg-type]
    if not batches:
        raise ValueError("batch_sizes must hold at least one batch size")
    for batch in batches:
        check_option("batch_size", batch, "each batch size")
    check_option("warmup", warmup)
    check_option("repeat", repeat)
    check_optional("threads", threads)
    check_optional("in_channels", in_channels)
    if dtype not in ("float32", "float16", "bfloat16"):
        raise ValueError(f"dtype must be float32, float16 or bfloat16, got {dtype!r}")
    size = _spatial(input_size, model)
    device = _device(device)
    if not isinstance(model, str):
        model, _ = _model(model, in_channels, None, model_name)
    return timing_report(model, batches, size, device, dtype, warmup, repeat, threads, channels_last, per_layer,
                         in_channels, model_name=model_name, train=train, optimizer=optimizer, amp=amp)


def fit(model: nn.Module | str, memory: int | str | None = None, input_size: Any = None, *, train: bool = False,
        optimizer: str | None = None, dtype: str = "float32", amp: str | None = None, shard: int | None = None,
        reserve: int | str | None = None, device: str | torch.device = "cpu", in_channels: int | None = None,
        num_classes: int | None = None, model_name: str | None = None, checkpoint: str | Sequence[str] | None = None,
        batch_size: int | None = None) -> FitReport:
    """The largest batch size whose estimated peak memory fits ``memory`` less ``reserve``, with its breakdown.

    ``checkpoint="auto"`` (with ``train=True``) plans activation checkpointing: the blocks to checkpoint for the
    largest batch at the least recompute, or, with ``batch_size``, the least recompute that fits that batch;
    a list of module names checkpoints those. The plan is ``report.checkpoint`` (docs/training.md).

    ``memory`` and ``reserve`` are bytes or sizes as the CLI takes them (``"24GiB"``, ``"512MiB"``); ``memory``
    defaults to the free memory of a CUDA ``device``, ``reserve`` to 5% of ``memory`` (plus 512 MiB on a GPU).
    ``train=True`` fits a training step (``optimizer``, ``amp``, ``shard`` as for ``summary(train=True)``);
    otherwise an inference forward pass. Nothing is allocated: each estimate is a meta pass, three for most
    networks. Not even batch 1 fitting raises ``DoesNotFitError``.
    """
    from resnet_inspect.pipeline.fit import fit_report

    memory_bytes = _bytes(memory, "memory")
    reserve_bytes = _bytes(reserve, "reserve", allow_zero=True)
    if shard is not None:
        check_option("shard", shard)
    device = _device(device)
    if not isinstance(model, str):
        model, _ = _model(model, in_channels, num_classes, model_name)
    return fit_report(model, memory_bytes, _spatial(input_size, model), train=train, optimizer=optimizer, dtype=dtype,
                      amp=amp, shard=shard, reserve_bytes=reserve_bytes, device=device, in_channels=in_channels,
                      num_classes=num_classes, model_name=model_name,
                      checkpoint=checkpoint if checkpoint is None or isinstance(checkpoint, str) else tuple(checkpoint),
                      batch_size=batch_size)


def _bytes(size: int | str | None, what: str, allow_zero: bool = False) -> int | None:
    """A size in bytes from an int or a text such as ``"24GiB"``; ``ValueError`` when it is neither."""
    from resnet_inspect.analysis.fit import parse_bytes

    if size is None:
        return None
    if _is_int(size):
        if size < 0 or (size == 0 and not allow_zero):
            raise ValueError(f"{what} must be a positive number of bytes, got {size!r}")
        return int(size)
    if isinstance(size, str):
        return parse_bytes(size, what, allow_zero)
    raise ValueError(f"{what} must be bytes (an int) or a size such as '24GiB', got {size!r}")


__all__ = ["compare", "fit", "inspect", "parse_input", "receptive_field", "summary", "time_model",
           "training_memory", "verify"]
