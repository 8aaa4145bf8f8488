"""The Python API for notebooks and scripts, in the manner of ``torchinfo.summary``.

Every function takes an ``nn.Module`` or a model name (a registry name, ``path/to/file.py:factory`` or
``package.module:factory``) and returns a report: ``print(report)`` shows the table, a notebook shows it as
HTML, and ``report.to_dict()`` is the JSON of the matching command. Bad arguments raise ``ValueError`` saying
what was expected.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeGuard

from resnet_inspect.limits import DEFAULT_DEPTH, DEFAULT_OPTIMIZER, check_option, check_optional
from resnet_inspect.pipeline.build import InputSpec
from resnet_inspect.pipeline.options import Caller, TrainRequest

if TYPE_CHECKING:
    import torch
    from torch import nn

    from resnet_inspect.pipeline.summary import StepMemory
    from resnet_inspect.records import TrainingCapture
    from resnet_inspect.report.compare import CompareReport
    from resnet_inspect.report.fit import FitReport
    from resnet_inspect.report.rf import RfReport
    from resnet_inspect.report.summary import SummaryReport, VerifyReport
    from resnet_inspect.report.timing import TimingReport

SIZE_EXPECTED = ("input_size must be a spatial size (224 or (224, 320)), a full shape such as (1, 3, 224, 224), "
                 "or a list of full shapes for a model with several inputs")


def _is_int(value: Any) -> TypeGuard[int]:
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
            return InputSpec(size=_positive_shape(input_size, "size"))
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


def _model(model: nn.Module | str, in_channels: int | None, num_classes: int | None,
           model_name: str | None) -> tuple[nn.Module, str]:
    """An ``nn.Module`` as given (labelled by its class; a compiled one through the module it wraps), or the model
    a name stands for (built on the meta device)."""
    from resnet_inspect.pipeline.summary import ModelRequest, load

    network, name, _default = load(ModelRequest(model, in_channels, num_classes, model_name), Caller.api)
    return network, name


def _device(device: Any) -> str:
    """A device name from a name or a ``torch.device`` (``torch.device("cuda", 1)`` -> ``"cuda:1"``)."""
    from resnet_inspect.pipeline.options import device_name

    return device_name(device, Caller.api)


def _default_size(model: nn.Module | str) -> int:
    """The model's own input side on every spatial axis: 32 for the CIFAR ResNets, else 224."""
    from resnet_inspect.pipeline.summary import own_input_size

    return own_input_size(model)


