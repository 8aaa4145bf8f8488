"""Bad input to every command: exactly one `error: ...` line on stderr, exit code 2, no traceback, no file.

The commands are discovered from the app, so a new command without cases here fails the first test. Each
failing case also passes `-o` to a writable path and checks that nothing (not even a temporary file) was left.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import typer
from typer.testing import CliRunner

from resnet_inspect.cli.app import app
from resnet_inspect.cli.common import MAX_INPUT_SIZE, OneLineUsageErrors
from resnet_inspect.errors import BadInputError
from resnet_inspect.render.files import write_output

ZOO = "tests/fixtures/cnn_zoo.py"
BROKEN = "tests/fixtures/broken_import.py"
REPOSITORY = Path(__file__).resolve().parent.parent
runner = CliRunner()

REGISTERED = set(typer.main.get_command(app).commands)  # type: ignore[attr-defined]
ALL_COMMANDS = ("list", "summary", "verify", "arith", "time", "rf", "compare", "fit")
MODEL_COMMANDS = ("summary", "verify", "time", "rf", "compare", "fit")
SIZE_COMMANDS = ("summary", "verify", "arith", "time", "rf", "compare", "fit")

# Typer's own usage errors (an int option given 'abc', a missing argument) are one line only when the app is
# built with cls=OneLineUsageErrors (resnet_inspect/cli/app.py).
ONE_LINE_USAGE_ERRORS = isinstance(typer.main.get_command(app), OneLineUsageErrors)
needs_one_line_usage_errors = pytest.mark.xfail(
    not ONE_LINE_USAGE_ERRORS, strict=True,
    reason="typer prints usage errors in a framed panel until app.py passes cls=OneLineUsageErrors to typer.Typer",
)
needs_no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")

# Quick, valid arguments for each command; a case replaces or extends them.
FAST_OPTIONS = {
    "time": ["--warmup", "0", "--repeat", "1"],
    "compare": [],
    "fit": ["--memory", "1GiB"],
}


def command_line(command: str, model: str = "resnet18", size: str | None = None) -> list[str]:
    """``command`` on ``model`` (at ``size``), with the options that keep it fast."""
    if command == "arith":
        return ["arith", "-i", size or "56", "-k", "3"]
    if command == "list":
        return ["list"]
    args = [command, model, *FAST_OPTIONS.get(command, [])]
    return [*args, "-i", size] if size is not None else args


def run_failing(args: list[str], directory: Path) -> str:
    """Run ``args`` with `-o` into ``directory``; check the failure contract and return the error line."""
    command = args[0]
    if command not in REGISTERED:
        pytest.skip(f"`{command}` is not registered in the app yet")
    target = directory / "report.json"
    result = runner.invoke(app, [*args, "-o", str(target)])
    return check_failure(result, directory)


def check_failure(result, directory: Path | None = None) -> str:
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr, result.exception)
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert result.stdout == ""
    if directory is not None:
        assert list(directory.iterdir()) == [], "a failed command left a file behind"
    return lines[0]


def test_every_registered_command_has_hardening_cases():
    assert set(ALL_COMMANDS) >= REGISTERED


# ------------------------------------------------------------------------------------------------ sizes

BAD_SIZES = ("0", "-1", "abc", "224x", "1000000")


def size_case(command: str, size: str):
    typer_parses_it = command == "arith" and size in ("abc", "224x")  # arith's -i is an int option
    return pytest.param(command, size, id=f"{command}-{size}",
                        marks=[needs_one_line_usage_errors] if typer_parses_it else [])


@pytest.mark.parametrize(("command", "size"), [size_case(c, s) for c in SIZE_COMMANDS for s in BAD_SIZES])
def test_a_bad_input_size_is_one_error_line(command, size, tmp_path):
    line = run_failing(command_line(command, size=size), tmp_path)
    assert size in line or "Invalid value" in line


def test_the_largest_size_is_stated_in_the_error(tmp_path):
    assert run_failing(command_line("summary", size="1000000"), tmp_path) == (
        f"error: input size 1000000 is larger than the maximum {MAX_INPUT_SIZE}")


@pytest.mark.parametrize("size", ["224x1000000", "0x224", "224x-1", "x", "224x224x3", ""])
def test_a_malformed_height_by_width_size_is_one_error_line(size, tmp_path):
    run_failing(command_line("summary", size=size), tmp_path)


@pytest.mark.parametrize("batch", ["0", "-1", "abc", "2097152"])
@pytest.mark.parametrize("command", ["summary", "verify", "time", "compare"])
def test_a_bad_batch_size_is_one_error_line(command, batch, tmp_path):
    run_failing([*command_line(command), "-b", batch], tmp_path)


@pytest.mark.parametrize("option", ["-k", "-s", "-p", "-d"])
@pytest.mark.parametrize("value", ["-1", "1000000"])
def test_arith_rejects_negative_and_huge_numbers(option, value, tmp_path):
    run_failing(["arith", "-i", "56", "-k", "3", option, value], tmp_path)


@pytest.mark.parametrize("option", ["--in-channels", "--num-classes"])
@pytest.mark.parametrize("value", ["0", "-5"])
@pytest.mark.parametrize("command", ["summary", "verify", "rf"])
def test_a_non_positive_channel_or_class_count_is_one_error_line(command, option, value, tmp_path):
    line = run_failing([*command_line(command), option, value], tmp_path)
    assert option in line


def test_the_largest_input_size_is_accepted_and_counted_exactly():
    result = runner.invoke(app, ["summary", "resnet20", "-i", str(MAX_INPUT_SIZE), "-b", "1048576", "-f", "json"])
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["input_shape"] == [1048576, 3, MAX_INPUT_SIZE, MAX_INPUT_SIZE]
    assert data["output_shape"] == [1048576, 10]
    # Far beyond 2**63 the counts stay exact integers: at 32x32 the convolutions take 40,550,400 MACs and the
    # 64x10 fc 640; at 65536x65536 every feature map has 2048**2 times the positions, the fc the same MACs.
    assert data["totals"]["macs"] == (40_550_400 * 2048**2 + 640) * 1048576


# ----------------------------------------------------------------------------------------- model names


@pytest.mark.parametrize("command", MODEL_COMMANDS)
def test_an_unknown_model_name_lists_the_registry(command, tmp_path):
    line = run_failing(command_line(command, model="resnet19"), tmp_path)
    assert "unknown model 'resnet19'" in line and "resnet18" in line


FACTORY_FAILURES = {
    "missing file": ("tests/fixtures/no_such_file.py:model", "not found"),
    "import error": (f"{BROKEN}:model", "cannot import"),
    "missing factory": (f"{ZOO}:no_such_factory", "has no attribute"),
    "not a module": (f"{ZOO}:not_a_module", "not a torch.nn.Module"),
    "factory raises": (f"{ZOO}:raising_factory", "factory failed on purpose"),
    "forward raises": (f"{ZOO}:exploding", "head (Linear)"),
}


@pytest.mark.parametrize("failure", FACTORY_FAILURES)
@pytest.mark.parametrize("command", MODEL_COMMANDS)
def test_a_factory_that_gives_no_working_model_is_one_error_line(command, failure, tmp_path):
    spec, reason = FACTORY_FAILURES[failure]
    line = run_failing(command_line(command, model=spec, size="32"), tmp_path)
    assert reason in line  # `time` too: its memory estimate runs the hooked meta pass first


# ----------------------------------------------------------------------------------------------- devices

CUDA_CASES = {
    "time": ["time", "resnet18", "--device", "cuda"],
    "summary --time": ["summary", "resnet18", "--time", "--device", "cuda"],
    "compare --time": ["compare", "resnet18", "resnet20", "--time", "--device", "cuda"],
}


@needs_no_cuda
@pytest.mark.parametrize("case", CUDA_CASES)
def test_cuda_on_a_machine_without_it_is_one_error_line(case, tmp_path):
    line = run_failing(CUDA_CASES[case], tmp_path)
    assert "'cuda' is not available" in line


@pytest.mark.parametrize("device", ["gpu", "cuda:x", ""])
def test_an_unknown_device_is_one_error_line(device, tmp_path):
    run_failing(["time", "resnet18", "--device", device], tmp_path)


# ----------------------------------------------------------------------------------------------- outputs

UNWRITABLE = {
    "missing directory": lambda tmp: tmp / "no_such_directory" / "report.json",
    "a directory": lambda tmp: tmp,
    "/proc": lambda tmp: Path("/proc/resnet_inspect_report.json"),
}


@pytest.mark.parametrize("where", UNWRITABLE)
@pytest.mark.parametrize("command", ALL_COMMANDS)
def test_an_unwritable_output_fails_before_any_work(command, where, tmp_path):
    if command not in REGISTERED:
        pytest.skip(f"`{command}` is not registered in the app yet")
    target = UNWRITABLE[where](tmp_path)
    # A model that does not exist: had the command started working, the error would be about the model.
    args = command_line(command, model="resnet19") if command != "arith" else ["arith", "-i", "2", "-k", "5"]
    line = check_failure(runner.invoke(app, [*args, "-o", str(target)]), tmp_path)
    assert line.startswith(f"error: cannot write {target}")
    assert not target.is_file()


def test_rf_png_to_an_unwritable_place_fails_before_any_work(tmp_path):
    if "rf" not in REGISTERED:
        pytest.skip("`rf` is not registered in the app yet")
    line = run_failing(["rf", "resnet19", "--png", "/proc/erf.png"], tmp_path)
    assert line.startswith("error: cannot write /proc/erf.png")


def test_a_failed_write_leaves_neither_the_file_nor_a_temporary(tmp_path, monkeypatch):
    def refuse(source, destination):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(BadInputError, match="No space left on device"):
        write_output(tmp_path / "report.json", "{}")
    assert list(tmp_path.iterdir()) == []


def test_a_successful_write_replaces_the_file_whole(tmp_path):
    target = tmp_path / "report.json"
    target.write_text("old")
    write_output(target, "new")
    assert target.read_text() == "new"
    assert list(tmp_path.iterdir()) == [target]


# ---------------------------------------------------------------------------------- typer's usage errors

USAGE_ERRORS = {
    "not an integer": ["arith", "-i", "abc", "-k", "3"],
    "missing option": ["arith", "-i", "56"],
    "missing argument": ["summary"],
    "unknown option": ["summary", "resnet18", "--no-such-option"],
    "unknown choice": ["summary", "resnet18", "--format", "xml"],
    "unknown command": ["no-such-command"],
    "negative number as an option": ["arith", "-1"],
}


@needs_one_line_usage_errors
@pytest.mark.parametrize("case", USAGE_ERRORS)
def test_a_usage_error_is_one_line_naming_the_help(case):
    line = check_failure(runner.invoke(app, USAGE_ERRORS[case]))
    assert "--help" in line


def test_no_arguments_still_prints_the_help():
    result = runner.invoke(app, [])
    assert "Usage" in result.stdout + result.stderr
    assert "summary" in result.stdout + result.stderr


# ------------------------------------------------------------------------------- in a real terminal process


def run_module(*args: str, **environment: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "resnet_inspect", *args], capture_output=True, text=True, cwd=REPOSITORY,
        env={**os.environ, **environment}, timeout=120,
    )


@pytest.mark.parametrize("args", [
    pytest.param([f"{ZOO}:exploding", "-i", "32"], id="forward raises"),
    pytest.param(["resnet18", "--in-channels", "0"], id="zero channels"),
])
def test_no_traceback_or_warning_reaches_the_terminal(args, tmp_path):
    target = tmp_path / "report.json"
    finished = run_module("summary", *args, "-o", str(target))
    assert finished.returncode == 2
    assert finished.stderr.count("\n") == 1 and finished.stderr.startswith("error: "), finished.stderr
    assert finished.stdout == ""
    assert list(tmp_path.iterdir()) == []


@needs_one_line_usage_errors
def test_a_usage_error_is_one_line_in_a_real_process():
    finished = run_module("arith", "-i", "abc", "-k", "3")
    assert finished.returncode == 2
    assert finished.stderr.count("\n") == 1 and finished.stderr.startswith("error: "), finished.stderr


def test_the_debug_variable_shows_the_traceback():
    finished = run_module("summary", f"{ZOO}:raising_factory", RESNET_INSPECT_DEBUG="1")
    assert finished.returncode != 0
    assert "Traceback" in finished.stderr and "factory failed on purpose" in finished.stderr


# ------------------------------------------------------------------------------------------- fast paths

NO_TORCH_SCRIPT = """
import sys
from resnet_inspect.cli.app import app
sys.argv = ["resnet-inspect", *sys.argv[1:]]
try:
    app()
