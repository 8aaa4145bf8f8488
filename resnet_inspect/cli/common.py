"""What every command shares: option parsing, one-line errors, and writing a rendered report."""

from __future__ import annotations

import os
import re
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Any, NoReturn

from typer.core import TyperGroup

from resnet_inspect.errors import BadInputError, InspectError

try:  # typer >= 0.2x carries its own copy of click
    from typer._click.exceptions import UsageError
except ImportError:  # pragma: no cover - older typer uses click itself
    from click.exceptions import UsageError

DEBUG_VARIABLE = "RESNET_INSPECT_DEBUG"
EXIT_OK, EXIT_CHECK_FAILED, EXIT_USAGE = 0, 1, 2
MAX_INPUT_SIZE = 65536
MAX_COUNT = 1 << 20  # the largest batch size, channel count or class count accepted
PIPE_WIDTH = 240


class OutputFormat(StrEnum):
    table = "table"
    json = "json"
    csv = "csv"
    markdown = "markdown"


class SummaryFormat(StrEnum):
    """`summary` also writes a self-contained HTML page."""

    table = "table"
    json = "json"
    csv = "csv"
    markdown = "markdown"
    html = "html"


def one_line(message: str) -> str:
    """The first line of ``message`` with its runs of white space collapsed."""
    return " ".join(message.strip().split("\n")[0].split())


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    """Print one line on stderr and exit."""
    import typer

    typer.echo(f"error: {one_line(message)}", err=True)
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
        if isinstance(exc, MemoryError) or _is_allocation_failure(exc):
            fail(f"out of memory{_requested_bytes(exc)}: try a smaller input size or batch size")
        fail(f"{type(exc).__name__}: {exc} (set {DEBUG_VARIABLE}=1 for the traceback)")


# What PyTorch's allocators say when a tensor does not fit (CPU, CUDA, MPS); a RuntimeError, not a MemoryError.
_ALLOCATION_FAILURES = ("can't allocate memory", "out of memory", "Cannot allocate memory")


def _is_allocation_failure(exc: Exception) -> bool:
    return type(exc).__name__ == "OutOfMemoryError" or (
        isinstance(exc, RuntimeError) and any(marker in str(exc) for marker in _ALLOCATION_FAILURES)
    )


def _requested_bytes(exc: Exception) -> str:
    """' (tried to allocate 48.0 GiB)' when the allocator's message says how much, else ''."""
    match = re.search(r"allocate (\d+) bytes", str(exc))
    return f" (tried to allocate {int(match.group(1)) / 1024**3:.1f} GiB)" if match else ""


class OneLineUsageErrors(TyperGroup):
    """Typer's own usage errors (a bad option value, a missing argument, an unknown command) as one line.

    Typer prints them as a usage line, a hint and a framed panel; every other error of the tool is one
    `error: ...` line, so these are too, with the command's --help named on the same line. Exit code 2.
    Running without any arguments still prints the help.
    """

    def make_context(self, *args: Any, **kwargs: Any) -> Any:
        with _one_line_usage_errors():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx: Any) -> Any:
        with _one_line_usage_errors():
            return super().invoke(ctx)


@contextmanager
def _one_line_usage_errors() -> Iterator[None]:
    try:
        yield
    except UsageError as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":
            raise
        help_hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        fail(f"{one_line(exc.format_message())}{help_hint}", exc.exit_code)


def parse_positive(text: str, what: str, maximum: int = MAX_INPUT_SIZE) -> int:
    if not re.fullmatch(r"\s*\d+\s*", text or ""):
        raise BadInputError(f"{what} must be a positive integer, got '{text}'")
    value = int(text)
    if value <= 0:
        raise BadInputError(f"{what} must be positive, got {value}")
    if value > maximum:
        raise BadInputError(f"{what} {value} is larger than the maximum {maximum}")
    return value


def parse_input_size(text: str) -> int | tuple[int, ...]:
    """'224' -> 224 (every spatial axis); '224x320' -> (224, 320) as (height, width); '16x64x64' for 3-D."""
    parts = text.strip().lower().split("x")
    if len(parts) not in (1, 2, 3) or not all(parts):
        raise BadInputError(f"input size must look like 224, 224x320 or 16x112x112, got '{text}'")
    sizes = [parse_positive(part, "input size") for part in parts]
    return sizes[0] if len(sizes) == 1 else tuple(sizes)


