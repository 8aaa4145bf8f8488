"""MACs, parameters and activation memory counted from a capture, against torchvision's published numbers."""

from __future__ import annotations

from functools import cache

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from resnet_inspect.analysis.counting import Counts, count, node_macs
from resnet_inspect.capture.trace import capture
from resnet_inspect.models import get_model
from resnet_inspect.records import Capture, Geometry, OpKind, OpNode

# Exact conv + linear MACs at 224x224, batch 1 (derived from geometry), and torchvision's `_ops` (GMACs).
EXACT_MACS = {
    "resnet18": (1_814_073_344, 1.814),
    "resnet34": (3_663_761_408, 3.664),
    "resnet50": (4_089_184_256, 4.089),
    "resnet101": (7_801_405_440, 7.801),
    "resnet152": (11_513_626_624, 11.514),
    "resnext50_32x4d": (4_230_479_872, 4.23),
    "wide_resnet50_2": (11_398_021_120, 11.398),
}
PUBLISHED_PARAMETERS = {"resnet18": 11_689_512, "resnet50": 25_557_032, "wide_resnet50_2": 68_883_240}


@cache
def model(name: str) -> nn.Module:
    with torch.device("meta"):
        return get_model(name)


@cache
def captured(name: str, size: int = 224, batch_size: int = 1) -> Capture:
    return capture(model(name), size, batch_size, model_name=name)


@cache
def counted(name: str, size: int = 224, batch_size: int = 1) -> Counts:
    return count(captured(name, size, batch_size))


@pytest.mark.parametrize("name", list(EXACT_MACS))
def test_macs_match_torchvision_ops(name: str) -> None:
    exact_macs, published_gmacs = EXACT_MACS[name]
    counts = counted(name)
    assert counts.macs == exact_macs
    assert round(counts.macs / 1e9, 3) == published_gmacs


def test_resnet50_macs_are_exact() -> None:
    assert counted("resnet50").macs == 4_089_184_256


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "resnext50_32x4d"])
def test_flops_are_twice_the_macs(name: str) -> None:
    counts = counted(name)
    assert counts.flops == 2 * counts.macs


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "resnext50_32x4d", "wide_resnet50_2"])
def test_leaf_layers_add_up_to_the_total(name: str) -> None:
    layers, counts = captured(name).layers, counted(name)
    assert sum(counts.layer_macs[layer.index] for layer in layers if layer.is_leaf) == counts.macs
    assert counts.macs_outside_leaves == 0


def test_containers_equal_the_sum_of_their_children() -> None:
    layers, counts = captured("resnet50").layers, counted("resnet50")
    for layer in layers:
        children = [child for child in layers if child.parent == layer.index]
        if children:
            assert counts.layer_macs[layer.index] == sum(counts.layer_macs[child.index] for child in children)
    top_level = [layer for layer in layers if layer.parent is None]
    assert sum(counts.layer_macs[layer.index] for layer in top_level) == counts.macs


def test_macs_scale_with_the_batch_size() -> None:
    assert counted("resnet18", 224, 4).macs == 4 * counted("resnet18").macs


def stage_params(name: str, size: int = 224) -> dict[str, int]:
    """Parameters of the stem, each stage and the head, from the one stage model (as compare and rf see it)."""
    from resnet_inspect.analysis.receptive_field import analyze_receptive_field
    from resnet_inspect.analysis.stages import stage_rows

    model = captured(name, size)
    return {row.name: row.params for row in stage_rows(model, analyze_receptive_field(model), counted(name, size))}


def test_cifar_resnet20_counts() -> None:
    counts = counted("resnet20", 32)
    assert counts.params == 269_722
    assert counts.macs == 40_551_040
    assert stage_params("resnet20", 32) == {"stem": 464, "layers.0": 14_016, "layers.1": 51_072,
                                            "layers.2": 203_520, "head": 650}


@pytest.mark.parametrize("name", list(PUBLISHED_PARAMETERS))
def test_parameters_match_torchvision_and_stages_add_up(name: str) -> None:
    counts = counted(name)
    assert counts.params == counts.trainable_params == PUBLISHED_PARAMETERS[name]
    assert counts.frozen_params == 0
    by_stage = stage_params(name)
    assert sum(by_stage.values()) == counts.params
    assert list(by_stage) == ["stem", *(f"layers.{i}" for i in range(4)), "head"]


def test_parameter_bytes_by_dtype() -> None:
    counts = counted("resnet50")
    assert counts.param_bytes == 4 * 25_557_032
    assert counts.param_bytes_by_dtype == {"float32": 4 * 25_557_032}


def test_frozen_parameters_are_counted_apart() -> None:
    with torch.device("meta"):
        frozen = get_model("resnet18")
    for parameter in frozen.encoder.gate.parameters():
        parameter.requires_grad_(False)
    counts = count(capture(frozen, 64))
    assert counts.frozen_params == 9_536  # 7x7 conv (9,408) + BN (128)
    assert counts.trainable_params == 11_689_512 - 9_536


def test_layer_activation_bytes_are_the_output_sizes() -> None:
    layers, counts = captured("resnet50").layers, counted("resnet50")
    stem_conv = next(layer for layer in layers if layer.name == "encoder.gate.conv")
    assert counts.layer_activation_bytes[stem_conv.index] == 64 * 112 * 112 * 4