except SystemExit as exit:
    code = exit.code
heavy = sorted(name for name in ("torch", "torchinfo", "fvcore", "numpy") if name in sys.modules)
assert not heavy, f"imported {heavy}"
sys.exit(code)
"""


@pytest.mark.parametrize("args", [["--help"], ["arith", "-i", "56", "-k", "3", "-s", "2", "-p", "1"],
                                  ["arith", "-i", "56", "-k", "3", "-f", "json"], ["summary", "--help"]])
def test_help_and_arith_never_import_torch(args):
    finished = subprocess.run([sys.executable, "-c", NO_TORCH_SCRIPT, *args], capture_output=True, text=True,
                              cwd=REPOSITORY, timeout=60)
    assert finished.returncode == 0, finished.stderr
    assert finished.stdout


@pytest.mark.parametrize("args", [
    pytest.param(["-i", "65536", "-k", "3", "-s", "65536", "--transposed"], id="transposed, huge stride"),
    pytest.param(["-i", "1", "-k", "65536", "--transposed"], id="transposed, huge kernel"),
    pytest.param(["-i", "65536", "-k", "1", "-p", "65536"], id="huge padding"),
    pytest.param(["-i", "65536", "-k", "3", "-s", "65536", "--solve"], id="solve, huge stride"),
])
def test_arith_at_the_largest_numbers_answers_at_once(args):
    finished = subprocess.run([sys.executable, "-m", "resnet_inspect", "arith", *args, "-f", "json"],
                              capture_output=True, text=True, cwd=REPOSITORY, timeout=120)  # rules out a hang only
    assert finished.returncode == 0, finished.stderr
    assert json.loads(finished.stdout)["output"] >= 1


# ------------------------------------------------------------------------------------------- determinism

TIMING_FIELDS = {"median_ms", "iqr_ms", "images_per_s", "runs"}

DETERMINISM_COMMANDS = {
    "list": ["list"],
    "summary": ["summary", "resnet18", "-i", "97x131", "-b", "2"],
    "verify": ["verify", f"{ZOO}:liar_cnn", "-i", "32"],
    "arith": ["arith", "-i", "57", "-k", "4", "-s", "2", "-p", "2", "--solve"],
    "rf": ["rf", "resnet18", "--check", "-i", "64"],
    "compare": ["compare", "resnet18", "resnet20", "-i", "64,32", "--stages"],
    "time": ["time", "resnet20", "-b", "1,2", "--warmup", "0", "--repeat", "1"],
}

DETERMINISM_SCRIPT = """
import json, sys
import typer
from typer.testing import CliRunner
from resnet_inspect.cli.app import app
commands = json.loads(sys.argv[1])
registered = set(typer.main.get_command(app).commands)
runner = CliRunner()
outputs = {name: runner.invoke(app, [*args, "--format", "json"]).stdout
           for name, args in commands.items() if args[0] in registered}
