"""Output files (`-o`, `--png`): written whole or not at all, and never a damaged device, FIFO or link.

Everything happens in a temporary directory: FIFOs stand in for devices, and a FIFO whose reader has gone
stands in for a device that refuses the write (/dev/full). No test writes to a real device.
"""

from __future__ import annotations

import json
import os
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from typer.testing import CliRunner

from resnet_inspect.cli.app import app
from resnet_inspect.errors import BadInputError
from resnet_inspect.render.files import check_writable, same_file, write_output

runner = CliRunner()
ARITH = ["arith", "-i", "56", "-k", "3", "-f", "json"]


@contextmanager
def umask(mask: int) -> Iterator[None]:
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


def read_fifo(path: Path) -> tuple[threading.Thread, list[bytes]]:
    """A reader on the FIFO in a thread (opening a FIFO for writing waits for one); its data lands in the list."""
    received: list[bytes] = []

    def reader() -> None:
        with open(path, "rb") as handle:
            received.append(handle.read())

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    return thread, received


# ------------------------------------------------------------------------------------------ regular files


@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_a_new_file_gets_the_mode_the_umask_gives(tmp_path, mask, mode):
    target = tmp_path / "report.json"
    with umask(mask):
        write_output(target, "{}")
    assert stat.S_IMODE(target.stat().st_mode) == mode
    assert target.read_text() == "{}"


def test_an_existing_file_keeps_its_mode(tmp_path):
    target = tmp_path / "report.json"
    target.write_text("old")
    target.chmod(0o640)
    with umask(0o077):
        write_output(target, "new")
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert target.read_text() == "new"


def test_a_file_is_replaced_whole_and_no_temporary_is_left(tmp_path):
    target = tmp_path / "report.json"
    target.write_text("old")
    write_output(target, "new")
    assert target.read_text() == "new"
    assert list(tmp_path.iterdir()) == [target]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "report.json"
    target.write_text("old")

    def refuse(source, destination):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(BadInputError, match=f"cannot write {target}: No space left on device"):
        write_output(target, "new")
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]


def test_a_hard_linked_file_is_rewritten_in_place_so_every_link_sees_it(tmp_path):
    target, other_name = tmp_path / "report.json", tmp_path / "same_report.json"
    target.write_text("old")
    os.link(target, other_name)
    inode = target.stat().st_ino
    write_output(target, "new")
    assert other_name.read_text() == "new"
    assert target.stat().st_ino == inode and target.stat().st_nlink == 2


def test_a_symlink_is_followed_and_stays_a_link(tmp_path):
    real = tmp_path / "real.json"
    real.write_text("old")
    real.chmod(0o640)
    link = tmp_path / "link.json"
    link.symlink_to(real)
    write_output(link, "new")
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert real.read_text() == "new"
    assert stat.S_IMODE(real.stat().st_mode) == 0o640


def test_a_dangling_symlink_creates_its_target(tmp_path):
    link = tmp_path / "link.json"
    link.symlink_to(tmp_path / "created.json")
    write_output(link, "new")
    assert link.is_symlink()
    assert (tmp_path / "created.json").read_text() == "new"


def test_bytes_are_written_as_they_are(tmp_path):
    target = tmp_path / "erf.png"
    write_output(target, b"\x89PNG\r\n\x1a\n\x00\xff")
    assert target.read_bytes() == b"\x89PNG\r\n\x1a\n\x00\xff"


# ---------------------------------------------------------------------------------------- FIFOs (devices)


