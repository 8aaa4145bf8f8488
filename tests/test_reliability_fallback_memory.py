"""The memory guard of the real-tensor fallback is an upper bound: a model that reads one value early cannot pass
the guard with the little the meta pass saw before the read, then allocate many times the memory available.

The child process is given a fake figure for the memory available (2 GiB) and a hard limit on its data segment
(3 GiB), so that even a guard that let the pass through could never take the machine's memory: the allocation
would fail in the child instead. Its own peak RSS (VmHWM) shows that nothing large was allocated.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parent.parent
GiB = 1024**3
GUARD_LINE = re.compile(r"^error: .+ needs about [\d.]+ GiB but only 2\.0 GiB is available: lower --input-size "
                        r"or --batch-size$")

CHILD = """
import atexit, resource, runpy, sys
peak_file, data_limit, available = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
resource.setrlimit(resource.RLIMIT_DATA, (data_limit, data_limit))
def record_peak():
    with open("/proc/self/status") as status, open(peak_file, "w") as peak:
        peak.write(next(line.split()[1] for line in status if line.startswith("VmHWM:")))
atexit.register(record_peak)
from resnet_inspect.analysis import memory
memory.available_memory_bytes = lambda device="cpu": available
sys.argv = ["resnet-inspect", *sys.argv[4:]]
runpy.run_module("resnet_inspect", run_name="__main__")
"""

READS_EARLY = """
    import torch
    from torch import nn


    class ReadsEarly(nn.Module):
        '''Scales 0-255 images down: one value read before any layer, then a wide convolution.'''

        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 64, 3, padding=1)
            self.body = nn.Sequential(nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1), nn.AdaptiveAvgPool2d(1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.max().item() > 1:
                x = x / 255
            return self.body(self.stem(x))


    def model() -> nn.Module:
        return ReadsEarly()
    """


def run_child(tmp_path: Path, *args: str) -> tuple[int, str, int]:
    """(exit code, stderr, peak RSS in KiB) of the CLI in a child with 2 GiB 'available' and a 3 GiB data limit."""
    peak = tmp_path / "peak_kib.txt"
    finished = subprocess.run([sys.executable, "-c", CHILD, str(peak), str(3 * GiB), str(2 * GiB), *args],
                              capture_output=True, text=True, cwd=REPOSITORY, timeout=600,
                              env={**os.environ, "PYTHONPATH": str(REPOSITORY)})
    return finished.returncode, finished.stderr, int(peak.read_text())


@pytest.fixture
def reads_early(tmp_path) -> str:
    (tmp_path / "reads_early.py").write_text(textwrap.dedent(READS_EARLY))
    return f"{tmp_path}/reads_early.py:model"


@pytest.mark.slow
def test_a_model_that_reads_a_value_early_is_refused_before_the_real_pass_allocates(reads_early, tmp_path):
    # At 4096x4096 the input is 192 MiB, but the stem's output alone is 4 GiB: the pass needs far more than 2 GiB.
    code, stderr, peak_kib = run_child(tmp_path, "summary", reads_early, "-i", "4096", "-f", "json")
    assert code == 2, stderr
    assert stderr.count("\n") == 1 and GUARD_LINE.match(stderr.strip()), stderr
    assert peak_kib < 1024 * 1024, f"peak RSS {peak_kib / 1024:.0f} MiB"  # the 4 GiB were never asked for


@pytest.mark.slow
def test_the_same_model_at_a_size_that_fits_runs_on_real_tensors(reads_early, tmp_path):
    code, stderr, _ = run_child(tmp_path, "summary", reads_early, "-i", "64", "-f", "json")
    assert code == 0, stderr
