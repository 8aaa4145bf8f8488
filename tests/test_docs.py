"""Every code block of README.md and docs/*.md runs, and shows what it really prints.

The convention the docs follow:

- ```python blocks run top to bottom, one namespace per file (one process), from the repository root.
- ```console blocks: each line starting with ``$ `` is a shell command run from the repository root. It must exit
  0, or N when the block directly follows a line ``<!-- exit: N -->``. Each output line shown after a command must
  appear among the lines it really prints (stdout and stderr, white space around each line stripped); a line
  ``...`` stands for lines left out.
- ```text and ```json blocks are shown, not run (schemas, illustrations).

``resnet-inspect`` in a command runs this checkout, not whatever version is installed: a plain
``resnet-inspect ...`` command runs in this process through typer's CliRunner, and a command that needs the shell
runs in bash with a ``resnet-inspect`` on PATH that is ``python -m resnet_inspect`` with the repository on
PYTHONPATH.

The set-up commands start with ``pip install``. The test does not install anything (the tests run offline, and
the packages are those the suite already runs with): it checks that the pip part pins ``torch==2.13.0`` (the
version the tests run with) and installs the project or its ``test`` extra, which must exist in pyproject.toml,
then runs what follows ``&&`` with the installed packages. The test command itself, ``python -m pytest -q -n 2``,
would run this test again inside itself, so it is checked instead: it must be the command .ci/run runs, and pytest
must accept those options and collect this file with them (``-n 2`` only parses with pytest-xdist, which the test
extra installs; the collection adds ``-n 0`` so that no workers start).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TEST_COMMAND = "python -m pytest -q -n 2"
TIMEOUT_S = 300
FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>```+)(?P<info>[^`\n]*)$")
EXIT_MARK = re.compile(r"^<!--\s*exit:\s*(\d+)\s*-->$")


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    language: str
    text: str
    exit_code: int = 0

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def blocks(path: Path) -> list[Block]:
    """The fenced code blocks of a Markdown file, with the exit code a preceding comment declares."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found, position = [], 0
    while position < len(lines):
        opening = FENCE.match(lines[position])
        if not opening:
            position += 1
            continue
        previous = lines[position - 1].strip() if position else ""
        mark = EXIT_MARK.match(previous)
        end = position + 1
        while end < len(lines) and not lines[end].strip().startswith(opening["fence"]):
            end += 1
        body = "\n".join(line[len(opening["indent"]):] for line in lines[position + 1:end])
        found.append(Block(path, position + 1, opening["info"].strip().split(" ")[0], body,
                           int(mark.group(1)) if mark else 0))
        position = end + 1
    return found


def environment(tmp_path: Path) -> dict[str, str]:
    """PATH with a ``resnet-inspect`` that runs this checkout; PYTHONPATH with the repository first."""
    shim = tmp_path / "bin" / "resnet-inspect"
    shim.parent.mkdir(exist_ok=True)
    shim.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m resnet_inspect "$@"\n')
    shim.chmod(0o755)
    # ``python`` runs this interpreter, in its virtual environment: a script, not a symbolic link (a venv's own
    # ``python`` is a link to the base interpreter, and a link to that link would start outside the venv)
    python = tmp_path / "bin" / "python"
    python.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
    python.chmod(0o755)
    path = os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH"))))
    return {**os.environ, "PATH": f"{shim.parent}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": path,
            "OMP_NUM_THREADS": "1", "COLUMNS": "240"}


def commands(block: Block) -> list[tuple[str, list[str]]]:
    """(command, output lines shown after it) for each ``$ `` line of a console block."""
    parsed: list[tuple[str, list[str]]] = []
    for line in block.text.splitlines():
        if line.startswith("$ "):
            parsed.append((line[2:], []))
        elif parsed:
            parsed[-1][1].append(line)
    return parsed


def pyproject_extras() -> set[str]:
    return set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])


def check_pip_part(command: str) -> str:
    """Check ``pip install torch==2.13.0 -e ...`` and return what follows ``&&``."""
    pip_part, _, rest = command.partition("&&")
    words = shlex.split(pip_part)
    assert words[:2] == ["pip", "install"], command
    assert "torch==2.13.0" in words, f"the set-up command must pin torch==2.13.0: {command}"
    editable = words[words.index("-e") + 1]
    extras = re.fullmatch(r"\.(?:\[(?P<extras>[\w,]+)\])?", editable)
    assert extras, f"the set-up command must install this project with -e: {command}"
    assert set(filter(None, (extras["extras"] or "").split(","))) <= pyproject_extras()
    return rest.strip()


SHELL_SYNTAX = re.compile(r"[;&|<>$`*?()]")


def run(command: str, env: dict[str, str]) -> tuple[int, str]:
    """Exit code and output (stdout then stderr) of one command.

    A plain ``resnet-inspect ...`` command runs in this process through typer's CliRunner (the same app, without
    starting Python and importing torch again); anything else, or anything using the shell, runs in bash.
    """
    if command.startswith("resnet-inspect ") and not SHELL_SYNTAX.search(command):
        from typer.testing import CliRunner

        from resnet_inspect.cli.app import app

        previous = Path.cwd()
        os.chdir(ROOT)
        try:
            result = CliRunner().invoke(app, shlex.split(command)[1:])
        finally:
            os.chdir(previous)
        return result.exit_code, result.stdout + result.stderr
    completed = subprocess.run(["bash", "-c", command], cwd=ROOT, env=env, capture_output=True, text=True,
                               timeout=TIMEOUT_S, check=False)
    return completed.returncode, completed.stdout + completed.stderr


