"""`summary`, `verify` and `arith`: shapes checked against convolution arithmetic."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from resnet_inspect.cli.common import (
    EXIT_CHECK_FAILED,
    OutputFormat,
    SummaryFormat,
    check_distinct_outputs,
    check_output_path,
    check_plot_path,
    emit,
    parse_batch_size,
    parse_count,
    resolve_size,
    user_errors,
)
from resnet_inspect.cli.fit_cmd import AccumulateOption, LossOption, ShardUnitsOption, StepOption
from resnet_inspect.cli.options import (
    OPTIMIZER_CHOICES,
    BatchOption,
    ChannelsOption,
    ClassesOption,
    FormatOption,
    InputSizeOption,
    ModelArgument,
    OutputOption,
    SummaryFormatOption,
)
from resnet_inspect.errors import BadInputError
from resnet_inspect.limits import DEFAULT_DEPTH, DEFAULT_OPTIMIZER, DTYPES, MAX_INPUT_SIZE

TimelinePlotOption = typer.Option(None, "--plot", show_default=False, help="With --train: draw the step's memory "
                                  "over time by kind, module by module, the peak marked (.png, .svg or .pdf; needs "
                                  "matplotlib).")


def summary_command(
    model: str = ModelArgument,
    input_size: str | None = InputSizeOption,
    batch_size: str = BatchOption,
    in_channels: int | None = ChannelsOption,
    num_classes: int | None = ClassesOption,
    depth: int = typer.Option(DEFAULT_DEPTH, "--depth", "-d", help="Show layers down to this depth (JSON keeps "
                              "all)."),
    device: str = typer.Option("cpu", "--device", help="Device for --time, and whose kernels --train models "
                               "(cpu, cuda, cuda:N, mps)."),
    time: bool = typer.Option(False, "--time", help="Add a column with each layer's time on --device."),
    fvcore: bool = typer.Option(False, "--fvcore/--no-fvcore",
                                help="Also count with fvcore, beside our MACs (builds real weights, runs batch 1)."),
    torchinfo: bool = typer.Option(False, "--torchinfo/--no-torchinfo",
                                   help="Add torchinfo's parameters and Mult-Adds beside ours, differences explained."),
    train: bool = typer.Option(False, "--train", help="Add one training step: backward MACs, bytes saved for "
                               "backward, gradient bytes per layer; the step's memory and its peak."),
    optimizer: str | None = typer.Option(None, "--optimizer", help=f"With --train: {OPTIMIZER_CHOICES} (default "
                                         f"{DEFAULT_OPTIMIZER}).", show_default=False),
    dtype: str | None = typer.Option(None, "--dtype", help=f"Analyse the model converted to {', '.join(DTYPES)} "
                                     "(default: its own).", show_default=False),
    amp: str | None = typer.Option(None, "--amp", help="With --train: autocast to bf16 or fp16 (float32 weights "
                                   "and optimizer state).", show_default=False),
    shard: str | None = typer.Option(None, "--shard", help="With --train: fully sharded over N devices (FSDP, "
                                     "ZeRO-3); figures per device, --batch-size per device (default 1).",
                                     show_default=False),
    shard_units: str | None = ShardUnitsOption,
    loss: str | None = LossOption,
    accumulate: int | None = AccumulateOption,
    step: str | None = StepOption,
    plot: Path | None = TimelinePlotOption,
    fmt: SummaryFormat = SummaryFormatOption,
    output: Path | None = OutputOption,
) -> None:
    """Every layer: input and output shape checked against convolution arithmetic, parameters, MACs, receptive
    field; totals below."""
    with user_errors():
        check_output_path(output)
        if plot is not None and not train:
            raise BadInputError("--plot draws the memory of a training step: add --train")
        check_distinct_outputs(output, plot=plot)
        check_plot_path(plot)
        from resnet_inspect.pipeline.options import Caller, TrainRequest
        from resnet_inspect.pipeline.summary import InputSpec, ModelRequest, SummaryRequest, summary_report

        request = SummaryRequest(
            ModelRequest(model, in_channels, num_classes), InputSpec(size=resolve_size(model, input_size)),
            batch_size=parse_batch_size(batch_size), depth=depth, device=device, dtype=dtype, fvcore=fvcore,
            torchinfo=torchinfo, train=TrainRequest(train, optimizer, amp, parse_count(shard, "shard", "--shard")
                                                    if shard is not None else None, shard_units=shard_units,
                                                    loss=loss, accumulate=accumulate, step=step),
            time=time)
        report = summary_report(request, Caller.cli)
        if plot is not None:
            _write_timeline(report, plot)
        emit(report, fmt, output)


def _write_timeline(report: Any, plot: Path) -> None:
    """The step's memory timeline drawn into ``plot`` (one line when the backward could not run on meta)."""
    from resnet_inspect.render.files import write_output
    from resnet_inspect.render.plot import plot_format
    from resnet_inspect.render.timeline_plot import timeline_picture

    if report.memory_timeline is None:
        raise BadInputError(f"--plot: {report.training.memory.note}")
    write_output(plot, timeline_picture(report, plot_format(plot)))