def summary(model: nn.Module | str, input_size: Any = None, *, input_data: Any = None, batch_size: int = 1,
            depth: int | None = None, device: str | torch.device = "meta", dtype: Any = None,
            in_channels: int | None = None, num_classes: int | None = None, model_name: str | None = None,
            fvcore: bool = False, torchinfo: bool = False, train: bool = False, optimizer: str | None = None,
            amp: str | None = None, shard: int | None = None, shard_units: str | None = None,
            loss: str | None = None, accumulate: int | None = None, step: Callable[..., Any] | str | None = None
            ) -> SummaryReport:
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
    costs (see ``training_memory`` for ``optimizer``, ``amp``, ``shard``, ``shard_units``, ``loss``, ``accumulate``
    and ``step``, refused without it),
    and the whole
    report then comes from that step's train-mode pass (a layer that runs only in training has its row): per
    layer ``backward_macs``,
    ``saved_bytes`` (activations kept for the backward) and ``grad_bytes``; ``total("backward_macs")``,
    ``total("saved_bytes")``, ``total("grad_bytes")``, ``total("train_peak_bytes")``; the breakdown in
    ``to_dict()["training"]``. ``device`` is then the device whose kernels are modelled (``"meta"``: the CPU's).
    """
    from resnet_inspect.pipeline.summary import ModelRequest, SummaryRequest, summary_report

    request = SummaryRequest(
        ModelRequest(model, in_channels, num_classes, model_name), _inputs(input_size, input_data),
        batch_size=batch_size, depth=DEFAULT_DEPTH if depth is None else depth, device=device,
        run_on_device=str(device) != "meta", dtype=dtype, fvcore=fvcore, torchinfo=torchinfo,
        train=TrainRequest(train, optimizer, amp, shard, shard_units=shard_units, loss=loss, accumulate=accumulate,
                           step=step))
    return summary_report(request, Caller.api)


def _inputs(input_size: Any, input_data: Any) -> Any:
    """The API's input, read once the model's number of spatial axes is known (see ``parse_input``)."""
    return lambda rank: parse_input(input_size, input_data, rank)


def training_memory(model: nn.Module | str, input_size: Any = None, *, input_data: Any = None, batch_size: int = 1,
                    optimizer: str | None = None, dtype: Any = None, amp: str | None = None, shard: int | None = None,
                    device: str | torch.device = "cpu", in_channels: int | None = None,
                    num_classes: int | None = None,
                    model_name: str | None = None, shard_units: str | None = None, loss: str | None = None,
                    accumulate: int | None = None, step: Callable[..., Any] | str | None = None) -> StepMemory:
    """The memory of one training step (forward, backward, optimizer step) of ``model``, estimated on the meta
    device (nothing is allocated, the model is not changed)::

        step = training_memory("resnet50", 224, batch_size=32, optimizer="adamw")
        step.peak_bytes, step.where           # the peak, and "the backward of ..." where it falls
        step.weights_bytes, step.gradient_bytes, step.optimizer_state_bytes, step.saved_bytes, step.input_bytes

    ``input_size`` and ``input_data`` as in ``summary``. ``optimizer``: none, sgd, momentum, adam or adamw
    (torch.optim's, run on meta tensors). ``dtype``: float32, bfloat16 or float16 (the model and its input
    converted); ``amp``: "bf16" or "fp16" (autocast, float32 weights and state). ``shard``: the number of devices
    of a fully sharded run (FSDP2): per-device figures, ``batch_size`` per device; ``shard_units``: the modules
    ``fully_shard`` is applied to before the model itself ("block", the default, "layer", module types or
    names, comma-separated; see docs/training.md, "FSDP as it is wrapped"). ``loss``: what the step
    backpropagates from the output, "sum" (the default), "cross-entropy" (against class indices) or "mse";
    ``accumulate``: micro-batches of ``batch_size`` per optimizer step, their gradients accumulated. ``step``: your
    own step instead, ``step(model, optimizer, *inputs)``, written as for real tensors (the loss, ``backward()``,
    gradient clipping, accumulation, ``optimizer.step()`` and ``zero_grad()``; see docs/training.md, "Your own
    step"). ``device``: whose
    kernels are modelled (the attention backend, the optimizer's implementation). ``to_dict()`` gives the JSON.
    """
    from resnet_inspect.pipeline.summary import step_memory_of

    request = TrainRequest(True, optimizer, amp, shard, dtype, shard_units, loss, accumulate, step)
    return step_memory_of(_training_capture(model, input_size, input_data, batch_size, optimizer, dtype, amp, shard,
                                            device, in_channels, num_classes, model_name, shard_units, loss,
                                            accumulate, step), request)


def _training_capture(model: nn.Module | str, input_size: Any, input_data: Any, batch_size: int,
                      optimizer: str | None, dtype: Any, amp: str | None, shard: int | None, device: Any,
                      in_channels: int | None, num_classes: int | None, model_name: str | None,
                      shard_units: str | None = None, loss: str | None = None, accumulate: int | None = None,
                      step: Callable[..., Any] | str | None = None) -> TrainingCapture:
    """One training step on the meta device, its options checked as ``summary``'s are."""
    from resnet_inspect.pipeline.summary import ModelRequest, training_step

    return training_step(ModelRequest(model, in_channels, num_classes, model_name), _inputs(input_size, input_data),
                         batch_size, TrainRequest(True, optimizer, amp, shard, dtype, shard_units, loss, accumulate,
                                                  step), device, Caller.api)


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
    from resnet_inspect.pipeline.summary import ModelRequest, verify_report

    return verify_report(ModelRequest(model, in_channels, num_classes, model_name), _inputs(input_size, input_data),
                         batch_size, Caller.api)


def _rank(model: nn.Module | str) -> int:
    """The model's number of spatial axes (2 for a name, which is not built here)."""
    from resnet_inspect.pipeline.summary import model_rank

    return model_rank(model)


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
    report = rf_report(network, name, size, channels, check, wants_erf, erf_samples,
                       Path(weights) if weights is not None else None, label, callers_model=not isinstance(model, str))
    if png is not None and report.erf is not None:
        from dataclasses import replace

        from resnet_inspect.render.files import write_output
        from resnet_inspect.render.heatmap import png_bytes

        write_output(Path(png), png_bytes(report.erf.mass))
        report = replace(report, png=str(png))
    return report


def compare(models: Sequence[nn.Module | str] | Mapping[str, nn.Module | str], input_sizes: Any = None, *,
            batch_size: int = 1, stages: bool = False, time: bool = False, device: str | torch.device = "cpu",
            warmup: int = 3, repeat: int = 10, train: bool = False, optimizer: str | None = None,
            amp: str | None = None) -> CompareReport:
    """Models side by side: depth, blocks per stage, parameters, MACs, activation memory, receptive field.

    ``models`` lists modules or names (a module is labelled by its class), or maps labels to them.
    ``input_sizes`` is one size or a list of sizes (224 or (224, 320)); every model is compared at each.
    ``train`` adds one training step per row (``optimizer``, ``amp``): backward MACs, saved bytes and the step's peak.
    """
    from resnet_inspect.pipeline.compare import Candidate, compare_rows, load_candidates, time_rows, train_rows
    from resnet_inspect.pipeline.options import available_device, train_options
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
    options = train_options(TrainRequest(train, optimizer, amp), "cpu", Caller.api)
    device = _device(device)  # a typo is refused with or without time=True
    resolved = available_device(device, Caller.api) if time else None
    rows = compare_rows(candidates, batch_size)
    if options is not None:
        rows = train_rows(candidates, rows, options.optimizer, options.amp)
    if resolved is not None:
        rows = time_rows(candidates, rows, resolved, warmup, repeat)
    return CompareReport(tuple(rows), stages, resolved, warmup if time else None, repeat if time else None)


def _sizes(input_sizes: Any) -> list[int | tuple[int, ...]] | None:
    if input_sizes is None:
        return None
    if _is_int(input_sizes) or (isinstance(input_sizes, tuple) and len(input_sizes) == 2
                                and all(_is_int(value) for value in input_sizes)):
        input_sizes = [input_sizes]
    if not isinstance(input_sizes, (list, tuple)) or not input_sizes:
        raise ValueError(f"input_sizes must be a size (224 or (224, 320)) or a list of them, got {input_sizes!r}")
    sizes: list[int | tuple[int, ...]] = []
    for size in input_sizes:
        spec = parse_input(size)
        if spec.size is None:
            raise ValueError(f"input_sizes must be spatial sizes (224 or (224, 320)), got {size!r}")
        sizes.append(spec.size)
    return sizes


def time_model(model: nn.Module | str, batch_sizes: int | Sequence[int] = 1, input_size: Any = None, *,
               device: str | torch.device = "cpu", dtype: Any = "float32", warmup: int = 10, repeat: int = 50,
               threads: int | None = None, channels_last: bool = False, per_layer: bool = False,
               in_channels: int | None = None, model_name: str | None = None, train: bool = False,
               optimizer: str | None = None, amp: str | None = None) -> TimingReport:
    """Median latency, IQR and images/s per batch size on ``device``; a name gets random weights, a module keeps
    its own (it is copied to ``device`` and ``dtype`` when it is not there already).

    ``train=True`` times one training step instead (forward in train mode, backward, ``optimizer`` step: none,
    sgd, momentum, adam or adamw), under autocast when ``amp`` is ``"bf16"`` or ``"fp16"``; always on a copy."""
    from resnet_inspect.pipeline.options import dtype_name, train_options
    from resnet_inspect.pipeline.timing import timing_report

    batches: list[int] = [batch_sizes] if isinstance(batch_sizes, int) else list(batch_sizes)
    if not batches:
        raise ValueError("batch_sizes must hold at least one batch size")
    for batch in batches:
        check_option("batch_size", batch, "each batch size")
    check_option("warmup", warmup)
    check_option("repeat", repeat)
    check_optional("threads", threads)
    check_optional("in_channels", in_channels)
    name = dtype_name(dtype, Caller.api) or "float32"
    options = train_options(TrainRequest(train, optimizer, amp, None, name), "cpu", Caller.api)
    if not isinstance(model, str):  # a module the tool cannot inspect is refused before its input is read
        model, _ = _model(model, in_channels, None, model_name)
    size = _spatial(input_size, model)
    device = _device(device)
    return timing_report(model, batches, size, device, name, warmup, repeat, threads, channels_last, per_layer,
                         in_channels, model_name=model_name, train=train,
                         optimizer=options.optimizer if options else DEFAULT_OPTIMIZER,
                         amp=options.amp if options else None, caller=Caller.api)


def fit(model: nn.Module | str, memory: int | str | None = None, input_size: Any = None, *, train: bool = False,
        optimizer: str | None = None, dtype: Any = "float32", amp: str | None = None, shard: int | None = None,
        reserve: int | str | None = None, device: str | torch.device = "cpu", in_channels: int | None = None,
        num_classes: int | None = None, model_name: str | None = None, shard_units: str | None = None,
        checkpoint: str | Sequence[str] | None = None, batch_size: int | None = None, loss: str | None = None,
        accumulate: int | None = None, step: Callable[..., Any] | str | None = None) -> FitReport:
    """The largest batch size whose estimated peak memory fits ``memory`` less ``reserve``, with its breakdown.

    ``checkpoint="auto"`` (with ``train=True``) plans activation checkpointing: the blocks to checkpoint for the
    largest batch at the least recompute, or, with ``batch_size``, the least recompute that fits that batch;
    a list of module names checkpoints those. The plan is ``report.checkpoint`` (docs/training.md).

    ``memory`` and ``reserve`` are bytes or sizes as the CLI takes them (``"24GiB"``, ``"512MiB"``); ``memory``
    defaults to the free memory of a CUDA ``device``, ``reserve`` to 5% of ``memory`` (plus 512 MiB on a GPU).
    ``train=True`` fits a training step (``optimizer``, ``amp``, ``shard``, ``shard_units``, ``loss``,
    ``accumulate`` and ``step`` as for
    ``summary(train=True)``);
    otherwise an inference forward pass. Nothing is allocated: each estimate is a meta pass, three for most
    networks. Not even batch 1 fitting raises ``DoesNotFitError``.
    """
    from resnet_inspect.pipeline.fit import budget_bytes, fit_report
    from resnet_inspect.pipeline.options import dtype_name

    memory_bytes = budget_bytes(memory, "memory", Caller.api)
    reserve_bytes = budget_bytes(reserve, "reserve", Caller.api, allow_zero=True)
    device = _device(device)
    if not isinstance(model, str):
        model, _ = _model(model, in_channels, num_classes, model_name)
    return fit_report(model, memory_bytes, _spatial(input_size, model), train=train, optimizer=optimizer,
                      dtype=dtype_name(dtype, Caller.api) or "float32", amp=amp, shard=shard,
                      reserve_bytes=reserve_bytes, device=device, in_channels=in_channels, num_classes=num_classes,
                      model_name=model_name, caller=Caller.api, shard_units=shard_units,
                      checkpoint=checkpoint if checkpoint is None or isinstance(checkpoint, str) else tuple(checkpoint),
                      batch_size=batch_size, loss=loss, accumulate=accumulate, step=step)


__all__ = ["compare", "fit", "inspect", "parse_input", "receptive_field", "summary", "time_model",
           "training_memory", "verify"]