def check_console_block(block: Block, env: dict[str, str]) -> None:
    for command, shown in commands(block):
        if command.startswith("pip install"):
            command = check_pip_part(command)
        if command == TEST_COMMAND:
            # -n 2 must parse (xdist is installed); -n 0 starts no workers, and collecting this file is enough
            command = f"{TEST_COMMAND} --collect-only -n 0 {Path(__file__).relative_to(ROOT)}"
        exit_code, printed = run(command, env)
        assert exit_code == block.exit_code, (
            f"{block.where}: `{command}` exited {exit_code}, expected {block.exit_code}\n{printed[-3000:]}")
        real_lines = {line.strip() for line in printed.splitlines()}
        for line in shown:
            if line.strip() in ("", "..."):
                continue
            assert line.strip() in real_lines, f"{block.where}: `{command}` did not print:\n{line}\n---\n{printed}"


CONSOLE_BLOCKS = [block for path in DOCUMENTS for block in blocks(path) if block.language == "console"]


@pytest.mark.slow
@pytest.mark.parametrize("block", CONSOLE_BLOCKS, ids=lambda block: block.where)
def test_every_console_block_runs_and_prints_what_it_shows(block: Block, tmp_path: Path):
    check_console_block(block, environment(tmp_path))


WITH_PYTHON = [path for path in DOCUMENTS if any(block.language == "python" for block in blocks(path))]


@pytest.mark.slow
@pytest.mark.parametrize("path", WITH_PYTHON, ids=lambda path: str(path.relative_to(ROOT)))
def test_the_python_blocks_of_each_document_run_top_to_bottom(path: Path, tmp_path: Path):
    python = [block for block in blocks(path) if block.language == "python"]
    script = "\n\n".join(f"# --- {block.where}\n{block.text}" for block in python)
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=environment(tmp_path),
                            capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    assert result.returncode == 0, f"{path.name}:\n{result.stderr[-3000:]}"


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda path: str(path.relative_to(ROOT)))
def test_every_code_block_is_fenced_with_a_language_the_convention_knows(path: Path):
    for block in blocks(path):
        assert block.language in ("python", "console", "text", "json"), f"{block.where}: ```{block.language}"


def readme_test_command() -> str:
    """The README's whole test line: the install and the test run, as a newcomer types it."""
    shown = [command for block in blocks(ROOT / "README.md") if block.language == "console"
             for command, _ in commands(block)]
    return next(command for command in shown if command.endswith(f"&& {TEST_COMMAND}"))


def test_ci_runs_exactly_the_readme_test_command_and_installs_no_python_package_beside_it():
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert readme_test_command() in ci_lines, ".ci/run must run the README's test line, word for word"
    for line in ci_lines:
        if line.startswith("#") or line == readme_test_command():
            continue
        assert "pip install" not in line, f".ci/run installs a Python package the README does not: {line}"


def test_ci_runs_the_readmes_development_checks_word_for_word():
    """The README's development block (ruff with the complexity bound, mypy on the package) is what CI runs after
    the tests; CI, not this suite, runs them (mypy alone takes half a minute)."""
    [checks] = [block for block in blocks(ROOT / "README.md")
                if block.language == "text" and "mypy resnet_inspect" in block.text]
    ci_lines = {line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()}
    shown = [line.strip() for line in checks.text.splitlines() if line.strip()]
    assert shown == ["ruff check .", "mypy resnet_inspect"]
    assert set(shown) <= ci_lines


def test_the_readme_names_every_system_package_that_ci_installs():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for line in (ROOT / ".ci" / "run").read_text().splitlines():
        if "apt-get install" in line:
            for package in line.split("apt-get install", 1)[1].split():
                if not package.startswith("-") and package.isidentifier():
                    assert f"`{package}`" in readme, f"the README does not name the system package {package}"


def test_the_readme_is_short_and_shows_both_set_up_commands():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.encode()) < 8 * 1024
    shown = [command for block in blocks(ROOT / "README.md") if block.language == "console"
             for command, _ in commands(block)]
    assert "pip install torch==2.13.0 -e . && resnet-inspect summary resnet50" in shown
    assert f"pip install torch==2.13.0 -e '.[test]' && {TEST_COMMAND}" in shown


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda path: str(path.relative_to(ROOT)))
def test_the_docs_speak_to_users_anywhere(path: Path):
    text = path.read_text(encoding="utf-8").lower()
    for word in ("sandbox", "local disk", "these machines", "this machine", "our machine"):
        assert word not in text, f"{path.name} mentions {word!r}"


def test_a_console_block_that_shows_wrong_output_fails(tmp_path: Path):
    wrong = Block(ROOT / "README.md", 1, "console", "$ resnet-inspect arith -i 56 -k 3\nformula: o = 55")
    with pytest.raises(AssertionError, match="did not print"):
        check_console_block(wrong, environment(tmp_path))
    exits_one = Block(ROOT / "README.md", 1, "console", "$ resnet-inspect summary resnet5", exit_code=2)
    check_console_block(exits_one, environment(tmp_path))
