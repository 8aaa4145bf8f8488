"""`resnet-inspect time`: inference latency and throughput, and optionally the slowest layers."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

import typer

from resnet_inspect.cli.common import (
    OutputFormat,
    check_model_options,
    check_output_path,
    check_timing_options,
    check_train_options,
    emit,
    parse_batch_sizes,
    progress_bar,
    resolve_size,
    user_errors,
)
from resnet_inspect.cli.options import ChannelsOption, FormatOption, InputSizeOption, ModelArgument, OutputOption
from resnet_inspect.limits import AMP_DTYPES, DEFAULT_OPTIMIZER, OPTIMIZERS


class DType(StrEnum):
    float32 = "float32"
    float16 = "float16"
    bfloat16 = "bfloat16"


DeviceOption = typer.Option("cpu", "--device", help="cpu, cuda, cuda:N or mps.")
BatchSizesOption = typer.Option("1", "--batch-size", "-b", help="Batch sizes to time, e.g. 1,8,32.")
WarmupOption = typer.Option(10, "--warmup", help="Untimed forward passes before each measurement.")
RepeatOption = typer.Option(50, "--repeat", help="About how many forward passes to time per batch size.")
ThreadsOption = typer.Option(None, "--threads", help="CPU threads for the measurement (default: torch's).",
                             show_default=False)
DTypeOption = typer.Option(DType.float32, "--dtype", help="Data type of the weights and the input.")
ChannelsLastOption = typer.Option(False, "--channels-last", help="Use the channels-last memory format.")
PerLayerOption = typer.Option(False, "--per-layer", help="Also time each layer (forward hooks), at the first batch.")
TrainOption = typer.Option(False, "--train", help="Time one training step instead of a forward pass: forward in "
                           "train mode, backward, optimizer step.")
OptimizerOption = typer.Option(None, "--optimizer", metavar="|".join(OPTIMIZERS), show_default=False,
                               help=f"The optimizer of the --train step (default {DEFAULT_OPTIMIZER}; none: forward "
                               "and backward only).")
AmpOption = typer.Option(None, "--amp", metavar="|".join(AMP_DTYPES), show_default=False,
                         help="Mixed precision for --train: autocast to bfloat16 or float16 (float32 weights; fp16 "
                         "scales the loss).")


def time_command(
    model: str = ModelArgument,
    device: str = DeviceOption,
    batch_sizes: str = BatchSizesOption,
    input_size: str | None = InputSizeOption,
    in_channels: int | None = ChannelsOption,
    warmup: int = WarmupOption,
    repeat: int = RepeatOption,
    threads: int | None = ThreadsOption,
    dtype: DType = DTypeOption,
    channels_last: bool = ChannelsLastOption,
    per_layer: bool = PerLayerOption,
    train: bool = TrainOption,
    optimizer: str | None = OptimizerOption,
    amp: str | None = AmpOption,
    fmt: OutputFormat = FormatOption,
    output: Path | None = OutputOption,
) -> None:
    """Time inference (or one training step, --train) with random weights: median latency, IQR and images/s per
    batch size."""
    with user_errors():
        check_output_path(output)
        batches = parse_batch_sizes(batch_sizes)
        size = resolve_size(model, input_size)
        check_timing_options(warmup, repeat, threads)
        check_model_options(in_channels, None)
        optimizer, amp = check_train_options(train, optimizer, amp, dtype.value, per_layer)
        from resnet_inspect.pipeline.options import Caller, available_device
        from resnet_inspect.pipeline.timing import phase_runs, timing_report

        resolved = available_device(device, Caller.cli)
        progress, task = progress_bar(f"timing {model}", phase_runs(batches, warmup, repeat, per_layer))
        try:
            report = timing_report(
                model, batches, size, resolved, dtype.value, warmup, repeat, threads, channels_last, per_layer,
                in_channels, progress=lambda runs: progress.update(task, advance=runs), train=train,
                optimizer=optimizer, amp=amp,
            )
        finally:
            progress.stop()
        emit(report, fmt, output)
