"""What every command shares: option parsing, one-line errors, and writing a rendered report."""

from __future__ import annotations

import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Any, NoReturn

from resnet_inspect.errors import BadInputError, InspectError

DEBUG_VARIABLE = "RESNET_INSPECT_DEBUG"
EXIT_OK, EXIT_CHECK_FAILED, EXIT_USAGE = 0, 1, 2
MAX_INPUT_SIZE = 65536
PIPE_WIDTH = 240


class OutputFormat(StrEnum):
    table = "table"
    json = "json"
    csv = "csv"
    markdown = "markdown"


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    """Print one line on stderr and exit."""
    import typer

    first_line = " ".join(message.strip().split("\n")[0].split())
    typer.echo(f"error: {first_line}", err=True)
    raise typer.Exit(code)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn any error into one line on stderr and exit code 2; set RESNET_INSPECT_DEBUG=1 for the traceback."""
    import typer

    try:
        yield
    except (typer.Exit, typer.Abort, KeyboardInterrupt):
        raise
    except Exception as exc:
        if os.environ.get(DEBUG_VARIABLE):
            raise
        if isinstance(exc, InspectError):
            fail(str(exc), exc.exit_code)
        if isinstance(exc, MemoryError):
            fail("out of memory: try a smaller input size or batch size")
        fail(f"{type(exc).__name__}: {exc} (set {DEBUG_VARIABLE}=1 for the traceback)")


def parse_positive(text: str, what: str, maximum: int = MAX_INPUT_SIZE) -> int:
    if not re.fullmatch(r"\s*\d+\s*", text or ""):
        raise BadInputError(f"{what} must be a positive integer, got '{text}'")
    value = int(text)
    if value <= 0:
        raise BadInputError(f"{what} must be positive, got {value}")
    if value > maximum:
        raise BadInputError(f"{what} {value} is larger than the maximum {maximum}")
    return value


def parse_input_size(text: str) -> tuple[int, int]:
    """'224' -> (224, 224); '224x320' -> (224, 320) as (height, width)."""
    parts = text.strip().lower().split("x")
    if len(parts) not in (1, 2) or not all(parts):
        raise BadInputError(f"input size must look like 224 or 224x320, got '{text}'")
    sizes = [parse_positive(part, "input size") for part in parts]
    return (sizes[0], sizes[-1])


def parse_input_sizes(text: str) -> list[tuple[int, int]]:
    """'128,224,320' -> several input sizes."""
    return [parse_input_size(part) for part in text.split(",")]


def parse_batch_sizes(text: str) -> list[int]:
    """'1,8,32' -> [1, 8, 32]."""
    parts = text.split(",")
    if not all(part.strip() for part in parts):
        raise BadInputError(f"batch sizes must look like 1 or 1,8,32, got '{text}'")
    return [parse_positive(part, "batch size", maximum=1 << 20) for part in parts]


def write_atomically(path: Path, text: str) -> None:
    """Write the whole file or nothing: a temporary file beside it, renamed into place."""
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise BadInputError(f"cannot write {path}: directory {directory} does not exist")
    try:
        descriptor, temporary = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise BadInputError(f"cannot write {path}: {exc.strerror or exc}") from exc
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(temporary, path)
    except OSError as exc:
        Path(temporary).unlink(missing_ok=True)
        raise BadInputError(f"cannot write {path}: {exc.strerror or exc}") from exc


def check_output_path(output: Path | None) -> None:
    """Fail before any work when --output cannot be written."""
    if output is None:
        return
    directory = output.parent if str(output.parent) else Path(".")
    if output.is_dir():
        raise BadInputError(f"cannot write {output}: it is a directory")
    if not directory.is_dir():
        raise BadInputError(f"cannot write {output}: directory {directory} does not exist")
    if not os.access(directory, os.W_OK) or (output.exists() and not os.access(output, os.W_OK)):
        raise BadInputError(f"cannot write {output}: permission denied")


def emit(report: Any, fmt: OutputFormat | str, output: Path | None = None) -> None:
    """Render ``report`` in ``fmt``; print it, or write it to ``output`` in one piece."""
    from resnet_inspect.render import render, rich_renderables

    fmt_name = fmt.value if isinstance(fmt, OutputFormat) else fmt
    if output is not None:
        write_atomically(output, render(report, fmt_name))
        return
    if fmt_name == "table":
        from rich.console import Console

        console = Console()
        if not console.is_terminal:
            console = Console(width=PIPE_WIDTH)  # piped or redirected: don't squeeze wide tables into 80 columns
        for renderable in rich_renderables(report):
            console.print(renderable)
        return
    sys.stdout.write(render(report, fmt_name))
    sys.stdout.flush()


def progress_bar(description: str, total: int) -> Any:
    """A rich progress bar on stderr (results go to stdout)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=Console(stderr=True), transient=True,
    )
    progress.start()
    task = progress.add_task(description, total=total)
    return progress, task


Command = Callable[..., Any]
