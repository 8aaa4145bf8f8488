"""What every command shares: option parsing, one-line errors, and writing a rendered report."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout, suppress
from contextvars import ContextVar
from enum import StrEnum
from pathlib import Path
from typing import Any, NoReturn

from typer.core import TyperGroup

from resnet_inspect.errors import BadInputError, InspectError
from resnet_inspect.limits import (  # noqa: F401  (MAX_COUNT and the others are part of this module's interface)
    DEFAULT_OPTIMIZER,
    MAX_COUNT,
    MAX_ERF_SAMPLES,
    MAX_INPUT_SIZE,
    MAX_REPEAT,
    MAX_WARMUP,
    check_option,
    check_optional,
)
from resnet_inspect.names import first_line, printable, strip_controls
from resnet_inspect.render.text import bytes_text

try:  # typer >= 0.2x carries its own copy of click
    from typer._click.exceptions import UsageError
except ImportError:  # pragma: no cover - older typer uses click itself
    from click.exceptions import UsageError  # type: ignore[no-redef]  # the same class, where older typer has it

DEBUG_VARIABLE = "RESNET_INSPECT_DEBUG"
DEBUG_VALUES = ("1", "true", "yes", "on")
EXIT_OK, EXIT_CHECK_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_BROKEN_PIPE = 128 + 13  # what a process killed by SIGPIPE reports: `set -o pipefail; ... | head` expects it
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
    """The first line of ``message`` that says something, its runs of white space collapsed (see ``first_line``)."""
    return first_line(message)


def debug_enabled() -> bool:
    """RESNET_INSPECT_DEBUG=1 (or true, yes, on) shows tracebacks; 0, false or an empty value do not."""
    return os.environ.get(DEBUG_VARIABLE, "").strip().lower() in DEBUG_VALUES


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    """Print one line on stderr and exit."""
    import typer

    typer.echo(f"error: {strip_controls(one_line(message))}", err=True)
    raise typer.Exit(code)


# Where the report goes while a command runs: standard output as it was when the command started. In the
# meantime sys.stdout is standard error, so whatever the model's code prints cannot corrupt the report.
_NOT_RUNNING = object()
_report_stream: ContextVar[Any] = ContextVar("report_stream", default=_NOT_RUNNING)


@contextmanager
def user_errors() -> Iterator[None]:
    """Run a command: any error becomes one line on stderr and an exit code; user code prints to stderr.

    Bad input exits 2, also when RESNET_INSPECT_DEBUG is set (which adds the traceback above the line). An
    exit from the model's own code (``sys.exit``) is a failure, never a success. A reader that closed the
    pipe early ends the command quietly with the code a SIGPIPE gives (141).
    """
    import typer

    token = _report_stream.set(sys.stdout)
    try:
        with redirect_stdout(sys.stderr):
            yield
    except (typer.Exit, typer.Abort, KeyboardInterrupt):
        raise
    except BrokenPipeError:
        _silence_stdout()
        raise typer.Exit(EXIT_BROKEN_PIPE) from None
    except SystemExit as exc:
        _show_traceback()
        fail(f"the model's code called sys.exit({exc.code!r}); the command did not finish")
    except Exception as exc:
        _show_traceback()
        if isinstance(exc, InspectError):
            fail(str(exc), exc.exit_code)
        if isinstance(exc, MemoryError) or _is_allocation_failure(exc):
            fail(f"out of memory{_requested_bytes(exc)}: try a smaller input size or batch size")
        hint = "" if debug_enabled() else f" (set {DEBUG_VARIABLE}=1 for the traceback)"
        fail(f"{type(exc).__name__}: {one_line(str(exc))}{hint}")
    finally:
        _report_stream.reset(token)


def report_stream() -> Any:
    """The stream the report goes to: standard output as the running command found it (None when closed)."""
    stream = _report_stream.get()
    return sys.stdout if stream is _NOT_RUNNING else stream


def _show_traceback() -> None:
    if debug_enabled():
        import traceback

        traceback.print_exc(file=sys.stderr)


def _silence_stdout() -> None:
    """After a broken pipe: point standard output at /dev/null so the interpreter's last flush stays quiet."""
    with suppress(OSError):
        sys.stdout.flush()
    stream = report_stream() or sys.__stdout__
    if stream is None:  # no standard output at all (pythonw)
        return
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
        os.close(devnull)
    except (OSError, AttributeError, ValueError):  # no file descriptor (a test's in-memory stream)
        pass