def test_a_fifo_is_written_directly_and_stays_a_fifo(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    thread, received = read_fifo(fifo)
    write_output(fifo, "report\n")
    thread.join(timeout=120)
    assert received == [b"report\n"]
    assert stat.S_ISFIFO(fifo.stat().st_mode)
    assert sorted(tmp_path.iterdir()) == [fifo]


def test_a_symlink_to_a_fifo_writes_the_fifo(tmp_path):
    fifo, link = tmp_path / "pipe", tmp_path / "link"
    os.mkfifo(fifo)
    link.symlink_to(fifo)
    thread, received = read_fifo(fifo)
    write_output(link, "report\n")
    thread.join(timeout=120)
    assert received == [b"report\n"]
    assert link.is_symlink() and stat.S_ISFIFO(fifo.stat().st_mode)


def test_a_write_the_fifo_refuses_is_an_error_not_a_success(tmp_path):
    """Like /dev/full: the reader goes away, the write fails, and the command must say so."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)

    def reader_that_leaves() -> None:
        with open(fifo, "rb"):
            pass

    thread = threading.Thread(target=reader_that_leaves, daemon=True)
    thread.start()
    with pytest.raises(BadInputError, match=f"cannot write {fifo}: Broken pipe"):
        write_output(fifo, b"x" * (4 << 20))  # more than a pipe holds: the write waits, then meets no reader
    thread.join(timeout=120)
    assert stat.S_ISFIFO(fifo.stat().st_mode)


def test_the_command_line_writes_a_report_into_a_fifo(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    thread, received = read_fifo(fifo)
    result = runner.invoke(app, [*ARITH, "-o", str(fifo)])
    thread.join(timeout=120)
    assert result.exit_code == 0, result.stderr
    assert json.loads(received[0])["output"] == 54
    assert stat.S_ISFIFO(fifo.stat().st_mode)


# -------------------------------------------------------------------------------------- checks up front


def test_a_fifo_or_a_link_to_a_writable_file_passes_the_check(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    check_writable(fifo)
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "target.json")
    check_writable(link)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["link", "pipe"]  # the probe left nothing


def test_a_socket_is_refused(tmp_path):
    import socket

    path = tmp_path / "socket"
    server = socket.socket(socket.AF_UNIX)
    try:
        server.bind(str(path))
        with pytest.raises(BadInputError, match="not a regular file, character device or FIFO"):
            check_writable(path)
    finally:
        server.close()


def test_the_same_file_under_two_names_is_recognised(tmp_path):
    real = tmp_path / "erf.png"
    link = tmp_path / "link.png"
    link.symlink_to(real)
    assert same_file(real, link)
    assert same_file(Path("erf.png"), Path("./erf.png"))
    assert not same_file(real, tmp_path / "other.png")
    assert not same_file(Path("-"), Path("-"))


def test_png_and_output_on_the_same_file_are_refused_before_any_work(tmp_path):
    target = tmp_path / "out"
    result = runner.invoke(app, ["rf", "resnet20", "--png", str(target), "-o", str(target)])
    assert result.exit_code == 2
    assert result.stderr == f"error: -o and --png both name {target}: one would overwrite the other\n"
    assert list(tmp_path.iterdir()) == []


def test_a_plot_and_a_picture_on_the_same_file_are_refused(tmp_path):
    target = tmp_path / "out.png"
    result = runner.invoke(app, ["rf", "resnet20", "--png", str(target), "--plot", str(tmp_path / "." / "out.png")])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: --png and --plot both name ")
    assert list(tmp_path.iterdir()) == []


def test_png_to_standard_output_is_refused(tmp_path):
    result = runner.invoke(app, ["rf", "resnet20", "--png", "-"])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: --png needs a file name")


@pytest.mark.slow
def test_png_and_report_are_written_through_links_without_replacing_them(tmp_path):
    picture, report = tmp_path / "erf.png", tmp_path / "rf.json"
    picture_link, report_link = tmp_path / "picture", tmp_path / "report"
    picture_link.symlink_to(picture)
    report_link.symlink_to(report)
    result = runner.invoke(app, ["rf", "resnet20", "--erf-samples", "1", "--png", str(picture_link), "-f", "json",
                                 "-o", str(report_link)])
    assert result.exit_code == 0, result.stderr
    assert picture_link.is_symlink() and report_link.is_symlink()
    assert picture.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert json.loads(report.read_text())["erf"]["png"] == str(picture_link)


def test_dev_stdout_redirected_to_a_file_writes_that_file_instead_of_replacing_it(tmp_path):
    """`-o /dev/stdout > out.json`: the shell's open file gets the report; replacing it would lose it."""
    import subprocess
    import sys

    repository = Path(__file__).resolve().parent.parent
    target = tmp_path / "out.json"
    target.write_text("")
    inode = target.stat().st_ino
    with open(target, "w") as redirected:
        finished = subprocess.run([sys.executable, "-m", "resnet_inspect", *ARITH, "-o", "/dev/stdout"],
                                  stdout=redirected, stderr=subprocess.PIPE, text=True, cwd=repository,
                                  env={**os.environ, "PYTHONPATH": str(repository)}, timeout=60)
    assert finished.returncode == 0, finished.stderr
    assert target.stat().st_ino == inode
    assert json.loads(target.read_text())["output"] == 54
    assert sorted(tmp_path.iterdir()) == [target]
