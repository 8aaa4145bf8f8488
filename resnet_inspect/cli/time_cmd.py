"""`resnet-inspect time`: inference latency and throughput, and optionally the slowest layers."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer

from resnet_inspect.cli.common import (
    OutputFormat,
    check_output_path,
    emit,
    parse_batch_sizes,
    parse_input_size,
    parse_positive,
    progress_bar,
    user_errors,
)
from resnet_inspect.errors import BadInputError


class DType(str, Enum):
    float32 = "float32"
    float16 = "float16"
    bfloat16 = "bfloat16"


def time_command(
    model: str = typer.Argument(..., help="Registry name, path/to/file.py:factory or package.module:factory."),
    device: str = typer.Option("cpu", "--device", "-d", help="cpu, cuda, cuda:N or mps."),
    batch_sizes: str = typer.Option("1", "--batch-size", "-b", help="Batch sizes to time, e.g. 1,8,32."),
    input_size: str = typer.Option("224", "--input-size", "-i", help="Input size: 224 or HxW such as 224x320."),
    in_channels: int | None = typer.Option(None, "--in-channels", "-c", help="Input channels (default 3)."),
    warmup: int = typer.Option(10, "--warmup", help="Untimed forward passes before measuring."),
    repeat: int = typer.Option(50, "--repeat", help="About how many forward passes to time."),
    threads: int | None = typer.Option(None, "--threads", help="CPU threads for the measurement (torch default)."),
    dtype: DType = typer.Option(DType.float32, "--dtype", help="Data type of weights and input."),
    channels_last: bool = typer.Option(False, "--channels-last", help="Use the channels-last memory format."),
    per_layer: bool = typer.Option(False, "--per-layer", help="Also time each layer (forward hooks)."),
    fmt: OutputFormat = typer.Option(OutputFormat.table, "--format", "-f", help="Output format."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Write to FILE instead of stdout."),
) -> None:
    """Time inference with random weights: median latency, IQR and images/s per batch size."""
    with user_errors():
        check_output_path(output)
        batches = parse_batch_sizes(batch_sizes)
        size = parse_input_size(input_size)
        if warmup < 0:
            raise BadInputError(f"--warmup must be 0 or more, got {warmup}")
        parse_positive(str(repeat), "--repeat")
        if threads is not None:
            parse_positive(str(threads), "--threads", maximum=4096)
        if in_channels is not None:
            parse_positive(str(in_channels), "--in-channels")
        from resnet_inspect.analysis.timing import check_dtype, resolve_device
        from resnet_inspect.report.timing import phase_runs, timing_report

        resolved = resolve_device(device)
        check_dtype(resolved, dtype.value)
        progress, task = progress_bar(f"timing {model}", phase_runs(batches, warmup, repeat, per_layer))
        try:
            report = timing_report(
                model, batches, size, resolved, dtype.value, warmup, repeat, threads, channels_last, per_layer,
                in_channels, progress=lambda runs: progress.update(task, advance=runs),
            )
        finally:
            progress.stop()
        emit(report, fmt, output)
