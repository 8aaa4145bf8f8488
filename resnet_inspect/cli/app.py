"""The `resnet-inspect` command line. Commands are thin: parse, call the library, pick a renderer."""

from __future__ import annotations

import typer

from resnet_inspect.cli import compare_cmd, fit_cmd, inspect_cmd, registry_cmd, rf_cmd, time_cmd
from resnet_inspect.cli.common import OneLineUsageErrors

app = typer.Typer(
    name="resnet-inspect",
    cls=OneLineUsageErrors,
    help="Shapes, convolution arithmetic, receptive fields, FLOPs and timing of ResNets (and any CNN).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain click help: typer's rich help imports markdown and pygments (~0.15 s)
)

app.command("list")(registry_cmd.list_command)
app.command("summary")(inspect_cmd.summary_command)
app.command("verify")(inspect_cmd.verify_command)
app.command("arith")(inspect_cmd.arith_command)
app.command("rf")(rf_cmd.rf_command)
app.command("time")(time_cmd.time_command)
app.command("compare")(compare_cmd.compare_command)
app.command("fit")(fit_cmd.fit_command)


def main() -> None:
    app()
