"""Exit codes say what happened: no false pass, a closed pipe is not a mismatch, the report stays clean.

Each case asserts the exit code, the one line on stderr, and what reached stdout.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from resnet_inspect.cli.app import app
from resnet_inspect.cli.common import EXIT_BROKEN_PIPE, debug_enabled

REPOSITORY = Path(__file__).resolve().parent.parent
ZOO = "tests/fixtures/cnn_zoo.py"
runner = CliRunner()


def one_error_line(result) -> str:
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def run_module(*args: str, stdin=None, **kwargs) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "PYTHONPATH": str(REPOSITORY), **kwargs.pop("env", {})}
    return subprocess.run([sys.executable, "-m", "resnet_inspect", *args], capture_output=True, text=True,
                          cwd=kwargs.pop("cwd", REPOSITORY), env=environment, timeout=120, **kwargs)


@pytest.fixture
def model_file(tmp_path: Path):
    """Write a model file into a temporary directory; returns its path."""

    def write(source: str, name: str = "model.py") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(source))
        return path

    return write


# ------------------------------------------------------------------------------------ exits from user code

EXITING = {
    "a factory named sys:exit": "sys:exit",
    "a file that exits on import": "{dir}/exits_on_import.py:model",
    "a factory that exits": "{dir}/exits_in_factory.py:model",
    "a forward that exits": "{dir}/exits_in_forward.py:model",
}


@pytest.fixture
def exiting_models(model_file):
    model_file("import sys\nsys.exit(0)\n", "exits_on_import.py")
    model_file("import sys\ndef model():\n    sys.exit(0)\n", "exits_in_factory.py")
    model_file("""
        import sys
        from torch import nn

        class Quitter(nn.Conv2d):
            def forward(self, x):
                raise SystemExit(0)

        def model():
            return Quitter(3, 4, 3)
        """, "exits_in_forward.py")


@pytest.mark.parametrize("case", EXITING)
@pytest.mark.parametrize("command", ["verify", "summary", "rf"])
def test_an_exit_from_the_models_code_is_a_failure_not_a_pass(command, case, exiting_models, tmp_path):
    spec = EXITING[case].format(dir=tmp_path)
    result = runner.invoke(app, [command, spec, "-i", "16"])
    assert result.exit_code == 2
    line = one_error_line(result)
    assert "called sys.exit(" in line
    assert result.stdout == ""


def test_an_exit_from_the_models_code_fails_in_a_real_process(exiting_models, tmp_path):
    finished = run_module("verify", f"{tmp_path}/exits_in_factory.py:model", "-i", "16")
    assert finished.returncode == 2
    assert finished.stderr == f"error: {tmp_path}/exits_in_factory.py:model called sys.exit(0): the model's code " \
                              "must not exit the process\n"
    assert finished.stdout == ""


# --------------------------------------------------------------------------------------- nothing to check


def test_verify_with_no_layer_to_check_says_so(model_file):
    path = model_file("from torch import nn\ndef model():\n    return nn.Sequential(nn.Flatten(), nn.Linear(48, 2))\n")
    result = runner.invoke(app, ["verify", f"{path}:model", "-i", "4"])
    assert result.exit_code == 0
    assert "0 checked" in result.stdout
    assert "nothing to check: the model has no convolution or pooling layer" in result.stdout
    assert "all layers agree" not in result.stdout
    data = json.loads(runner.invoke(app, ["verify", f"{path}:model", "-i", "4", "-f", "json"]).stdout)
    assert data["checked"] == 0 and data["failed"] == 0


# ------------------------------------------------------------------------------------------ pipes, stdout


@pytest.mark.parametrize("args", [["verify", "resnet50"], ["verify", f"{ZOO}:liar_cnn", "-i", "32"],
                                  ["list", "-f", "json"]])
def test_a_reader_that_closes_the_pipe_ends_the_command_quietly_with_141(args):
    process = subprocess.Popen([sys.executable, "-m", "resnet_inspect", *args], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, cwd=REPOSITORY,
                               env={**os.environ, "PYTHONPATH": str(REPOSITORY)})
    process.stdout.close()  # like `| head -0`: every write meets a closed pipe
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=120) == EXIT_BROKEN_PIPE == 141  # not 1, which means "a layer disagrees"
    assert stderr == ""


def test_a_pipe_closed_by_head_gives_141_under_pipefail():
    finished = subprocess.run(
        ["bash", "-c", f"set -o pipefail; '{sys.executable}' -m resnet_inspect verify resnet50 | head -0"],
        capture_output=True, text=True, cwd=REPOSITORY, env={**os.environ, "PYTHONPATH": str(REPOSITORY)},
        timeout=120,
    )
    assert finished.returncode == 141
    assert finished.stderr == ""


def test_a_closed_standard_output_is_an_error_not_lost_output(tmp_path):
    finished = subprocess.run(
        ["bash", "-c", f"'{sys.executable}' -m resnet_inspect list >&-"], capture_output=True, text=True,
        cwd=REPOSITORY, env={**os.environ, "PYTHONPATH": str(REPOSITORY)}, timeout=120,
    )
    assert finished.returncode == 2
    assert finished.stderr == "error: cannot write the report: standard output is closed (use -o FILE)\n"


def test_a_closed_standard_output_does_not_matter_with_an_output_file(tmp_path):
    target = tmp_path / "models.json"
    finished = subprocess.run(
        ["bash", "-c", f"'{sys.executable}' -m resnet_inspect list -f json -o '{target}' >&-"],
        capture_output=True, text=True, cwd=REPOSITORY, env={**os.environ, "PYTHONPATH": str(REPOSITORY)},
        timeout=120,
    )
    assert finished.returncode == 0, finished.stderr
    assert "resnet50" in {model["name"] for model in json.loads(target.read_text())}


def test_dash_as_output_means_standard_output():
    result = runner.invoke(app, ["arith", "-i", "56", "-k", "3", "-f", "json", "-o", "-"])
    assert result.exit_code == 0
    assert json.loads(result.stdout)["output"] == 54
    assert not Path("-").exists()


# ----------------------------------------------------------------------------------------- debug variable


@pytest.mark.parametrize(("value", "enabled"), [("1", True), ("true", True), ("YES", True), ("on", True),
                                                ("0", False), ("false", False), ("no", False), ("", False),
                                                ("off", False)])
def test_only_true_values_turn_debugging_on(value, enabled, monkeypatch):
    monkeypatch.setenv("RESNET_INSPECT_DEBUG", value)
    assert debug_enabled() is enabled


@pytest.mark.parametrize("value", ["0", "false"])
def test_debugging_off_keeps_bad_input_one_line_and_exit_2(value):
    finished = run_module("summary", "resnet19", env={"RESNET_INSPECT_DEBUG": value})
    assert finished.returncode == 2
    assert finished.stderr.startswith("error: unknown model 'resnet19'") and finished.stderr.count("\n") == 1


def test_debugging_on_adds_the_traceback_but_bad_input_stays_exit_2():
    finished = run_module("summary", "resnet19", env={"RESNET_INSPECT_DEBUG": "1"})
    assert finished.returncode == 2
    assert "Traceback" in finished.stderr
    assert finished.stderr.splitlines()[-1].startswith("error: unknown model 'resnet19'")


# ------------------------------------------------------------------------------------- user code's prints


@pytest.mark.parametrize("command", ["summary", "verify", "rf", "compare", "time"])
def test_what_the_models_code_prints_goes_to_stderr_and_json_stays_clean(command, model_file):
    path = model_file("""
        from torch import nn
        print("printed at import")

        class Chatty(nn.Conv2d):
            def forward(self, x):
                print("printed in forward")
                return super().forward(x)

        def model():
            print("printed in the factory")
            return nn.Sequential(Chatty(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        """)
    extra = ["--warmup", "0", "--repeat", "1"] if command == "time" else []
    result = runner.invoke(app, [command, f"{path}:model", "-i", "16", "-f", "json", *extra])
    assert result.exit_code == 0, result.stderr
    json.loads(result.stdout)  # nothing but the report
    for message in ("printed at import", "printed in the factory"):
        assert message in result.stderr
    assert "printed" not in result.stdout
