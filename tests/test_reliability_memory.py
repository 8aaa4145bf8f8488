"""The memory guard: a run that cannot fit is refused at once, before it allocates, naming both figures.

The refusals are asked of a real process for far more than any machine has; its own peak RSS (VmHWM, which
it records as it exits) shows that nothing was allocated. The memory figures are read from a fake /proc and cgroup
tree in a temporary directory.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from resnet_inspect.analysis import memory
from resnet_inspect.analysis.memory import (
    MemoryGuardError,
    cgroup_available_bytes,
    ensure_fits,
    gradient_bytes,
    inference_bytes,
    meminfo_available_bytes,
    replay_bytes,
)
from resnet_inspect.analysis.timing import time_model
from resnet_inspect.cli.app import app
from resnet_inspect.cli.common import MAX_ERF_SAMPLES, MAX_REPEAT, MAX_WARMUP
from resnet_inspect.models import get_model
from resnet_inspect.pipeline.build import capture_model

REPOSITORY = Path(__file__).resolve().parent.parent
runner = CliRunner()
GUARD_LINE = re.compile(r"^error: .+ needs about [\d.]+ GiB but only [\d.]+ GiB is available(?: on \S+)?: .+$")
SMALL_RSS_KIB = 1024 * 1024  # 1 GiB: torch's import and the meta capture, never the run itself
HANG_SECONDS = 300

# Each refuses because the estimate is far beyond any machine's memory; the option named lowers it. The first
# ones run in a child process whose peak RSS is measured; the others share their guard and run in-process.
TOO_BIG = {
    "ERF at 65536": (["rf", "resnet20", "-i", "65536", "--erf"], "--input-size"),
    "rf --check": (["rf", "resnet152", "-i", "65536", "--check"], "--check"),
    "time at batch 1048576": (["time", "resnet50", "-b", "1048576", "--warmup", "0", "--repeat", "1"],
                              "--batch-size"),
    "summary --fvcore": (["summary", "resnet50", "-i", "65536", "--fvcore"], "--fvcore"),
}
ALSO_TOO_BIG = {
    "ERF with a picture": (["rf", "resnet20", "-i", "65536", "--png", "{tmp}/erf.png"], "--input-size"),
    "time at 65536": (["time", "resnet20", "-i", "65536", "--warmup", "0", "--repeat", "1"], "--input-size"),
    "summary --time": (["summary", "resnet50", "-b", "1048576", "--time"], "--batch-size"),
    "compare --time": (["compare", "resnet18", "-b", "1048576", "--time"], "--batch-size"),
}


@pytest.fixture(scope="module")
def startup_seconds() -> float:
    """A bare `import torch` in a child process, measured in the same run: the part of a refusal's time that
    any command pays before it starts (seconds on a loaded machine)."""
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", "import torch"], check=True)
    return time.monotonic() - started


# The child records its own peak RSS (VmHWM) as it exits. The rusage of a child is no measure here: Linux
# carries the forked copy's high-water mark across exec, so a child of a large pytest worker would report the
# worker's size.
MEASURED_CHILD = """
import atexit, runpy, sys
peak_file = sys.argv[1]
def record_peak():
    with open("/proc/self/status") as status, open(peak_file, "w") as peak:
        peak.write(next(line.split()[1] for line in status if line.startswith("VmHWM:")))
