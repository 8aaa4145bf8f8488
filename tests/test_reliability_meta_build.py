"""Nothing is allocated that the docs promise not to allocate: a user's factory, and torchvision's and timm's
builders, are built on the meta device; a constructor or a forward that needs real values runs on real tensors
only under the memory guard; `time` and `fit` guard their real passes, and `fit` counts them.

The runs that could allocate far more than the machine has are made in a child process with a fake figure for
the memory available (2 GiB) and a hard limit on its data segment, so that a guard that failed could never take
the machine's memory: the allocation would fail in the child instead. Its own peak RSS (VmHWM) shows that
nothing large was allocated.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from resnet_inspect.capture import host_memory
from resnet_inspect.capture.loader import load_model
from resnet_inspect.capture.tensors import SMALL_TENSORS_TOTAL_BYTES
from resnet_inspect.cli.app import app
from resnet_inspect.errors import FactoryError

REPOSITORY = Path(__file__).resolve().parent.parent
GiB = 1024**3
runner = CliRunner()

CHILD = """
import atexit, resource, runpy, sys
peak_file, data_limit, available = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
resource.setrlimit(resource.RLIMIT_DATA, (data_limit, data_limit))
def record_peak():
    with open("/proc/self/status") as status, open(peak_file, "w") as peak:
        peak.write(next(line.split()[1] for line in status if line.startswith("VmHWM:")))
