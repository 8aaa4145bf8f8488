"""A model instance made when a user's file is imported (``net = Net()`` at module level, spec ``file.py:net``)
allocates nothing either: the file's module-level code runs on the meta device, as a factory does; where that
code reads a value the meta device cannot give, the file is imported again on real tensors, under the memory
guard; `time` and `rf --erf`, which run real tensors, import it on real tensors, guarded. A module-level tensor
that ``forward`` uses works on the meta passes and on the real ones.

The runs that could allocate far more than the machine has run in a child process with a fake figure for the
memory available (2 GiB) and a hard limit on its data segment (``run_child``): a guard that failed could not take
the machine's memory, the allocation would fail in the child instead. Its peak RSS shows nothing large was
allocated.
"""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pytest
import torch
from test_reliability_meta_build import GiB, run_child, wide_head_params
from typer.testing import CliRunner

from resnet_inspect.capture.loader import load_model
from resnet_inspect.capture.tensors import SMALL_TENSOR_BYTES
from resnet_inspect.cli.app import app
from resnet_inspect.errors import FactoryError

runner = CliRunner()

# Each file appends a line to ``<file>.imports`` each time it is imported, so a test can count the imports.
HEADER = """
    import torch
    from torch import nn

    with open(__file__ + ".imports", "a") as log:
        log.write("import\\n")

    # ImageNet's channel means, subtracted in forward: a module-level tensor small enough to stay real on meta
    MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)


    class WideHead(nn.Module):
        '''The reliability tests' WideHead (same parameter formula), reading the module-level MEAN in forward.'''

        def __init__(self, hidden: int, layers: int, num_classes: int = 10) -> None:
            super().__init__()
            self.rates = [rate.item() for rate in torch.linspace(0, 0.1, layers)]
            self.stem = nn.Conv2d(3, 16, 4, stride=4)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.expand = nn.Linear(16, hidden)
            self.body = nn.Sequential(*(nn.Linear(hidden, hidden) for _ in range(layers)))
            self.head = nn.Linear(hidden, num_classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.body(self.expand(self.pool(self.stem(x - MEAN)).flatten(1))))
    """

# 2.5 billion parameters (10 GB in float32) made at import: the child may not grow its data segment past 1.5 GiB
HUGE = HEADER + """

    net = WideHead(50_000, 1)
    """

# The same instance after a statistic of a 4 MiB tensor (too large to stay real on meta): only a real import can
# give the value, and the weights cannot fit in 2 GiB.
HUGE_READING = HEADER + """

    scale = torch.ones(1024, 1024).sum().item()
    net = WideHead(30_000, 1)
    """

SMALL_READING = HEADER + """

    scale = torch.ones(1024, 1024).sum().item()
    net = WideHead(64, 2)
    net.scale = scale
    """

# A module-level table of 2 MiB (larger than what stays real on meta) added to the features in forward.
TABLE = HEADER + """

    TABLE = torch.full((1, 8, 256, 256), 0.5)


    class Tabled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x - MEAN) + TABLE


    net = Tabled()
    """

MISSING_PACKAGE = HEADER + """

    import a_package_that_is_not_installed
    """


def user_file(directory: Path, name: str, code: str) -> Path:
    path = directory / f"{name}.py"
    path.write_text(textwrap.dedent(code))
    return path


def imports(path: Path) -> int:
    """How many times the file has been imported so far."""
    log = Path(f"{path}.imports")
    return len(log.read_text().split()) if log.exists() else 0


def child_line(stderr: str) -> str:
    assert stderr.count("\n") == 1, stderr  # one line, no traceback
    return stderr.strip()


# ------------------------------------------------------------------------------------------------ meta import


def test_an_instance_made_at_import_is_on_the_meta_device(tmp_path):
    path = user_file(tmp_path, "huge", HUGE)
    model, _ = load_model(f"{path}:net")
    assert model.body[0].weight.is_meta and model.expand.weight.is_meta and model.head.weight.is_meta
    assert sum(parameter.numel() for parameter in model.parameters()) == wide_head_params(50_000, 1)
    assert model.rates == [0.0]  # the constructor's small tensor read stayed real
    assert imports(path) == 1


