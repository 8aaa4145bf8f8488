"""`resnet-inspect compare`: several models (and input sizes) side by side."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from resnet_inspect.cli.common import (
    OutputFormat,
    check_distinct_outputs,
    check_output_path,
    check_plot_path,
    check_timing_options,
    check_train_options,
    emit,
    parse_batch_size,
    parse_input_sizes,
    progress_bar,
    user_errors,
)
from resnet_inspect.cli.options import MODEL_HELP, BatchOption, FormatOption, OutputOption
from resnet_inspect.errors import BadInputError
from resnet_inspect.limits import AMP_DTYPES, DEFAULT_OPTIMIZER, OPTIMIZERS
from resnet_inspect.render.files import write_output

if TYPE_CHECKING:
    from resnet_inspect.pipeline.compare import Family

ModelsArgument = typer.Argument(None, help=f"Models to compare. {MODEL_HELP}", show_default=False)
FamilyOption = typer.Option(
    None, "--family", metavar="imagenet|cifar|all", show_default=False,
    help="Add a group of registered models: imagenet (resnet18, 34, 50, 101, 152), cifar (resnet20, 32, 44, 56, "
    "110) or all (every registered name). Repeat it to add several groups.",
)
InputSizesOption = typer.Option(
    None, "--input-size", "-i", help="Input sizes, e.g. 224 or 128,224,320 or 224x320; every model is compared at "
    "every size (default: each model's own, 224 or 32 for CIFAR).", show_default=False,
)
StagesOption = typer.Option(False, "--stages", help="Add a table stage by stage: output shape, receptive field, "
                            "share of MACs.")
TimeOption = typer.Option(False, "--time", help="Also measure latency and images/s on --device (random weights).")
DeviceOption = typer.Option("cpu", "--device", help="Device for --time: cpu, cuda, cuda:N or mps.")
WarmupOption = typer.Option(3, "--warmup", help="Untimed forward passes before each measurement (--time).")
RepeatOption = typer.Option(10, "--repeat", help="About how many forward passes to time per row (--time).")
TrainOption = typer.Option(False, "--train", help="Add one training step per row, on the meta device: backward "
                           "MACs, bytes saved for backward, and the step's estimated peak at --batch-size.")
OptimizerOption = typer.Option(None, "--optimizer", metavar="|".join(OPTIMIZERS), show_default=False,
                               help=f"The optimizer of the --train step (default {DEFAULT_OPTIMIZER}).")
AmpOption = typer.Option(None, "--amp", metavar="|".join(AMP_DTYPES), show_default=False,
                         help="Mixed precision for --train: autocast to bfloat16 or float16 (float32 weights).")
PlotOption = typer.Option(None, "--plot", help="Draw parameters, MACs, activation memory and receptive field against "
                          "depth, one panel each (against input size when a model is given several -i sizes); "
                          ".png, .svg or .pdf. Needs matplotlib: pip install 'resnet-inspect[plot]'.",
                          show_default=False)


def parse_families(texts: list[str]) -> list[str]:
    """Every registered name the --family options add, in order, each once (--family cifar --family imagenet)."""
    from resnet_inspect.pipeline.compare import family_models

    names: list[str] = []
    for text in texts:
        names += [name for name in family_models(parse_family(text)) if name not in names]
    return names


def parse_family(text: str) -> Family:
    """A --family value, or one line naming the choices."""
    from resnet_inspect.pipeline.compare import Family

    try:
        return Family(text.strip().lower())
    except ValueError:
        choices = ", ".join(family.value for family in Family)
        raise BadInputError(f"unknown family '{text}': use one of {choices}") from None


def compare_command(
    models: list[str] | None = ModelsArgument,
    family: list[str] | None = FamilyOption,
    input_size: str | None = InputSizesOption,
    batch_size: str = BatchOption,
    stages: bool = StagesOption,
    time: bool = TimeOption,
    device: str = DeviceOption,
    warmup: int = WarmupOption,
    repeat: int = RepeatOption,
    train: bool = TrainOption,
    optimizer: str | None = OptimizerOption,
    amp: str | None = AmpOption,
    plot: Path | None = PlotOption,
    fmt: OutputFormat = FormatOption,
    output: Path | None = OutputOption,
) -> None:
    """Compare models: depth, blocks per stage, parameters, MACs, activation memory, receptive field, output size
    (latency with --time; backward MACs, saved bytes and a training step's peak with --train). Ratios are against
    the first model; the best value of each column is highlighted."""
    with user_errors():
        check_output_path(output)
        check_distinct_outputs(output, plot=plot)
        check_plot_path(plot)
        sizes = parse_input_sizes(input_size) if input_size is not None else None
        batch = parse_batch_size(batch_size)
        check_timing_options(warmup, repeat)
        optimizer, amp = check_train_options(train, optimizer, amp, "float32")
        from resnet_inspect.pipeline.compare import compare_rows, load_candidates, time_rows, total_rows, train_rows
        from resnet_inspect.report.compare import CompareReport

        specs = [*(models or []), *parse_families(family or [])]
        if not specs:
            raise BadInputError("nothing to compare: name at least one MODEL or use --family")
        from resnet_inspect.pipeline.options import Caller, available_device, device_name

        device = device_name(device, Caller.cli)  # a typo is refused with or without --time
        resolved = available_device(device, Caller.cli) if time else None
        candidates = load_candidates(specs, sizes)
        rows = compare_rows(candidates, batch)
        if train:
            rows = train_rows(candidates, rows, optimizer, amp)
        if resolved is not None:
            progress, task = progress_bar("timing", total_rows(candidates))
            try:
                rows = time_rows(
                    candidates, rows, resolved, warmup, repeat,
                    progress=lambda label, done: progress.update(task, description=f"timing {label}", completed=done),
                )
            finally:
                progress.stop()
        report = CompareReport(tuple(rows), stages, resolved, warmup if time else None, repeat if time else None)
        if plot is not None:
            from resnet_inspect.render.plot import compare_picture, plot_format

            write_output(plot, compare_picture(report, plot_format(plot)))
        emit(report, fmt, output)