atexit.register(record_peak)
from resnet_inspect.analysis import memory
from resnet_inspect.capture import host_memory
memory.available_memory_bytes = host_memory.available_memory_bytes = lambda device="cpu": available
sys.argv = ["resnet-inspect", *sys.argv[4:]]
runpy.run_module("resnet_inspect", run_name="__main__")
"""

# 2.5 billion parameters (10 GB in float32), with timm's habit of reading drop-path rates from a tensor in the
# constructor, which the meta device alone cannot give.
MODELS = """
    import torch
    from torch import nn


    class WideHead(nn.Module):
        def __init__(self, hidden: int, layers: int, num_classes: int = 10) -> None:
            super().__init__()
            self.rates = [rate.item() for rate in torch.linspace(0, 0.1, layers)]
            self.stem = nn.Conv2d(3, 16, 4, stride=4)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.expand = nn.Linear(16, hidden)
            self.body = nn.Sequential(*(nn.Linear(hidden, hidden) for _ in range(layers)))
            self.head = nn.Linear(hidden, num_classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.body(self.expand(self.pool(self.stem(x)).flatten(1))))


    def big(num_classes: int = 10) -> nn.Module:
        return WideHead(50_000, 1, num_classes)


    def reads_a_large_value() -> nn.Module:
        '''Reads a statistic of a 4 MiB tensor (too large to stay real while on meta), then builds 3.6 GB of
        weights: only a real build can give the value, and it cannot fit in 2 GiB.'''
        scale = torch.ones(1024, 1024).sum().item()
        model = WideHead(30_000, 1)
        model.scale = scale
        return model


    def reads_a_large_value_small() -> nn.Module:
        scale = torch.ones(1024, 1024).sum().item()
        model = WideHead(64, 1)
        model.scale = scale
        return model


    class ReadsEarly(nn.Module):
        '''Scales 0-255 images down: one value read before any layer, then a wide convolution.'''

        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 64, 3, padding=1)
            self.body = nn.Sequential(nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1), nn.AdaptiveAvgPool2d(1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.max().item() > 1:
                x = x / 255
            if not x.is_meta:
                with open(__file__ + ".real", "a") as log:
                    log.write(f"{x.shape[0]}\\n")
            return self.body(self.stem(x))


    def reads_early() -> nn.Module:
        return ReadsEarly()
    """


def wide_head_params(hidden: int, layers: int, num_classes: int = 10) -> int:
    """Parameters of MODELS' WideHead, from the layer formulas: conv k*k*c_in*c_out + c_out, linear in*out + out."""
    stem = 4 * 4 * 3 * 16 + 16
    return stem + (16 * hidden + hidden) + layers * (hidden * hidden + hidden) + (hidden * num_classes + num_classes)


@pytest.fixture
def models(tmp_path) -> Path:
    path = tmp_path / "models.py"
    path.write_text(textwrap.dedent(MODELS))
    return path


def run_child(tmp_path: Path, *args: str, data_limit: int = 3 * GiB) -> tuple[int, str, str, int]:
    """(exit code, stdout, stderr, peak RSS in KiB) of the CLI in a child with 2 GiB 'available'."""
    peak = tmp_path / "peak_kib.txt"
    finished = subprocess.run([sys.executable, "-c", CHILD, str(peak), str(data_limit), str(2 * GiB), *args],
                              capture_output=True, text=True, cwd=REPOSITORY, timeout=600,
                              env={**os.environ, "PYTHONPATH": str(REPOSITORY)})
    return finished.returncode, finished.stdout, finished.stderr, int(peak.read_text())


# ------------------------------------------------------------------------------------------------ item 6: build


def test_a_factory_is_built_on_the_meta_device_with_the_values_its_constructor_reads(models):
    model, _ = load_model(f"{models}:big")
    assert model.body[0].weight.is_meta and model.head.weight.is_meta
    tensors = [*model.parameters(), *model.buffers()]
    real_bytes = sum(tensor.numel() * tensor.element_size() for tensor in tensors if not tensor.is_meta)
    assert real_bytes <= SMALL_TENSORS_TOTAL_BYTES  # the biases, which a constructor may read
    assert sum(parameter.numel() for parameter in model.parameters()) == wide_head_params(50_000, 1)
    assert model.rates == torch.linspace(0, 0.1, 1).tolist()  # the small tensor read stayed real


def test_the_values_read_are_those_of_a_real_build(models):
    """timm's drop-path rates over 12 blocks: the same numbers as on the CPU, not zeros or an error."""
    model, _ = load_model(f"{models}:big")
    assert model.rates == [0.0]
    path = models.parent / "deep.py"
    path.write_text(textwrap.dedent(MODELS) + "\n\ndef deep():\n    return WideHead(8, 12)\n")
    deep, _ = load_model(f"{path}:deep")
    assert deep.rates == [rate.item() for rate in torch.linspace(0, 0.1, 12)]


def test_a_big_user_file_model_is_analysed_without_allocating(models, tmp_path):
    # 2.5 billion parameters: 10 GB if real; the child may not grow its data segment past 1.5 GiB
    code, stdout, stderr, peak_kib = run_child(tmp_path, "summary", f"{models}:big", "-f", "json",
                                               data_limit=3 * GiB // 2)
    assert code == 0, stderr
    assert json.loads(stdout)["totals"]["params"] == wide_head_params(50_000, 1)
    assert peak_kib < 1024 * 1024, f"peak RSS {peak_kib / 1024:.0f} MiB"


@pytest.mark.slow
def test_a_constructor_that_reads_a_large_value_is_built_for_real_only_under_the_guard(models, tmp_path):
    code, _, stderr, peak_kib = run_child(tmp_path, "summary", f"{models}:reads_a_large_value", "-f", "json")
    assert code == 2, stderr
    line = stderr.strip()
    assert stderr.count("\n") == 1 and re.fullmatch(
        rf"error: building {re.escape(str(models))}:reads_a_large_value on real tensors \(on the meta device its "
        r"constructor raised: .+\) needs more than [\d.]+ GiB but only 2\.0 GiB is available: compute the values "
        r"the constructor reads from Python numbers, not from tensors, so that it can be built on the meta device",
        line), line
    assert peak_kib < 1024 * 1024, f"peak RSS {peak_kib / 1024:.0f} MiB"  # its 3 GB were never asked for


def test_a_constructor_that_reads_a_large_value_and_fits_is_built_for_real(models):
    model, _ = load_model(f"{models}:reads_a_large_value_small")
    assert model.scale == 1024 * 1024
    assert not any(parameter.is_meta for parameter in model.parameters())


def test_a_build_with_real_weights_is_refused_before_it_allocates(models, monkeypatch):
    monkeypatch.setattr(host_memory, "available_memory_bytes", lambda device="cpu": 64 << 20)
    with pytest.raises(host_memory.MemoryGuardError) as refused:
        load_model(f"{models}:big", device=None)  # rf --erf's build: 10 GB of weights
    assert re.fullmatch(rf"building {re.escape(str(models))}:big with real weights needs more than [\d.]+ [KMG]iB but "
                        r"only 64\.0 MiB is available: .+", str(refused.value))


def test_a_factory_that_fails_on_its_own_still_says_why(models):
    path = models.parent / "broken.py"
    path.write_text("def model():\n    raise ValueError('depth must be even')\n")
    with pytest.raises(FactoryError, match=r"broken\.py:model raised ValueError: depth must be even$"):
        load_model(f"{path}:model")


# ------------------------------------------------------------------------------------------------ item 7: time


@pytest.mark.slow
def test_time_guards_the_real_pass_of_a_model_that_reads_a_value(models, tmp_path):
    # At 4096x4096 the stem's output alone is 4 GiB: the batch-1 estimate on real tensors must be refused too.
    code, _, stderr, peak_kib = run_child(tmp_path, "time", f"{models}:reads_early", "-i", "4096",
                                          "--warmup", "0", "--repeat", "1")
    assert code == 2, stderr
    assert stderr.count("\n") == 1 and re.fullmatch(
        r"error: the forward pass on real tensors up to .+ \(the model reads tensor values, so the meta device "
        r"cannot stand in for them\) needs about [\d.]+ GiB but only 2\.0 GiB is available: lower --input-size",
        stderr.strip()), stderr
    assert peak_kib < 1024 * 1024, f"peak RSS {peak_kib / 1024:.0f} MiB"


def test_time_refuses_a_big_model_built_on_the_meta_device(models, monkeypatch):
    monkeypatch.setattr("resnet_inspect.analysis.memory.available_memory_bytes", lambda device="cpu": 2 * GiB)
    result = runner.invoke(app, ["time", f"{models}:big", "--warmup", "0", "--repeat", "1"])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: timing at batch size 1 and input 3x224x224 needs about "), result.stderr


# ------------------------------------------------------------------------------------------------ item 8: fit


def test_fit_counts_the_passes_that_ran_on_real_tensors(models):
    log = Path(f"{models}.real")
    result = runner.invoke(app, ["fit", f"{models}:reads_early", "-i", "16", "--memory", "64MiB", "-f", "json"])
    assert result.exit_code == 0, result.stderr
    search = json.loads(result.stdout)["search"]
    ran_for_real = log.read_text().split()  # the batch size of every forward the model saw on real tensors
    assert search["real_passes"] == len(ran_for_real) == search["passes"]
    text = runner.invoke(app, ["fit", f"{models}:reads_early", "-i", "16", "--memory", "64MiB"]).stdout
    assert "on real CPU tensors (the model reads tensor values)" in " ".join(text.split())


def test_fit_on_a_model_that_reads_no_value_makes_no_real_pass(models):
    result = runner.invoke(app, ["fit", f"{models}:big", "--memory", "80GiB", "-f", "json"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["search"]["real_passes"] == 0


@pytest.mark.slow
def test_fit_guards_its_real_passes(models, tmp_path):
    # A 16 GiB budget lets the search try a batch whose real pass needs far more than the 2 GiB available.
    code, _, stderr, peak_kib = run_child(tmp_path, "fit", f"{models}:reads_early", "-i", "256", "--memory",
                                          "16GiB")
    assert code == 2, stderr
    assert stderr.count("\n") == 1 and re.fullmatch(
        r"error: the forward pass on real tensors up to .+ needs about [\d.]+ GiB but only 2\.0 GiB is available: "
        r"lower --input-size or --memory", stderr.strip()), stderr
    assert peak_kib < 1024 * 1024, f"peak RSS {peak_kib / 1024:.0f} MiB"


# ------------------------------------------------------------------------------------------------ real weights


WEIGHTED = """
    import torch
    from torch import nn


    def model() -> nn.Module:
        depth = int(torch.tensor(3).item())  # a value read in the constructor, as before
        layers = [nn.Conv2d(3, 8, 3, padding=1)]
        for _ in range(depth - 1):
            layers += [nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1)]
        return nn.Sequential(*layers)
    """


def test_rf_weights_are_loaded_into_a_factory_model_built_for_real(tmp_path):
    """`rf --weights` builds the factory on real tensors and loads the file: its effective field is that of a
    module holding those very weights, measured as given (not the seeded random weights of the build)."""
    import resnet_inspect

    path = tmp_path / "weighted.py"
    path.write_text(textwrap.dedent(WEIGHTED))
    namespace: dict[str, object] = {}
    exec(textwrap.dedent(WEIGHTED), namespace)  # the same factory, built here with weights of our own
    own = namespace["model"]()
    with torch.no_grad():  # each convolution sees only its centre tap: the unit sees its own pixel alone
        for layer in own:
            if isinstance(layer, torch.nn.Conv2d):
                layer.weight.zero_()
                layer.weight[:, :, 1, 1] = 0.5
                layer.bias.fill_(0.1)
    weights = tmp_path / "weights.pth"
    torch.save(own.state_dict(), weights)
    result = runner.invoke(app, ["rf", f"{path}:model", "-i", "24", "--weights", str(weights), "--erf-samples", "1",
                                 "-f", "json"])
    assert result.exit_code == 0, result.stderr
    loaded = json.loads(result.stdout)["erf"]
    given = resnet_inspect.receptive_field(own, 24, erf=True, erf_samples=1).to_dict()["erf"]
    seeded = json.loads(runner.invoke(app, ["rf", f"{path}:model", "-i", "24", "--erf", "--erf-samples", "1",
                                            "-f", "json"]).stdout)["erf"]
    figures = ("r50", "r90", "r99")
    assert [loaded[key] for key in figures] == [given[key] for key in figures] == [0.0, 0.0, 0.0]
    assert seeded["r99"] > 0.0  # the seeded random weights spread the field over the 3x3 kernels' reach


# ------------------------------------------------------------------------------------------------ timm's builder


class TimmLikeViT(torch.nn.Module):
    """timm's VisionTransformer habits in its constructor: drop-path rates read from ``torch.linspace``, a position
    embedding made by ``torch.randn(...) * .02`` then ``trunc_normal_``, a zero class token."""

    def __init__(self, dim: int = 512, depth: int = 4, num_classes: int = 1000, in_chans: int = 3,
                 drop_path_rate: float = 0.1) -> None:
        super().__init__()
        from torch import nn

        self.drop_path_rates = [rate.item() for rate in torch.linspace(0, drop_path_rate, depth)]
        self.patch_embed = nn.Conv2d(in_chans, dim, 16, stride=16)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, 197, dim) * .02)
        nn.init.trunc_normal_(self.pos_embed, std=.02)
        self.blocks = nn.Sequential(*(nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 4 * dim), nn.GELU(),
                                                    nn.Linear(4 * dim, dim)) for _ in range(depth)))
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), tokens], dim=1) + self.pos_embed
        return self.head(self.blocks(tokens)[:, 0])