# What PyTorch's allocators say when a tensor does not fit (CPU, CUDA, MPS); a RuntimeError, not a MemoryError.
_ALLOCATION_FAILURES = ("can't allocate memory", "out of memory", "Cannot allocate memory")


def _is_allocation_failure(exc: Exception) -> bool:
    return type(exc).__name__ == "OutOfMemoryError" or (
        isinstance(exc, RuntimeError) and any(marker in str(exc) for marker in _ALLOCATION_FAILURES)
    )


def _requested_bytes(exc: Exception) -> str:
    """' (tried to allocate 48.0 GiB)' when the allocator's message says how much, else ''."""
    match = re.search(r"allocate (\d+) bytes", str(exc))
    return f" (tried to allocate {bytes_text(int(match.group(1)))})" if match else ""


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


def parse_count(text: str, option: str, name: str) -> int:
    """A count given as text (``-i``, ``-b``), checked against the limit of ``option`` (see ``limits``)."""
    if not re.fullmatch(r"\s*\d+\s*", text or ""):
        raise BadInputError(f"{name} must be a positive integer, got '{text}'")
    return check_option(option, int(text), name)


def parse_input_size(text: str) -> int | tuple[int, ...]:
    """'224' -> 224 (every spatial axis); '224x320' -> (224, 320) as (height, width); '16x64x64' for 3-D."""
    parts = text.strip().lower().split("x")
    if len(parts) not in (1, 2, 3) or not all(parts):
        raise BadInputError(f"input size must look like 224, 224x320 or 16x112x112, got '{text}'")
    sizes = [parse_count(part, "input_size", "input size") for part in parts]
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
    return parse_count(text, "batch_size", "batch size")


def resolve_size(model: str, input_size: str | None) -> int | tuple[int, ...]:
    """--input-size if given, else the model's own default (224, or 32 for CIFAR) on every spatial axis."""
    from resnet_inspect.pipeline.summary import own_input_size

    return parse_input_size(input_size) if input_size is not None else own_input_size(model)


def check_model_options(in_channels: int | None, num_classes: int | None) -> None:
    """--in-channels and --num-classes, when given, must be positive (torch would say something obscure)."""
    check_optional("in_channels", in_channels, "--in-channels")
    check_optional("num_classes", num_classes, "--num-classes")


def check_timing_options(warmup: int, repeat: int, threads: int | None = None) -> None:
    """--warmup, --repeat and --threads within their limits (a huge count would never finish)."""
    check_option("warmup", warmup, "--warmup")
    check_option("repeat", repeat, "--repeat")
    check_optional("threads", threads, "--threads")


def check_train_options(train: bool, optimizer: str | None, amp: str | None, dtype: str,
                        per_layer: bool = False) -> tuple[str, str | None]:
    """--optimizer (default: DEFAULT_OPTIMIZER) and --amp, checked as every command checks them (see
    ``pipeline.options.train_options``); --per-layer times forward passes, not a --train step."""
    from resnet_inspect.pipeline.options import Caller, TrainRequest, train_options

    options = train_options(TrainRequest(train, optimizer, amp, None, dtype), "cpu", Caller.cli)
    if train and per_layer:  # before the progress bar; pipeline.timing refuses it too, for the API's own words
        raise BadInputError("--per-layer times forward passes: it cannot be used with --train")
    return (options.optimizer, options.amp) if options is not None else (DEFAULT_OPTIMIZER, None)


def check_output_path(output: Path | None) -> None:
    """Fail before any work when --output (or --png) cannot be written; see ``render.files.check_writable``."""
    from resnet_inspect.render.files import check_writable

    check_writable(output)


# Marks the reports use, and what a terminal that cannot show them gets instead.
ASCII_MARKS = str.maketrans({"░": ".", "▒": ":", "▓": "#", "█": "@", "✓": "ok", "✗": "FAIL", "—": "-", "–": "-",
                             "…": "...", "×": "x", "≈": "~", "→": "->", "·": "."})