def test_resnet50_activation_memory() -> None:
    counts = counted("resnet50")
    assert counts.input_bytes == 3 * 224 * 224 * 4
    # The first block's addition: shortcut, main path and sum, each 256x56x56 floats, alive at once.
    assert counts.peak_activation_bytes == 3 * 256 * 56 * 56 * 4
    assert counts.peak_memory_bytes == counts.param_bytes + counts.buffer_bytes + counts.peak_activation_bytes
    assert counts.activation_bytes > counts.peak_activation_bytes


def batch_norm_and_bias_params(network: nn.Module) -> int:
    """What torchinfo adds to the MACs: BatchNorm parameters and linear biases (one per output, batch 1)."""
    batch_norms = sum(p.numel() for m in network.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters())
    biases = sum(m.bias.numel() for m in network.modules() if isinstance(m, nn.Linear) and m.bias is not None)
    return batch_norms + biases


@pytest.mark.parametrize("name", ["resnet18", pytest.param("resnet50", marks=pytest.mark.slow)])
def test_torchinfo_agrees_on_parameters_and_mult_adds(name: str) -> None:
    """torchinfo's total_mult_adds = conv + linear MACs + BatchNorm parameters + linear bias (x batch)."""
    import torchinfo

    torch.manual_seed(0)
    network = get_model(name).eval()
    summary = torchinfo.summary(network, (1, 3, 224, 224), verbose=0)
    counts = counted(name)
    assert summary.total_params == counts.params
    assert summary.total_mult_adds == counts.macs + batch_norm_and_bias_params(network)
    if name == "resnet50":
        assert summary.total_mult_adds == 4_089_238_376  # reference.md, torch 2.13


# ------------------------------------------------------------------------------------- hand-built graphs


# The operation-table entry behind each kind in these hand-built graphs.
ENTRY = {OpKind.CONV: "conv", OpKind.CONV_TRANSPOSE: "conv_transpose", OpKind.LINEAR: "linear",
         OpKind.RESHAPE: "reshape", OpKind.ELEMENTWISE: "elementwise", OpKind.MAX_POOL: "max_pool",
         OpKind.ADAPTIVE_POOL: "adaptive_pool"}


def node(node_id: int, kind: OpKind, inputs: tuple[int, ...], input_shape: tuple[int, ...],
         output_shape: tuple[int, ...], type_: str = "op", **geometry: object) -> OpNode:
    op = "input" if type_ == "input" else ENTRY[kind]
    return OpNode(node_id, f"n{node_id}", type_, Geometry(kind, **geometry), inputs,  # type: ignore[arg-type]
                  (input_shape,) if input_shape else (), output_shape, op=op)


def test_grouped_convolution_macs() -> None:
    conv = node(1, OpKind.CONV, (0,), (2, 32, 28, 28), (2, 64, 14, 14), kernel=(3, 3), stride=(2, 2), groups=4)
    assert node_macs(conv) == 2 * 64 * (32 // 4) * 3 * 3 * 14 * 14


def test_transposed_convolution_macs_use_the_input_positions() -> None:
    deconv = node(1, OpKind.CONV_TRANSPOSE, (0,), (1, 16, 7, 7), (1, 8, 14, 14), kernel=(2, 2), stride=(2, 2))
    assert node_macs(deconv) == 1 * 16 * 8 * 2 * 2 * 7 * 7


def test_linear_macs_count_every_leading_dimension() -> None:
    assert node_macs(node(1, OpKind.LINEAR, (0,), (4, 10, 32), (4, 10, 5))) == 4 * 10 * 32 * 5


@pytest.mark.parametrize("kind", [OpKind.ELEMENTWISE, OpKind.MAX_POOL, OpKind.ADAPTIVE_POOL, OpKind.RESHAPE])
def test_other_operations_count_zero_macs(kind: OpKind) -> None:
    assert node_macs(node(1, kind, (0,), (1, 8, 4, 4), (1, 8, 4, 4))) == 0


def test_views_share_storage_and_memory_is_freed_after_the_last_reader() -> None:
    shape = (1, 4, 8, 8)  # 256 floats = 1,024 bytes
    nodes = (
        node(0, OpKind.ELEMENTWISE, (), (), shape, "input"),
        node(1, OpKind.CONV, (0,), shape, shape, "Conv2d", kernel=(3, 3), padding=(1, 1)),
        node(2, OpKind.ELEMENTWISE, (1,), shape, shape, "ReLU"),
        node(3, OpKind.RESHAPE, (2,), shape, (1, 256), "flatten"),
        node(4, OpKind.LINEAR, (3,), (1, 256), (1, 10), "Linear"),
    )
    graph = Capture("toy", "Toy", shape, (1, 10), (), nodes, 4, 0, 0, 0)
    counts = count(graph)
    assert counts.input_bytes == 1_024
    assert counts.activation_bytes == 1_024 + 1_024 + 40  # the flatten view allocates nothing
    assert counts.peak_activation_bytes == 2_048  # never more than one operation's input and output
    assert counts.macs == 4 * 4 * 9 * 64 + 256 * 10


class FunctionalConv(nn.Module):
    """A layer without children that convolves with F.conv2d: its MACs come from a functional node."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(8, 3, 3, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, padding=1)


def test_functional_convolutions_are_attributed_to_their_module() -> None:
    toy = nn.Sequential(FunctionalConv(), nn.ReLU(), nn.Conv2d(8, 8, 1))
    result = capture(toy, 16)
    counts = count(result)
    functional = next(layer for layer in result.layers if layer.name == "0")
    assert functional.is_leaf
    assert counts.layer_macs[functional.index] == 8 * 3 * 9 * 16 * 16
    assert counts.macs == 8 * 3 * 9 * 16 * 16 + 8 * 8 * 16 * 16
    assert counts.macs_outside_leaves == 0
