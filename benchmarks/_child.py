"""Shared helpers for the benchmark scripts: run a child process and measure it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Child:
    """What one finished child process cost, and what it printed."""

    wall_s: float
    cpu_s: float
    peak_rss_bytes: int
    stdout: str


def run_child(argv: list[str], expected_exit: int = 0) -> Child:
    """Run ``argv`` in a fresh process; raise SystemExit naming the command when it exits otherwise than
    ``expected_exit`` (a refusal's benchmark expects its documented exit code)."""
    with tempfile.TemporaryFile() as output:
        start = time.perf_counter()
        process = subprocess.Popen(argv, stdout=output, stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        output.seek(0)
        text = output.read().decode()
    if process.returncode != expected_exit:
        raise SystemExit(f"{' '.join(argv)} exited with {process.returncode}")
    # ru_maxrss is in KiB on Linux
    return Child(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024, text)


def load_average() -> str:
    """The 1-minute load average from /proc/loadavg, or "?" where there is none."""
    return Path("/proc/loadavg").read_text().split(" ")[0] if Path("/proc/loadavg").exists() else "?"


def resnet_inspect_command(*args: str) -> list[str]:
    """The console script (or ``python -m resnet_inspect``) followed by ``args``."""
    entry = shutil.which("resnet-inspect")
    prefix = [entry] if entry else [sys.executable, "-m", "resnet_inspect"]
    return [*prefix, *args]