print(json.dumps(outputs))
"""


def without_timing(value):
    if isinstance(value, dict):
        return {key: without_timing(item) for key, item in value.items() if key not in TIMING_FIELDS}
    if isinstance(value, list):
        return [without_timing(item) for item in value]
    return value


@pytest.fixture(scope="module")
def outputs_of_two_processes():
    """Every command's JSON from two processes with different string hashing (set and dict order)."""
    processes = [
        subprocess.Popen([sys.executable, "-c", DETERMINISM_SCRIPT, json.dumps(DETERMINISM_COMMANDS)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPOSITORY,
                         env={**os.environ, "PYTHONHASHSEED": seed})
        for seed in ("1", "2")
    ]
    runs = []
    for process in processes:
        stdout, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr
        runs.append(json.loads(stdout.splitlines()[-1]))
    return runs


@pytest.mark.slow
@pytest.mark.parametrize("command", [name for name in DETERMINISM_COMMANDS if name != "time"])
def test_the_same_command_twice_gives_byte_identical_json(command, outputs_of_two_processes):
    if command not in REGISTERED:
        pytest.skip(f"`{command}` is not registered in the app yet")
    first, second = (run[command] for run in outputs_of_two_processes)
    assert first and first == second


@pytest.mark.slow
def test_time_twice_gives_the_same_json_but_for_the_timings(outputs_of_two_processes):
    first, second = (json.loads(run["time"]) for run in outputs_of_two_processes)
    assert first["results"][0]["median_ms"] > 0
    assert without_timing(first) == without_timing(second)