def parse_input_sizes(text: str) -> list[int | tuple[int, ...]]:
    """'128,224,320' -> several input sizes."""
    return [parse_input_size(part) for part in text.split(",")]


def parse_batch_sizes(text: str) -> list[int]:
    """'1,8,32' -> [1, 8, 32]."""
    parts = text.split(",")
    if not all(part.strip() for part in parts):
        raise BadInputError(f"batch sizes must look like 1 or 1,8,32, got '{text}'")
    return [parse_batch_size(part) for part in parts]


def parse_batch_size(text: str) -> int:
    """One --batch-size value."""
    return parse_positive(text, "batch size", maximum=MAX_COUNT)


def resolve_size(model: str, input_size: str | None) -> int | tuple[int, ...]:
    """--input-size if given, else the model's own default (224, or 32 for CIFAR) on every spatial axis."""
    from resnet_inspect.capture.loader import default_input_size

    return parse_input_size(input_size) if input_size is not None else default_input_size(model)


def check_model_options(in_channels: int | None, num_classes: int | None) -> None:
    """--in-channels and --num-classes, when given, must be positive (torch would say something obscure)."""
    for value, option in ((in_channels, "--in-channels"), (num_classes, "--num-classes")):
        if value is not None:
            parse_positive(str(value), option, maximum=MAX_COUNT)


def check_timing_options(warmup: int, repeat: int) -> None:
    """--warmup must be 0 or more and --repeat positive."""
    if warmup < 0:
        raise BadInputError(f"--warmup must be 0 or more, got {warmup}")
    parse_positive(str(repeat), "--repeat")


def write_atomically(path: Path, content: str | bytes) -> None:
    """Write the whole file or nothing: a temporary file beside it, renamed into place (text as UTF-8)."""
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise BadInputError(f"cannot write {path}: directory {directory} does not exist")
    try:
        descriptor, temporary = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise BadInputError(f"cannot write {path}: {exc.strerror or exc}") from exc
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(content.encode("utf-8") if isinstance(content, str) else content)
        os.replace(temporary, path)
    except OSError as exc:
        Path(temporary).unlink(missing_ok=True)
        raise BadInputError(f"cannot write {path}: {exc.strerror or exc}") from exc


def check_output_path(output: Path | None) -> None:
    """Fail before any work when --output cannot be written.

    The directory is probed by creating (and removing) a temporary file in it, the way ``write_atomically``
    will: permission bits do not stop root, and places such as /proc refuse new files whatever they say.
    """
    if output is None:
        return
    directory = output.parent if str(output.parent) else Path(".")
    if output.is_dir():
        raise BadInputError(f"cannot write {output}: it is a directory")
    if not directory.is_dir():
        raise BadInputError(f"cannot write {output}: directory {directory} does not exist")
    if output.exists() and not os.access(output, os.W_OK):
        raise BadInputError(f"cannot write {output}: permission denied")
    try:
        descriptor, probe = tempfile.mkstemp(dir=directory, prefix=f".{output.name}.", suffix=".tmp")
    except OSError as exc:
        raise BadInputError(f"cannot write {output}: {directory} does not accept new files "
                            f"({exc.strerror or exc})") from exc
    os.close(descriptor)
    os.unlink(probe)


def check_plot_path(plot: Path | None) -> None:
    """Fail before any work when --plot has an unknown ending, matplotlib is missing, or the file can't be written."""
    if plot is None:
        return
    from resnet_inspect.render.plot import plot_format, require_matplotlib

    plot_format(plot)
    require_matplotlib()
    check_output_path(plot)


def emit(report: Any, fmt: OutputFormat | SummaryFormat | str, output: Path | None = None) -> None:
    """Render ``report`` in ``fmt``; print it, or write it to ``output`` in one piece."""
    from resnet_inspect.render import render, rich_renderables

    fmt_name = fmt.value if isinstance(fmt, StrEnum) else fmt
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
    """A rich progress bar on stderr (results go to stdout); silent when stderr is not a terminal."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, transient=True, disable=not console.is_terminal,  # else it leaves a blank line on stderr
    )
    progress.start()
    task = progress.add_task(description, total=total)
    return progress, task

