"""`resnet-inspect list`: the registered models."""

from __future__ import annotations

from pathlib import Path

from resnet_inspect.cli.common import OutputFormat, check_output_path, emit, user_errors
from resnet_inspect.cli.options import FormatOption, OutputOption


def list_command(
    fmt: OutputFormat = FormatOption,
    output: Path | None = OutputOption,
) -> None:
    """List the registered models with their exact parameter counts (counted on the meta device)."""
    with user_errors():
        check_output_path(output)
        from resnet_inspect.pipeline.registry import registry_report

        emit(registry_report(), fmt, output)
