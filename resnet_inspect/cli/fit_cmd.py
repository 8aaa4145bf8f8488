"""`resnet-inspect fit`: the largest batch size whose estimated peak memory fits a budget."""

from __future__ import annotations

from pathlib import Path

import typer

from resnet_inspect.cli.common import (
    OutputFormat,
    check_distinct_outputs,
    check_model_options,
    check_output_path,
    check_plot_path,
    emit,
    resolve_size,
    user_errors,
)
from resnet_inspect.cli.options import (
    ChannelsOption,
    ClassesOption,
    FormatOption,
    InputSizeOption,
    ModelArgument,
    OutputOption,
)
from resnet_inspect.cli.time_cmd import AmpOption, DType, DTypeOption, OptimizerOption
from resnet_inspect.errors import BadInputError
from resnet_inspect.limits import DEFAULT_LOSS, DEFAULT_SHARD_UNITS, GPU_RESERVE_FIXED_BYTES, LOSSES, RESERVE_SHARE

MemoryOption = typer.Option(None, "--memory", "-m", show_default=False,
                            help="The memory budget: 24GiB, 24GB, 1.5GiB, 512MiB or bytes (default: the free memory "
                            "of a CUDA --device).")
ReserveOption = typer.Option(None, "--reserve", show_default=False,
                             help="Left out of --memory for what the estimate does not hold: the CUDA context, "
                             "library workspaces and the allocator's slack (default: "
                             f"{RESERVE_SHARE:.0%} of --memory, plus {GPU_RESERVE_FIXED_BYTES >> 20}MiB on a GPU).")
TrainOption = typer.Option(False, "--train", help="Fit a training step (forward, backward, optimizer step) instead "
                           "of an inference forward pass.")
ShardOption = typer.Option(None, "--shard", show_default=False,
                           help="Fully sharded data parallel over N devices (FSDP, ZeRO-3): the answer is the batch "
                           "per device (--train).")
ShardUnitsOption = typer.Option(None, "--shard-units", show_default=False,
                                help="With --shard: the modules fully_shard is applied to: block, layer, module types "
                                f"or names, comma-separated (default: {DEFAULT_SHARD_UNITS}).")
DeviceOption = typer.Option("cpu", "--device", help="The device to fit: cpu, cuda, cuda:N or mps.")
LossOption = typer.Option(None, "--loss", metavar="|".join(LOSSES), show_default=False,
                          help=f"With --train: what the step backpropagates from the output: {', '.join(LOSSES)} "
                          f"(default {DEFAULT_LOSS}).")
StepOption = typer.Option(None, "--step", metavar="FILE.py:FUNCTION", show_default=False,
                          help="With --train: your own training step, step(model, optimizer, *inputs), instead of "
                          "the built-in one (see docs/training.md).")
AccumulateOption = typer.Option(None, "--accumulate", metavar="K", show_default=False,
                                help="With --train: K micro-batches of the batch per optimizer step, their gradients "
                                "accumulated (default 1).")


CheckpointOption = typer.Option(
    None, "--checkpoint", help="With --train: 'auto' plans activation checkpointing (the blocks to checkpoint for "
    "the largest batch at the least recompute), or the module names to checkpoint, joined by commas.")
CheckpointPlotOption = typer.Option(None, "--plot", show_default=False,
                                    help="With --checkpoint auto: draw the plans' memory against their recompute, "
                                    "the budget and the plan chosen (.png, .svg or .pdf; needs matplotlib).")
BatchOption = typer.Option(None, "--batch-size", "-b", min=1,
                           help="With --checkpoint auto: the batch to fit, at the least recompute.")


def fit_command(
    model: str = ModelArgument,
    memory: str | None = MemoryOption,
    reserve: str | None = ReserveOption,
    train: bool = TrainOption,
    optimizer: str | None = OptimizerOption,
    dtype: DType = DTypeOption,
    amp: str | None = AmpOption,
    shard: int | None = ShardOption,
    shard_units: str | None = ShardUnitsOption,
    device: str = DeviceOption,
    input_size: str | None = InputSizeOption,
    in_channels: int | None = ChannelsOption,
    num_classes: int | None = ClassesOption,
    fmt: OutputFormat = FormatOption,
    output: Path | None = OutputOption,
    checkpoint: str | None = CheckpointOption,
    batch_size: int | None = BatchOption,
    loss: str | None = LossOption,
    accumulate: int | None = AccumulateOption,
    step: str | None = StepOption,
    plot: Path | None = CheckpointPlotOption,
) -> None:
    """The largest batch size whose estimated peak memory fits --memory, and what the peak holds at that batch.

    Nothing is allocated: every estimate is a meta-device pass (three for most networks)."""
    with user_errors():
        check_output_path(output)
        check_model_options(in_channels, num_classes)
        if plot is not None and checkpoint != "auto":
            raise BadInputError("--plot draws the plans of --checkpoint auto: add --train --checkpoint auto")
        check_distinct_outputs(output, plot=plot)
        check_plot_path(plot)
        from resnet_inspect.pipeline.fit import budget_bytes, fit_report
        from resnet_inspect.pipeline.options import Caller

        report = fit_report(model, budget_bytes(memory, "memory", Caller.cli), resolve_size(model, input_size),
                            train=train, optimizer=optimizer, dtype=dtype.value, amp=amp, shard=shard,
                            reserve_bytes=budget_bytes(reserve, "reserve", Caller.cli, allow_zero=True),
                            device=device, in_channels=in_channels, num_classes=num_classes, shard_units=shard_units,
                            checkpoint=checkpoint, batch_size=batch_size, loss=loss, accumulate=accumulate,
                            step=step)
        if plot is not None:
            from resnet_inspect.render.checkpoint_plot import checkpoint_picture
            from resnet_inspect.render.files import write_output
            from resnet_inspect.render.plot import plot_format

            write_output(plot, checkpoint_picture(report, plot_format(plot)))
        emit(report, fmt, output)