def timm_like_params(dim: int, depth: int, num_classes: int = 1000) -> int:
    block = 2 * dim + (dim * 4 * dim + 4 * dim) + (4 * dim * dim + dim)  # LayerNorm, then the two linears
    return (16 * 16 * 3 * dim + dim) + dim + 197 * dim + depth * block + (dim * num_classes + num_classes)


@pytest.fixture
def fake_timm(monkeypatch):
    """A stand-in for the timm package (which cannot be installed beside every torch): `timm:vit_like`."""
    import types

    package = types.ModuleType("timm")
    package.list_models = lambda: ["vit_like"]  # type: ignore[attr-defined]
    package.create_model = lambda name, pretrained=False, **options: TimmLikeViT(**options)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "timm", package)


def test_a_timm_builder_runs_on_the_meta_device_with_its_drop_path_rates(fake_timm):
    model, name = load_model("timm:vit_like", num_classes=10)
    assert name == "timm:vit_like"
    assert all(block[1].weight.is_meta and block[3].weight.is_meta for block in model.blocks)  # 4 MiB each
    tensors = [*model.parameters(), *model.buffers()]
    real_bytes = sum(tensor.numel() * tensor.element_size() for tensor in tensors if not tensor.is_meta)
    assert real_bytes <= SMALL_TENSORS_TOTAL_BYTES  # biases, norms, the 0.4 MiB position embedding
    assert model.drop_path_rates == [rate.item() for rate in torch.linspace(0, 0.1, 4)]
    assert sum(parameter.numel() for parameter in model.parameters()) == timm_like_params(512, 4, 10)
    result = runner.invoke(app, ["summary", "timm:vit_like", "-f", "json"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["totals"]["params"] == timm_like_params(512, 4)