atexit.register(record_peak)
sys.argv = ["resnet-inspect", *sys.argv[2:]]
runpy.run_module("resnet_inspect", run_name="__main__")
"""


def run_measured(args: list[str], tmp_path: Path) -> tuple[int, str, float, int]:
    """Run the CLI in a child process: (exit code, stderr, wall seconds, its own peak RSS in KiB)."""
    measurements = tmp_path.parent / f"{tmp_path.name}-measurements"
    measurements.mkdir()
    stderr_path, peak_path = measurements / "stderr.txt", measurements / "peak_kib.txt"
    started = time.monotonic()
    with open(stderr_path, "w") as stderr, open(os.devnull, "w") as stdout:
        child = subprocess.Popen([sys.executable, "-c", MEASURED_CHILD, str(peak_path), *args], stdout=stdout,
                                 stderr=stderr, cwd=REPOSITORY, env={**os.environ, "PYTHONPATH": str(REPOSITORY)})
        _, status, _usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)  # reaped here; keeps Popen from waiting again
    return child.returncode, stderr_path.read_text(), time.monotonic() - started, int(peak_path.read_text())


@pytest.mark.slow
@pytest.mark.parametrize("case", TOO_BIG)
def test_a_run_that_cannot_fit_is_refused_at_once_without_allocating(case, tmp_path, startup_seconds):
    args, option = TOO_BIG[case]
    args = [arg.format(tmp=tmp_path) for arg in args]
    code, stderr, seconds, peak_kib = run_measured(args, tmp_path)
    assert code == 2
    assert stderr.count("\n") == 1 and GUARD_LINE.match(stderr.strip()), stderr
    assert option in stderr
    # "At once" is the peak RSS below (nothing allocated) and benchmarks/bench_refusal.py (its speed, as a ratio
    # to importing torch). A time limit here only rules out a hang: a busy machine, or one that compiles no
    # bytecode, can take many seconds to import torch.
    assert seconds - startup_seconds < HANG_SECONDS, f"took {seconds:.0f} s (torch's import: {startup_seconds:.0f} s)"
    assert peak_kib < SMALL_RSS_KIB, f"peak RSS {peak_kib / 1024:.0f} MiB"
    assert list(tmp_path.iterdir()) == []  # no picture, no temporary


@pytest.mark.parametrize("case", ALSO_TOO_BIG)
def test_every_path_that_allocates_is_guarded(case, tmp_path):
    args, option = ALSO_TOO_BIG[case]
    target = tmp_path / "report.json"
    result = runner.invoke(app, [*(arg.format(tmp=tmp_path) for arg in args), "-o", str(target)])
    assert result.exit_code == 2
    assert GUARD_LINE.match(result.stderr.strip()) and result.stderr.count("\n") == 1, result.stderr
    assert option in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_the_refusal_names_the_estimate_and_the_memory_available(monkeypatch):
    monkeypatch.setattr(memory, "available_memory_bytes", lambda device="cpu": 3 * 1024**3)
    with pytest.raises(MemoryGuardError) as refused:
        ensure_fits(47 * 1024**3, "the effective receptive field at 4096x4096", "lower --input-size")
    assert str(refused.value) == ("the effective receptive field at 4096x4096 needs about 47.0 GiB but only "
                                  "3.0 GiB is available: lower --input-size")
    ensure_fits(2 * 1024**3, "a run that fits", "nothing")  # no error


def test_the_api_is_guarded_too(monkeypatch):
    """time_model refuses before it materialises the weights or makes the input."""
    monkeypatch.setattr(memory, "available_memory_bytes", lambda device="cpu": 1024**2)
    with torch.device("meta"):
        model = get_model("resnet50")
    with pytest.raises(MemoryGuardError, match="timing at batch size 8 and input 3x224x224 needs about"):
        time_model(model, (8, 3, 224, 224), warmup=0, repeat=1)


# ------------------------------------------------------------------------------------------------ estimates


def test_the_inference_estimate_grows_with_the_batch_and_shrinks_with_the_dtype():
    captured = capture_model(get_model("resnet50"), 224)
    one, eight = inference_bytes(captured, 1), inference_bytes(captured, 8)
    assert one > 2 * captured.param_bytes  # ResNet-50: 97.5 MiB of weights, their kernels' copy, live activations
    assert eight - one == 7 * (one - 2 * captured.param_bytes - captured.buffer_bytes)
    assert inference_bytes(captured, 8, element_bytes=2) < eight


@pytest.mark.slow
def test_the_inference_estimate_covers_a_real_pass():
    """The estimate for `time` is not below the memory a real batch-16 pass takes (the child's peak RSS less
    that of a process that built the model and ran one small pass, so that the kernels' one-time set-up is in
    both)."""
    captured = capture_model(get_model("resnet50"), 224)
    script = ("import sys, torch; from resnet_inspect.models import get_model; model = get_model('resnet50').eval()\n"
              "with torch.inference_mode():\n"
              "    model(torch.randn(1, 3, 32, 32))\n"
              "    model(torch.randn(16, 3, 224, 224)) if sys.argv[1] == 'run' else None\n"
              "print(next(line.split()[1] for line in open('/proc/self/status') if line.startswith('VmHWM:')))")
    peaks = {}
    for mode in ("build", "run"):
        finished = subprocess.run([sys.executable, "-c", script, mode], capture_output=True, text=True, check=True,
                                  cwd=REPOSITORY, env={**os.environ, "PYTHONPATH": str(REPOSITORY)}, timeout=300)
        peaks[mode] = int(finished.stdout.split()[-1]) * 1024  # VmHWM: this process's own peak, in KiB
    used_by_the_pass = peaks["run"] - peaks["build"] + captured.param_bytes  # the weights were there in both
    assert inference_bytes(captured, 16) >= used_by_the_pass


def test_the_gradient_estimate_keeps_every_activation():
    captured = capture_model(get_model("resnet20"), 32)
    from resnet_inspect.analysis.counting import count

    counts = count(captured)
    assert gradient_bytes(captured) >= captured.param_bytes + counts.activation_bytes


def test_the_gradient_estimate_covers_a_real_backward_pass():
    """The ERF's estimate is not below what autograd really keeps (measured with saved-tensor hooks)."""
    model = get_model("resnet20").eval()
    image = torch.randn(1, 3, 64, 64, requires_grad=True)
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(image).sum().backward()
    kept = sum(saved.values())
    assert gradient_bytes(capture_model(get_model("resnet20"), 64)) >= kept


