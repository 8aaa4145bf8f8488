"""fvcore and torch's FlopCounterMode beside our MACs: the numbers reference.md records for ResNet-50."""

from __future__ import annotations

from functools import cache

import pytest
import torch
from torch import nn

from resnet_inspect.analysis.counting import count
from resnet_inspect.analysis.fvcore_count import FvcoreCounts, flop_counter_flops, fvcore_count, materialize
from resnet_inspect.capture.trace import capture
from resnet_inspect.models import get_model
from resnet_inspect.records import Capture


@cache
def meta_model(name: str) -> nn.Module:
    with torch.device("meta"):
        return get_model(name)


@cache
def captured(name: str, size: int = 224, batch_size: int = 1) -> Capture:
    return capture(meta_model(name), size, batch_size, model_name=name)


@cache
def fvcore_resnet50() -> FvcoreCounts:
    counts, note = fvcore_count(meta_model("resnet50"), captured("resnet50"))
    assert note is None and counts is not None
    return counts


def test_fvcore_total_for_resnet50() -> None:
    assert fvcore_resnet50().total_flops == 4_111_512_576


def test_fvcore_reports_the_operators_it_cannot_count() -> None:
    unsupported = fvcore_resnet50().unsupported_ops
    assert unsupported["aten::add"] == 16  # one residual addition per bottleneck block
    assert unsupported["aten::max_pool2d"] == 1


def test_fvcore_modules_use_our_layer_names() -> None:
    fvcore = fvcore_resnet50()
    assert fvcore.by_module[""] == fvcore.total_flops
    assert fvcore.by_module["encoder.gate.conv"] == 64 * 3 * 7 * 7 * 112 * 112
    layers, counts = captured("resnet50").layers, count(captured("resnet50"))
    convolutions = [layer for layer in layers if layer.type in ("Conv2d", "Conv2dAuto", "Linear")]
    assert len(convolutions) == 54
    for layer in convolutions:  # fvcore counts convolutions and linear layers as we do
        assert fvcore.by_module[layer.name] == counts.layer_macs[layer.index]


def test_conv_and_linear_counts_agree_across_counters() -> None:
    """Our MACs = fvcore's conv + linear flops = FlopCounterMode's FLOPs / 2 (conv and matmul only)."""
    ours = count(captured("resnet50")).macs
    assert fvcore_resnet50().conv_linear_flops == ours
    assert fvcore_resnet50().by_operator["conv"] + fvcore_resnet50().by_operator["linear"] == ours
    torch_flops = flop_counter_flops(meta_model("resnet50"), (1, 3, 224, 224))
    assert torch_flops == 8_178_368_512
    assert torch_flops // 2 == ours


def test_fvcore_counts_scale_with_the_batch_size() -> None:
    single, _ = fvcore_count(meta_model("resnet20"), captured("resnet20", 32))
    batch, _ = fvcore_count(meta_model("resnet20"), captured("resnet20", 32, 3))
    assert single is not None and batch is not None
    assert batch.total_flops == 3 * single.total_flops
    assert batch.by_module["encoder"] == 3 * single.by_module["encoder"]
    assert batch.batch_size == 3


def test_fvcore_is_skipped_over_the_memory_budget() -> None:
    counts, note = fvcore_count(meta_model("resnet20"), captured("resnet20", 32), memory_budget_bytes=1024)
    assert counts is None
    assert note is not None and "budget" in note


def test_materialize_gives_a_meta_model_real_weights_without_touching_it() -> None:
    original = meta_model("resnet20")
    real = materialize(original)
    assert real is not original
    assert all(not p.is_meta for p in real.parameters())
    assert all(p.is_meta for p in original.parameters())
    assert torch.isfinite(real(torch.zeros(1, 3, 32, 32))).all()


@pytest.mark.parametrize("name", ["resnet18", "resnext50_32x4d"])
def test_flop_counter_is_twice_our_macs(name: str) -> None:
    assert flop_counter_flops(meta_model(name), (2, 3, 224, 224)) == 2 * count(captured(name, 224, 2)).macs