def test_summary_of_a_huge_instance_made_at_import_allocates_nothing(tmp_path):
    path = user_file(tmp_path, "huge", HUGE)
    code, stdout, stderr, peak_kib = run_child(tmp_path, "summary", f"{path}:net", "-f", "json",
                                               data_limit=3 * GiB // 2)
    assert code == 0, stderr
    assert json.loads(stdout)["totals"]["params"] == wide_head_params(50_000, 1)
    assert peak_kib < 1024 * 1024, f"peak RSS {peak_kib / 1024:.0f} MiB"
    assert imports(path) == 1


@pytest.mark.slow
def test_fit_train_of_a_huge_instance_made_at_import_allocates_nothing(tmp_path):
    path = user_file(tmp_path, "huge", HUGE)
    code, stdout, stderr, peak_kib = run_child(tmp_path, "fit", f"{path}:net", "--train", "--memory", "1TiB",
                                               "-i", "64", "-f", "json", data_limit=3 * GiB // 2)
    assert code == 0, stderr
    search = json.loads(stdout)["search"]
    assert search["real_passes"] == 0 and search["passes"] > 0
    assert peak_kib < 1024 * 1024, f"peak RSS {peak_kib / 1024:.0f} MiB"


@pytest.mark.slow
def test_rf_of_a_huge_instance_made_at_import_allocates_nothing(tmp_path):
    path = user_file(tmp_path, "huge", HUGE)
    code, stdout, stderr, peak_kib = run_child(tmp_path, "rf", f"{path}:net", "-i", "64", "-f", "json",
                                               data_limit=3 * GiB // 2)
    assert code == 0, stderr
    stage = json.loads(stdout)["stages"][0]
    assert stage["modules"] == ["stem"]  # a 4x4 kernel at stride 4 on 64 pixels: field 4, stride 4, 16 units
    assert (stage["size"], stage["stride"], stage["output_size"]) == ([4, 4], [4, 4], [16, 16])
    assert peak_kib < 1024 * 1024, f"peak RSS {peak_kib / 1024:.0f} MiB"


# ------------------------------------------------------------------------------------------------ real import


@pytest.mark.slow
def test_time_imports_a_huge_instance_for_real_only_under_the_guard(tmp_path):
    path = user_file(tmp_path, "huge", HUGE)
    code, _, stderr, peak_kib = run_child(tmp_path, "time", f"{path}:net", "--warmup", "0", "--repeat", "1",
                                          data_limit=3 * GiB // 2)
    assert code == 2, stderr
    assert re.fullmatch(
        rf"error: importing {re.escape(str(path))} with real weights needs more than [\d.]+ GiB but only 2\.0 GiB "
        r"is available: the model can be analysed without its weights \(summary, verify, rf without --erf, fit\), "
        r"but not built for real here", child_line(stderr))
    assert peak_kib < 1024 * 1024, f"peak RSS {peak_kib / 1024:.0f} MiB"  # its 10 GB were never asked for
    assert imports(path) == 1  # no meta import first: time needs the real one


@pytest.mark.slow
def test_an_import_that_reads_a_large_value_is_made_for_real_only_under_the_guard(tmp_path):
    path = user_file(tmp_path, "reading", HUGE_READING)
    code, _, stderr, peak_kib = run_child(tmp_path, "summary", f"{path}:net", "-f", "json")
    assert code == 2, stderr
    assert re.fullmatch(
        rf"error: importing {re.escape(str(path))} on real tensors \(on the meta device its module-level code "
        r"raised: .+\) needs more than [\d.]+ GiB but only 2\.0 GiB is available: compute the values the "
        r"module-level code reads from Python numbers, not from tensors, so that it can be imported on the meta "
        r"device", child_line(stderr))
    assert peak_kib < 1024 * 1024, f"peak RSS {peak_kib / 1024:.0f} MiB"
    assert imports(path) == 2  # on meta, then for real until the guard refused


def test_an_instance_whose_constructor_reads_a_value_is_imported_for_real(tmp_path):
    path = user_file(tmp_path, "reading", SMALL_READING)
    model, _ = load_model(f"{path}:net")
    assert model.scale == 1024 * 1024
    assert not any(parameter.is_meta for parameter in model.parameters())
    assert imports(path) == 2  # the meta import raised at .item(); the real one gave the value
    result = runner.invoke(app, ["summary", f"{path}:net", "-i", "32", "-f", "json"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["totals"]["params"] == wide_head_params(64, 2)


def test_time_runs_an_instance_made_at_import_that_fits(tmp_path):
    path = user_file(tmp_path, "small", HEADER + "\n\n    net = WideHead(64, 2)\n")
    model, _ = load_model(f"{path}:net", runs_real=True)
    assert not any(tensor.is_meta for tensor in (*model.parameters(), *model.buffers()))
    result = runner.invoke(app, ["time", f"{path}:net", "-i", "32", "--warmup", "0", "--repeat", "1", "-f", "json"])
    assert result.exit_code == 0, result.stderr
    timed = json.loads(result.stdout)["results"][0]
    assert timed["batch_size"] == 1 and timed["median_ms"] > 0 and timed["runs"] >= 1


# ------------------------------------------------------------------------------------------------ module tensors


def test_a_module_level_tensor_used_in_forward_works_on_summary_and_time(tmp_path):
    """MEAN (small, real on meta) and a 2 MiB TABLE (meta in the meta import) both reach forward."""
    path = user_file(tmp_path, "tabled", TABLE)
    assert torch.full((1, 8, 256, 256), 0.5).nbytes > SMALL_TENSOR_BYTES  # TABLE is made on meta by a meta import
    summary = runner.invoke(app, ["summary", f"{path}:net", "-i", "256", "-f", "json"])
    assert summary.exit_code == 0, summary.stderr
    assert json.loads(summary.stdout)["output_shape"] == [1, 8, 256, 256]
    timed = runner.invoke(app, ["time", f"{path}:net", "-i", "256", "--warmup", "0", "--repeat", "1", "-f", "json"])
    assert timed.exit_code == 0, timed.stderr
    assert imports(path) == 2  # one import for the analysis, one real import for the timed passes


def test_the_real_import_gives_forward_its_real_module_tensors(tmp_path):
    """On real tensors the instance's output is that of the file's own code: MEAN subtracted, TABLE added."""
    path = user_file(tmp_path, "tabled", TABLE)
    model, _ = load_model(f"{path}:net", device=None)
    image = torch.rand(1, 3, 256, 256)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = torch.nn.functional.conv2d(image - mean, model.conv.weight, model.conv.bias, padding=1) + 0.5
        assert torch.equal(model(image), expected)


# ------------------------------------------------------------------------------------------------ imports


def test_a_failure_no_device_causes_is_reported_after_one_import(tmp_path):
    path = user_file(tmp_path, "missing", MISSING_PACKAGE)
    with pytest.raises(FactoryError, match=r"cannot import .*missing\.py: ModuleNotFoundError: No module named "
                                           r"'a_package_that_is_not_installed'$"):
        load_model(f"{path}:net")
    assert imports(path) == 1  # a real import would fail the same way: it is not tried


NEIGHBOUR = """
    import torch

    TABLE = torch.full((1, 8, 256, 256), 0.5)  # 2 MiB: a meta tensor when imported on the meta device
    """

USES_NEIGHBOUR = HEADER + """
    from neighbour import TABLE


    class Tabled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x) + TABLE


    net = Tabled()
    """


def test_a_real_import_after_a_meta_one_imports_the_neighbours_afresh(tmp_path):
    """The file's neighbour, imported on meta with it, is not reused by the real import that `time` makes."""
    user_file(tmp_path, "neighbour", NEIGHBOUR)
    path = user_file(tmp_path, "uses_neighbour", USES_NEIGHBOUR)
    analysed, _ = load_model(f"{path}:net")
    assert analysed.forward.__globals__["TABLE"].is_meta  # the neighbour was imported on meta with the file
    model, _ = load_model(f"{path}:net", runs_real=True)
    image = torch.rand(1, 3, 256, 256)
    with torch.no_grad():
        expected = torch.nn.functional.conv2d(image, model.conv.weight, model.conv.bias, padding=1) + 0.5
        assert torch.equal(model(image), expected)


READS_IN_FORWARD = HEADER + """

    BIG_TABLE = torch.full((1, 8, 256, 256), 0.5)  # 2 MiB: a meta tensor when imported on the meta device


    class ReadsAndAdds(nn.Module):
        '''Scales 0-255 images down (a value read: the pass falls back to real tensors), then adds BIG_TABLE.'''

        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.max().item() > 1:
                x = x / 255
            return self.conv(x) + BIG_TABLE


    net = ReadsAndAdds()
    """


def test_a_pass_on_real_tensors_gives_a_module_tensor_made_on_meta_zeros(tmp_path):
    """A forward that reads a value runs on real tensors (zero weights, zero input); the module-level tensor the
    meta import made on meta has no values either, and zeros stand in for it as for the weights."""
    path = user_file(tmp_path, "reads", READS_IN_FORWARD)
    summary = runner.invoke(app, ["summary", f"{path}:net", "-i", "256", "-f", "json"])
    assert summary.exit_code == 0, summary.stderr
    assert json.loads(summary.stdout)["output_shape"] == [1, 8, 256, 256]
    fit = runner.invoke(app, ["fit", f"{path}:net", "-i", "256", "--memory", "256MiB", "-f", "json"])
    assert fit.exit_code == 0, fit.stderr
    search = json.loads(fit.stdout)["search"]
    assert search["real_passes"] == search["passes"] > 0


SHIFTED = """
import torch
from torch import nn

SHIFT = torch.full((1, 8, 1, 1), 0.5)  # a module-level constant subtracted between two trained layers


class Shifted(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stem(x) - SHIFT)


net = Shifted()
"""


def test_a_module_level_constant_between_trained_layers_keeps_their_backward(tmp_path):
    """On meta, only the real constant stands in as a meta tensor: the trained activation it meets keeps its
    gradient, so the layers before it have their backward (FlopCounterMode on the real model) and gradients."""
    from oracle_torch import flop_counter_backward_macs

    import resnet_inspect

    path = user_file(tmp_path, "shifted", SHIFTED)
    report = resnet_inspect.summary(f"{path}:net", (2, 3, 16, 16), train=True)
    namespace: dict = {}
    exec(SHIFTED, namespace)
    _forward, backward = flop_counter_backward_macs(namespace["Shifted"](), torch.randn(2, 3, 16, 16))
    assert report.total("backward_macs") == backward
    assert report.total("grad_bytes") == sum(p.numel() * 4 for p in namespace["Shifted"]().parameters())
