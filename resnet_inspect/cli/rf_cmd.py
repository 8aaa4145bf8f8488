"""`resnet-inspect rf`: receptive field per stage, optionally checked with gradients, and the effective field."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import typer

from resnet_inspect.cli.common import (
    EXIT_CHECK_FAILED,
    MAX_ERF_SAMPLES,
    OutputFormat,
    check_distinct_outputs,
    check_model_options,
    check_output_path,
    check_plot_path,
    emit,
    parse_positive,
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
from resnet_inspect.errors import BadInputError
from resnet_inspect.render.files import write_output

CheckOption = typer.Option(
    False, "--check", help="Check every stage against the input-gradient support of a linear one-channel replay "
    "(exit 1 if one disagrees)."
)
ErfOption = typer.Option(False, "--erf", help="Measure the effective receptive field (Luo et al. 2016).")
SamplesOption = typer.Option(8, "--erf-samples", help="Random inputs averaged for the ERF.")
WeightsOption = typer.Option(None, "--weights", help="A state_dict file for the ERF (torchvision layout accepted); "
                             "implies --erf.", show_default=False)
PngOption = typer.Option(None, "--png", help="Save the ERF as a grayscale PNG; implies --erf.", show_default=False)
PlotOption = typer.Option(None, "--plot", help="Draw the input to scale with each stage's field as nested boxes "
                          "(.png, .svg or .pdf; with --erf a second panel shows the ERF). Needs matplotlib: "
                          "pip install 'resnet-inspect[plot]'.", show_default=False)


def rf_command(
    model: str = ModelArgument,
    input_size: str | None = InputSizeOption,
    in_channels: int | None = ChannelsOption,
    num_classes: int | None = ClassesOption,
    check: bool = CheckOption,
    erf: bool = ErfOption,
    erf_samples: int = SamplesOption,
    weights: Path | None = WeightsOption,
    png: Path | None = PngOption,
    plot: Path | None = PlotOption,
    fmt: OutputFormat = FormatOption,
    output: Path | None = OutputOption,
) -> None:
    """Receptive field size, effective stride and padding at every stage (stem, each layer, encoder output)."""
    with user_errors():
        check_output_path(output)
        check_distinct_outputs(output, png=png, plot=plot)
        check_output_path(png)
        check_plot_path(plot)
        check_model_options(in_channels, num_classes)
        parse_positive(str(erf_samples), "--erf-samples", maximum=MAX_ERF_SAMPLES)
        if weights is not None and not weights.is_file():
            raise BadInputError(f"weights file not found: {weights}")
        from resnet_inspect.pipeline.rf import load_rf_model, rf_report

        size = resolve_size(model, input_size)
        wants_erf = erf or weights is not None or png is not None
        channels = in_channels
        network, name = load_rf_model(model, channels, num_classes, real=wants_erf)
        report = rf_report(network, name, size, channels, check, wants_erf, erf_samples, weights)
        if png is not None and report.erf is not None:
            from resnet_inspect.render.heatmap import png_bytes

            write_output(png, png_bytes(report.erf.mass))
            report = replace(report, png=str(png))
        if plot is not None:
            from resnet_inspect.render.plot import plot_format, rf_picture

            write_output(plot, rf_picture(report, plot_format(plot)))
            report = replace(report, plot=str(plot))
        emit(report, fmt, output)
    if report.empirical is not None and report.empirical.agrees is False:
        raise typer.Exit(EXIT_CHECK_FAILED)