class AsciiMarks:
    """A text stream that cannot encode the report's marks (PYTHONIOENCODING=ascii, cp1252, the C locale)
    gets ASCII in their place, and '?' for anything else it cannot show, instead of a UnicodeEncodeError."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.encoding = "ascii"

    def write(self, text: str) -> int:
        plain = text.translate(ASCII_MARKS)
        encoding = getattr(self.stream, "encoding", None) or "ascii"
        self.stream.write(plain.encode(encoding, errors="replace").decode(encoding))
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return bool(getattr(self.stream, "isatty", lambda: False)())

    def fileno(self) -> int:
        return self.stream.fileno()


def _can_show(stream: Any, sample: str = "░✓—─") -> bool:
    try:
        sample.encode(getattr(stream, "encoding", None) or "ascii")
    except (UnicodeEncodeError, LookupError):
        return False
    return True


def _report_console(stream: Any) -> Any:
    """A rich console on ``stream`` whose broken pipe reaches ``user_errors`` (rich's own handler would exit 1
    and point the wrong descriptor, sys.stdout's, at /dev/null)."""
    from rich.console import Console

    class ReportConsole(Console):
        def on_broken_pipe(self) -> None:
            self.quiet = True
            raise BrokenPipeError

    console = ReportConsole(file=stream)
    if not console.is_terminal:
        console = ReportConsole(file=stream, width=PIPE_WIDTH)  # piped: don't squeeze wide tables into 80 columns
    return console


def check_distinct_outputs(report: Path | None, **pictures: Path | None) -> None:
    """A picture (``--png``, ``--plot``) needs a file of its own: not standard output, not the report's, not
    another picture's. Keyword names are the options' names without the dashes."""
    from resnet_inspect.render.files import is_stdout, same_file

    named = {"-o": report, **{f"--{option}": path for option, path in pictures.items()}}
    for option, path in pictures.items():
        if path is not None and is_stdout(path):
            raise BadInputError(f"--{option} needs a file name: the picture cannot go to standard output")
    options = [option for option, path in named.items() if path is not None]
    for position, first in enumerate(options):
        for second in options[position + 1:]:
            if same_file(named[first], named[second]):
                raise BadInputError(f"{first} and {second} both name {named[second]}: one would overwrite the other")


def check_plot_path(plot: Path | None) -> None:
    """Fail before any work when --plot has an unknown ending, matplotlib is missing, or the file can't be written."""
    if plot is None:
        return
    from resnet_inspect.render.plot import plot_format, require_matplotlib

    plot_format(plot)
    require_matplotlib()
    check_output_path(plot)


def emit(report: Any, fmt: OutputFormat | SummaryFormat | str, output: Path | None = None) -> None:
    """Render ``report`` in ``fmt``; print it (``-o -`` too), or write it to ``output`` in one piece."""
    from resnet_inspect.render import render, rich_renderables
    from resnet_inspect.render.files import is_stdout, write_output

    fmt_name = fmt.value if isinstance(fmt, StrEnum) else fmt
    if output is not None and not is_stdout(output):
        write_output(output, render(report, fmt_name))
        return
    stream = report_stream()
    if stream is None:  # started with standard output closed (`>&-`): the report would be lost
        raise BadInputError("cannot write the report: standard output is closed (use -o FILE)")
    if not _can_show(stream):
        stream = AsciiMarks(stream)
    try:
        if fmt_name == "table":
            console = _report_console(stream)
            for renderable in rich_renderables(report):
                console.print(renderable)
        else:
            stream.write(printable(render(report, fmt_name)))
        stream.flush()
    except BrokenPipeError:
        raise
    except OSError as exc:  # EBADF, EIO, ENOSPC: the report did not arrive, which is an error
        raise BadInputError(f"cannot write the report to standard output: {exc.strerror or exc}") from exc


def progress_bar(description: str, total: int) -> Any:
    """A rich progress bar on stderr (results go to stdout); silent when stderr is not a terminal."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    progress = Progress(
        TextColumn("{task.description}", markup=False),  # a model name such as a[/x]b.py prints as it is
        BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, transient=True, disable=not console.is_terminal,  # else it leaves a blank line on stderr
    )
    progress.start()
    task = progress.add_task(strip_controls(printable(description)), total=total)  # it names the model
    return progress, task