def test_the_check_estimate_scales_with_the_replay_size():
    captured = capture_model(get_model("resnet18"), 64)
    assert replay_bytes(captured, (128, 128)) == pytest.approx(4 * replay_bytes(captured, (64, 64)), rel=1e-6)


# ---------------------------------------------------------------------------------------- available memory


def test_mem_available_is_read_from_meminfo(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       65536000 kB\nMemFree:         1000 kB\nMemAvailable:   2048000 kB\n")
    assert meminfo_available_bytes(meminfo) == 2048000 * 1024
    meminfo.write_text("MemTotal: 1 kB\n")
    assert meminfo_available_bytes(meminfo) is None
    assert meminfo_available_bytes(tmp_path / "missing") is None


def test_a_cgroup_v2_limit_counts_its_use_less_reclaimable_cache(tmp_path):
    (tmp_path / "cgroup").write_text("0::/jobs/job1\n")
    job = tmp_path / "fs" / "jobs" / "job1"
    job.mkdir(parents=True)
    (job / "memory.max").write_text("8589934592\n")  # 8 GiB
    (job / "memory.current").write_text("3221225472\n")  # 3 GiB in use, 1 GiB of it dropable cache
    (job / "memory.stat").write_text("anon 2147483648\ninactive_file 1073741824\n")
    (tmp_path / "fs" / "jobs" / "memory.max").write_text("max\n")
    assert cgroup_available_bytes(tmp_path / "cgroup", tmp_path / "fs") == 6 * 1024**3


def test_the_tightest_enclosing_cgroup_wins(tmp_path):
    (tmp_path / "cgroup").write_text("0::/outer/inner\n")
    inner = tmp_path / "fs" / "outer" / "inner"
    inner.mkdir(parents=True)
    (inner / "memory.max").write_text("max\n")
    (inner.parent / "memory.max").write_text(f"{2 * 1024**3}\n")
    (inner.parent / "memory.current").write_text(f"{1024**3}\n")
    assert cgroup_available_bytes(tmp_path / "cgroup", tmp_path / "fs") == 1024**3


def test_a_cgroup_v1_memory_controller_is_read(tmp_path):
    (tmp_path / "cgroup").write_text("5:cpu:/\n4:memory:/box\n0::/\n")
    box = tmp_path / "fs" / "memory" / "box"
    box.mkdir(parents=True)
    (box / "memory.limit_in_bytes").write_text(f"{4 * 1024**3}\n")
    (box / "memory.usage_in_bytes").write_text(f"{1024**3}\n")
    assert cgroup_available_bytes(tmp_path / "cgroup", tmp_path / "fs") == 3 * 1024**3


def test_no_cgroup_limit_means_no_cgroup_figure(tmp_path):
    (tmp_path / "cgroup").write_text("0::/\n")
    (tmp_path / "fs").mkdir()
    (tmp_path / "fs" / "memory.max").write_text("max\n")
    assert cgroup_available_bytes(tmp_path / "cgroup", tmp_path / "fs") is None


# ------------------------------------------------------------------------------------ limits on counts


LIMITS = {
    "--warmup": (["time", "resnet20", "--warmup", "99999999999999999999"], f"the maximum {MAX_WARMUP}"),
    "--repeat": (["time", "resnet20", "--repeat", str(MAX_REPEAT + 1)], f"the maximum {MAX_REPEAT}"),
    "compare --warmup": (["compare", "resnet20", "--time", "--warmup", str(MAX_WARMUP + 1)],
                         f"the maximum {MAX_WARMUP}"),
    "--erf-samples": (["rf", "resnet20", "--erf-samples", str(MAX_ERF_SAMPLES + 1)], f"the maximum {MAX_ERF_SAMPLES}"),
}


@pytest.mark.parametrize("case", LIMITS)
def test_an_unbounded_count_is_refused_at_once(case, tmp_path):
    args, limit = LIMITS[case]
    target = tmp_path / "report.json"
    started = time.monotonic()
    result = runner.invoke(app, [*args, "-o", str(target)])
    assert time.monotonic() - started < 5
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and limit in result.stderr
    assert not target.exists()
