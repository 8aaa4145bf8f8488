"""Sparse gradients in the training step: an ``Embedding`` or ``EmbeddingBag`` with ``sparse=True`` gives its weight
a sparse COO gradient, whose memory is its indices' and values' storages, not the weight's dense size.

Every figure is checked against torch itself on real CPU tensors: the gradient a real backward leaves, and the
live storages of a real second step counted by tests/oracle_memory.py's ``LiveStorages`` (which counts a sparse
tensor's indices and values). Adam and AdamW raise on a sparse gradient in torch; the tool refuses in one line.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import oracle_memory
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import resnet_inspect
from resnet_inspect.cli.app import app
from resnet_inspect.errors import BadInputError

VOCABULARY, WIDTH = 4000, 64
TOKENS = (16, 64)  # a batch of 16 sequences of 64 token indices


class TokenClassifier(nn.Module):
    """Token indices in, class scores out: an embedding table (sparse gradient), mean-pooled, and a linear head."""

    def __init__(self, bag: bool) -> None:
        super().__init__()
        self.bag = bag
        self.embed: nn.Module = (nn.EmbeddingBag(VOCABULARY, WIDTH, mode="sum", sparse=True) if bag
                                 else nn.Embedding(VOCABULARY, WIDTH, sparse=True))
        self.head = nn.Linear(WIDTH, 10)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        pooled = self.embed(tokens) if self.bag else self.embed(tokens).mean(1)
        return self.head(pooled)


def tokens() -> torch.Tensor:
    return torch.randint(0, VOCABULARY, TOKENS, generator=torch.Generator().manual_seed(0))


def real_gradient_bytes(model: nn.Module) -> int:
    """The bytes every gradient of a real CPU backward adds (a sparse one's indices and values storages; torch
    takes the backward's sparse gradient as it is, so its indices may be the input's own storage, held anyway)."""
    model = copy.deepcopy(model)
    given = tokens()
    model(given).sum().backward()
    parts = [part for p in model.parameters() if p.grad is not None
             for part in ((p.grad._indices(), p.grad._values()) if p.grad.is_sparse else (p.grad,))]
    return oracle_memory.tensor_bytes([part for part in parts
                                       if part.untyped_storage().data_ptr() != given.untyped_storage().data_ptr()])


@pytest.mark.parametrize("bag", [False, True], ids=["Embedding", "EmbeddingBag"])
def test_a_sparse_gradient_counts_its_indices_and_values_not_the_dense_weight(bag: bool) -> None:
    model = TokenClassifier(bag)
    step = resnet_inspect.training_memory(model, input_data=tokens(), optimizer="sgd")
    expected = real_gradient_bytes(model)
    dense_embedding = VOCABULARY * WIDTH * 4
    assert step.note is None and step.peak_bytes is not None
    assert step.gradient_bytes == expected
    assert expected < dense_embedding / 3  # 1,024 rows of 64 floats and their indices, of a 4,000-row table


def test_a_sparse_gradient_over_a_broadcast_is_copied_as_torch_copies_it() -> None:
    """An Embedding alone, its output summed: the backward's values are a broadcast of one number (not contiguous),
    so torch's AccumulateGrad copies indices and values instead of taking them; the mean-pooled models above are
    taken as they are. Both are what a real backward leaves."""
    model = nn.Embedding(VOCABULARY, WIDTH, sparse=True)
    step = resnet_inspect.training_memory(model, input_data=tokens(), optimizer="sgd")
    expected = real_gradient_bytes(model)
    assert expected == TOKENS[0] * TOKENS[1] * (WIDTH * 4 + 8)  # copied: values and indices of every lookup
    assert step.gradient_bytes == expected


@pytest.mark.slow
@pytest.mark.parametrize("factory", ["embedding", "bag"])
@pytest.mark.parametrize("optimizer", ["sgd", "momentum"])
def test_the_peak_of_a_sparse_step_is_within_3_percent_of_a_measured_one(factory: str, optimizer: str) -> None:
    """The second step of the real model in a child process, its resident set measured (tests/oracle_memory.py):
    64 images of 32 x 32 pixels, 65,536 lookups. A dense gradient of the table, or the clone torch skips, would
    each be 8 MiB too many; with momentum, leaving out the concatenation into the sparse buffer 16 MiB too few."""
    spec = "tests/fixtures/sparse_models.py:" + factory
    step = resnet_inspect.training_memory(oracle_memory.build_model(spec), (64, 3, 32, 32), optimizer=optimizer)
    measured = oracle_memory.measure_step(spec, (64, 3, 32, 32), optimizer)
    assert step.peak_bytes is not None
    assert abs(step.peak_bytes - measured.peak_bytes) <= 0.03 * measured.peak_bytes, (step.peak_bytes, measured)
    assert step.optimizer_state_bytes == measured.state_bytes


@pytest.mark.parametrize("bag", [False, True], ids=["Embedding", "EmbeddingBag"])
def test_momentum_keeps_a_sparse_clone_of_the_first_gradient_as_torch_does(bag: bool) -> None:
    """torch.optim.SGD's momentum buffer starts as ``grad.clone()``: sparse, a copy of the gradient's indices and
    values (what the step estimated, the second, holds before it starts)."""
    model = TokenClassifier(bag)
    step = resnet_inspect.training_memory(model, input_data=tokens(), optimizer="momentum")
    real = copy.deepcopy(model)
    optimizer = oracle_memory.make_optimizer("momentum", real.parameters())
    real(tokens()).sum().backward()
    optimizer.step()
    buffers = oracle_memory.state_tensors(optimizer)
    assert any(buffer.is_sparse for buffer in buffers)
    assert step.optimizer_state_bytes == oracle_memory.tensor_bytes(buffers)


@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_adam_refuses_a_sparse_gradient_as_torch_does(optimizer: str) -> None:
    model = TokenClassifier(bag=False)
    real = copy.deepcopy(model)
    real(tokens()).sum().backward()
    with pytest.raises(RuntimeError, match="does not support sparse gradients"):
        oracle_memory.make_optimizer(optimizer, real.parameters()).step()
    with pytest.raises(BadInputError, match=r"does not support sparse gradients.*--optimizer sgd or momentum"):
        resnet_inspect.training_memory(model, input_data=tokens(), optimizer=optimizer)


QUANTIZED = (Path(__file__).parent / "fixtures" / "sparse_models.py").read_text()  # a user's file


@pytest.fixture
def quantized(tmp_path: Path) -> Path:
    path = tmp_path / "pixel_tokens.py"
    path.write_text(QUANTIZED)
    return path


@pytest.mark.parametrize("factory", ["embedding", "bag"])
def test_the_command_line_reports_a_sparse_step_without_a_traceback(quantized: Path, factory: str) -> None:
    result = CliRunner().invoke(app, ["summary", f"{quantized}:{factory}", "-i", "16", "-b", "4", "--train",
                                      "--optimizer", "momentum", "-f", "json"])
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output and "SparseTensorImpl" not in result.output
    training = json.loads(result.stdout)["training"]
    namespace: dict = {}
    exec(compile(QUANTIZED, str(quantized), "exec"), namespace)  # the same file, run for real
    real = namespace[factory]()
    real(torch.rand(4, 3, 16, 16)).sum().backward()
    gradients = [p.grad for p in real.parameters()]
    assert gradients[0].is_sparse
    assert training["peak_bytes"] is not None
    assert training["gradient_bytes"] == oracle_memory.tensor_bytes(gradients)
    layer_grad_bytes = {layer["name"]: layer["grad_bytes"] for layer in json.loads(result.stdout)["layers"]}
    assert layer_grad_bytes["embed"] == oracle_memory.tensor_bytes([real.embed.weight.grad])  # not 256 x 32 x 4


@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_the_command_line_refuses_adam_on_a_sparse_gradient_in_one_line(quantized: Path, optimizer: str) -> None:
    result = CliRunner().invoke(app, ["summary", f"{quantized}:embedding", "-i", "16", "--train", "--optimizer",
                                      optimizer])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "does not support sparse gradients" in lines[0], result.stderr
    assert "Traceback" not in result.output


def test_a_padding_row_makes_the_gradient_data_dependent_and_the_summary_says_so() -> None:
    """With ``padding_idx`` the sparse backward drops the entries equal to it (``nonzero``): a count the meta
    device cannot know. The step reports why it has no peak, in one line, instead of guessing or crashing."""
    model = nn.Sequential(nn.Embedding(100, 8, padding_idx=0, sparse=True), nn.Flatten(), nn.Linear(8 * 64, 2))
    step = resnet_inspect.training_memory(model, input_data=tokens() % 100, optimizer="sgd")
    assert step.peak_bytes is None
    assert step.note is not None and "cannot run on the meta device" in step.note and "\n" not in step.note


def _coo(device: str, rows: int) -> torch.Tensor:
    """An uncoalesced sparse COO tensor of 50 x 8 with ``rows`` entries (rows repeat), as an embedding's gradient."""
    generator = torch.Generator().manual_seed(rows)
    indices = torch.randint(0, 50, (1, rows), generator=generator).to(device)
    values = torch.randn(rows, 8, generator=generator).to(device)
    # (a sparse tensor moved to meta with .to() loses its entries: built from its parts instead)
    return torch.ops.aten._sparse_coo_tensor_with_dims_and_tensors(1, 1, [50, 8], indices, values, dtype=values.dtype,
                                                                   layout=torch.sparse_coo, device=device,
                                                                   is_coalesced=False)


@pytest.mark.parametrize("operation", ["clone", "add_"])
def test_the_meta_sparse_rules_allocate_what_the_cpu_kernels_keep(operation: str) -> None:
    """``clone`` (AccumulateGrad, momentum's first buffer) and a sparse ``add_`` into a sparse tensor (momentum's
    later steps): the storages the meta rules allocate have the bytes of those torch's CPU kernel leaves."""
    from resnet_inspect.capture.training.ledger import StorageLedger, tracking_mode

    cpu_first, cpu_second = _coo("cpu", 12), _coo("cpu", 7)
    real = cpu_first.clone() if operation == "clone" else cpu_first.clone().add_(cpu_second)
    expected = sorted(oracle_memory.tensor_bytes([part]) for part in (real._indices(), real._values()))
    first, second = _coo("meta", 12), _coo("meta", 7)
    held = {id(part.untyped_storage()) for tensor in (first, second) for part in (tensor._indices(), tensor._values())}
    ledger = StorageLedger(weights=set(), inputs=held)  # held before: never allocations
    with tracking_mode(ledger):
        getattr(first, operation)(*(() if operation == "clone" else (second,)))
    allocated = sorted(event.bytes for event in ledger.events if event.bytes > 0)
    assert allocated == expected