def verify_command(
    model: str = ModelArgument,
    input_size: str | None = InputSizeOption,
    batch_size: str = BatchOption,
    in_channels: int | None = ChannelsOption,
    num_classes: int | None = ClassesOption,
    fmt: OutputFormat = FormatOption,
    output: Path | None = OutputOption,
) -> None:
    """Check the padding arithmetic of every convolution and pooling layer. Exit code 0 when every layer agrees,
    1 when any disagrees, 2 on bad input."""
    with user_errors():
        check_output_path(output)
        from resnet_inspect.pipeline.options import Caller
        from resnet_inspect.pipeline.summary import InputSpec, ModelRequest, verify_report

        report = verify_report(ModelRequest(model, in_channels, num_classes),
                               InputSpec(size=resolve_size(model, input_size)), parse_batch_size(batch_size),
                               Caller.cli)
        emit(report, fmt, output)
    if report.failed:
        raise typer.Exit(EXIT_CHECK_FAILED)


def arith_command(
    input_size: int = typer.Option(..., "--input", "-i", help="Input size i on one axis.", show_default=False),
    kernel: int = typer.Option(..., "--kernel", "-k", help="Kernel size k.", show_default=False),
    stride: int = typer.Option(1, "--stride", "-s", help="Stride s."),
    padding: int = typer.Option(0, "--padding", "-p", help="Zero padding p on each side."),
    dilation: int = typer.Option(1, "--dilation", "-d", help="Dilation d."),
    pool: bool = typer.Option(False, "--pool", help="A pooling layer (relation 7)."),
    ceil_mode: bool = typer.Option(False, "--ceil-mode", help="Pooling with ceil_mode=True."),
    transposed: bool = typer.Option(False, "--transposed", help="A transposed convolution (relations 8-14)."),
    output_padding: int = typer.Option(0, "--output-padding", help="Transposed convolution's output_padding."),
    solve: bool = typer.Option(False, "--solve", help="List the paddings giving o = i (s = 1) or o = ceil(i / s); "
                               "with --transposed, the paddings and output paddings giving o = s*i."),
    fmt: OutputFormat = FormatOption,
    output: Path | None = OutputOption,
) -> None:
    """The convolution-arithmetic calculator: output size, relation, filled-in formula, dropped rows/columns."""
    with user_errors():
        check_output_path(output)
        for value, name in ((input_size, "i"), (kernel, "k"), (stride, "s"), (padding, "p"), (dilation, "d"),
                            (output_padding, "output padding")):
            if value > MAX_INPUT_SIZE:  # the same bound as --input-size; the lower bounds are the arithmetic's
                raise BadInputError(f"{name} {value} is larger than the maximum {MAX_INPUT_SIZE}")
        from resnet_inspect.pipeline.arith import arith_report

        report = arith_report(input_size, kernel, stride, padding, dilation, pool=pool, ceil_mode=ceil_mode,
                              transposed=transposed, output_padding=output_padding, solve=solve)
        emit(report, fmt, output)
