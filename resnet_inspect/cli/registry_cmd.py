"""`resnet-inspect list`: the registered models."""

from __future__ import annotations

from pathlib import Path

import typer

from resnet_inspect.cli.common import OutputFormat, check_output_path, emit, user_errors


def list_command(
    fmt: OutputFormat = typer.Option(OutputFormat.table, "--format", "-f", help="Output format."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Write to FILE instead of stdout."),
) -> None:
    """List the registered models with their exact parameter counts (counted on the meta device)."""
    with user_errors():
        check_output_path(output)
        from resnet_inspect.report.registry import registry_report

        emit(registry_report(), fmt, output)
