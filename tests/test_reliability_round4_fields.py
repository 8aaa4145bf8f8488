"""Fourth reliability round, the figures: timm's Swin (NHWC patch merging by reshape and permute, windows on a
padded map) and antialiased interpolation, each against torch itself (input-gradient supports, one-hot inputs)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import resnet_inspect

sys.path.insert(0, str(Path(__file__).parent))
import oracle_torch
from fixtures import round4_models


class StageOutput(nn.Module):
    """The model up to the end of one stage, as ``forward_features`` for the gradient oracle."""

    def __init__(self, model: round4_models.TimmSwin, stage: int) -> None:
        super().__init__()
        self.patch_embed, self.layers = model.patch_embed, model.layers[:stage + 1]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(self.patch_embed(x))


def gradient_hull(model: nn.Module, size: int, unit: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Per axis, the first and last input pixel where the gradient of NHWC unit (unit, unit) of
    ``forward_features`` is nonzero: the hull of its support (a window that wraps around the border has a hole,
    and the field of a union is its hull)."""
    oracle = oracle_torch.oracle_copy(model, low=0.001, high=0.01)
    generator = torch.Generator().manual_seed(1)
    example = (torch.rand((1, 3, size, size), generator=generator, dtype=torch.float64) + 0.5).requires_grad_(True)
    selected = oracle.forward_features(example)[0, unit, unit]
    mix = torch.rand(selected.shape, generator=generator, dtype=torch.float64) + 0.5
    (gradient,) = torch.autograd.grad((selected * mix).sum(), example)
    touched = gradient[0].abs().sum(0)
    rows = torch.nonzero(touched.sum(1)).flatten().tolist()
    columns = torch.nonzero(touched.sum(0)).flatten().tolist()
    return (rows[0], rows[-1]), (columns[0], columns[-1])


def unit_interval(field: dict, axis: int, unit: int) -> tuple[int, int]:
    if "spans" in field:
        first, last = field["spans"][axis][unit]
        return first, last
    first = -field["padding"][axis] + unit * field["stride"][axis]
    return first, first + field["size"][axis] - 1


@pytest.mark.slow
def test_timm_swin_stages_are_read_on_their_spatial_axes() -> None:
    """timm merges patches by reshape (B, H/2, 2, W/2, 2, C), permute and flatten on NHWC maps: the 2x2 digits go to
    the channels, so the stages are 16x16, 8x8 and 4x4 (swin_tiny: 56, 28, 14, 7), and each unit's field is the
    input-gradient support of that unit, on both axes."""
    model = round4_models.timm_swin().eval()
    report = resnet_inspect.receptive_field(model, 64).to_dict()
    stages = [stage for stage in report["stages"] if stage["name"] != "output"]
    assert [stage["name"] for stage in stages] == ["layers.0", "layers.1", "layers.2"]
    assert [stage["output_size"] for stage in stages] == [[16, 16], [8, 8], [4, 4]]
    assert [stage["stride"] for stage in stages] == [[4, 4], [8, 8], [16, 16]]
    for index, stage in enumerate(stages):
        grid = stage["output_size"][0]
        for unit in sorted({0, grid // 2, grid - 1}):
            measured = gradient_hull(StageOutput(model, index), 64, unit)
            if stage["covers_input"]:  # every unit mixed with every other: each sees the whole input
                assert measured == ((0, 63), (0, 63)), (stage["name"], unit)
                continue
            reported = tuple(unit_interval(stage, axis, unit) for axis in range(2))
            assert reported == measured, (stage["name"], unit)


def test_timm_swin_tiny_layout_at_224_has_the_published_stage_grids() -> None:
    """swin_tiny_patch4_window7_224's layout (patch 4, window 7, four stages; narrow here): feature_info's reductions
    4, 8, 16, 32 are the strides, and the stage grids are 56, 28, 14 and 7 units on each side."""
    model = round4_models.TimmSwin(image=224, window=7, depths=(2, 2, 2, 2)).eval()
    stages = resnet_inspect.receptive_field(model, 224).to_dict()["stages"][:-1]
    assert [stage["name"] for stage in stages] == [info["module"] for info in model.feature_info]
    assert [stage["output_size"] for stage in stages] == [[56, 56], [28, 28], [14, 14], [7, 7]]
    assert [stage["stride"] for stage in stages] == [[info["reduction"]] * 2 for info in model.feature_info]


@pytest.mark.slow
@pytest.mark.parametrize("shifted_only", [True, False])
def test_padding_added_to_fill_the_last_window_is_not_image(shifted_only: bool) -> None:
    """Window 7 on a 10x10 map (40 pixels, patch 4) padded to 14: the shifted block's window that wraps holds
    units 0..2 and four padding units, so unit 0 sees pixels 0..11 (the shifted block alone), not the whole input.
    Every unit's span equals its input-gradient support."""
    model = round4_models.TimmSwin(image=40, window=7, depths=(2,)).eval()
    if shifted_only:
        model.layers[0].blocks = nn.Sequential(model.layers[0].blocks[1])
    field = resnet_inspect.receptive_field(model, 40).to_dict()["output"]
    assert field is not None
    for unit in range(10):
        reported = tuple(unit_interval(field, axis, unit) for axis in range(2))
        assert reported == gradient_hull(model, 40, unit), unit
    if shifted_only:
        assert unit_interval(field, 0, 0) == (0, 11)


class Antialiased(nn.Module):
    def __init__(self, size: int, mode: str, align: bool) -> None:
        super().__init__()
        self.conv, self.size, self.mode, self.align = nn.Conv2d(1, 1, 1), size, mode, align

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(self.conv(x), size=(self.size, self.size), mode=self.mode, align_corners=self.align,
                             antialias=True)


@pytest.mark.parametrize("before, after, mode, align", [
    (40, 10, "bilinear", False), (40, 10, "bicubic", False), (37, 11, "bilinear", True), (12, 30, "bicubic", False),
    (30, 7, "bicubic", True),
])
def test_an_antialiased_interpolation_holds_what_torchs_kernel_reads(before: int, after: int, mode: str,
                                                                      align: bool) -> None:
    """One-hot inputs through torch's own antialiased kernel show which input units each output unit reads; the
    field's interval holds them all. Downsampling by 4 (bilinear), unit 4 reads 14..21, where the plain kernel
    reads 17..18."""
    field = resnet_inspect.receptive_field(Antialiased(after, mode, align), before, in_channels=1).to_dict()["output"]
    one_hot = torch.eye(before * before, dtype=torch.float64).reshape(before * before, 1, before, before)
    output = F.interpolate(one_hot, size=(after, after), mode=mode, align_corners=align, antialias=True)
    reads = output[:, 0].reshape(before, before, after, after) != 0
    for unit in range(after):
        rows = torch.nonzero(reads[:, :, unit, unit].any(1)).flatten().tolist()
        first, last = unit_interval(field, 0, unit)
        assert first <= rows[0] and rows[-1] <= last, (unit, rows, first, last)
    if (before, after, mode) == (40, 10, "bilinear"):
        assert rows_of(reads, 4) == list(range(14, 22))
        first, last = unit_interval(field, 0, 4)
        assert 13 <= first <= 14 and 21 <= last <= 22


def rows_of(reads: torch.Tensor, unit: int) -> list[int]:
    return torch.nonzero(reads[:, :, unit, unit].any(1)).flatten().tolist()


class BackboneOut(nn.Module):
    """A segmentation model's backbone output ``out`` (layer4), as ``forward_features`` for the gradient oracle."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.backbone = model.backbone

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)["out"]


@pytest.mark.parametrize("factory", [round4_models.fcn_resnet50, round4_models.deeplabv3_resnet50])
def test_a_backbone_wrapper_keeps_the_four_stages_of_its_dilated_resnet(factory) -> None:
    """torchvision's segmentation models wrap a dilated ResNet-50 in an IntermediateLayerGetter that returns layer3
    (aux) and layer4 (out): each stage container is still a stage, and the backbone's outputs are not its end."""
    model = factory(aux_loss=True).eval()
    report = resnet_inspect.receptive_field(model, 64).to_dict()
    names = [stage["name"] for stage in report["stages"]]
    stages = [f"backbone.layer{i}" for i in range(1, 5)]
    assert names == ["stem", *stages, "classifier", "output"]
    fields = {stage["name"]: stage["size"] for stage in report["stages"]}
    assert [fields[name] for name in stages] == [[35, 35], [91, 91], [267, 267], [427, 427]]
    [row] = resnet_inspect.compare({"model": model}, 64).to_dict()
    details = row["stage_details"]
    assert [stage["name"] for stage in details] == ["stem", *stages, "classifier", "head"]
    assert [stage["blocks"] for stage in details] == [0, 3, 4, 6, 3, 0, 0]
    assert sum(stage["macs"] for stage in details) == row["macs"]


@pytest.mark.slow
def test_the_dilated_resnet50_field_at_layer4_is_the_input_gradient_support() -> None:
    """Layer4 of DeepLab's dilated ResNet-50 sees 427 pixels: on an 8x448 input, the width of the input-gradient
    support of the centre column's unit, and the interval the analysis gives that unit."""
    model = round4_models.fcn_resnet50(aux_loss=True).eval()
    report = resnet_inspect.receptive_field(model, (8, 448)).to_dict()
    layer4 = next(stage for stage in report["stages"] if stage["name"] == "backbone.layer4")
    assert layer4["output_size"] == [1, 56]
    support = oracle_torch.gradient_support(BackboneOut(model), (1, 3, 8, 448), (0, 28), (2, 3))
    assert support.last[1] - support.first[1] + 1 == 427
    assert unit_interval(layer4, 1, 28) == (support.first[1], support.last[1])


class ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.conv2(torch.relu(self.conv1(x))))


class StageTwice(nn.Module):
    """One residual stage run twice on its own output (weights shared)."""

    def __init__(self, calls: int = 2) -> None:
        super().__init__()
        self.calls = calls
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.stage = nn.Sequential(ResidualBlock(8), ResidualBlock(8))
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(8, 10)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for _ in range(self.calls):
            x = self.stage(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.forward_features(x)).flatten(1))


def test_a_stage_called_twice_is_checked_and_counted_at_each_call() -> None:
    """Each call is a row of its own: its field is checked against its own measurement (the input-gradient support
    of that call's centre unit), and each call has its blocks and its MACs (FlopCounterMode on the stage alone)."""
    model = StageTwice().eval()
    report = resnet_inspect.receptive_field(model, 64, check=True).to_dict()
    names = [stage["name"] for stage in report["stages"]]
    assert names == ["stem", "stage", "stage (call 2)", "output"]
    checks = {check["name"]: check for check in report["empirical"]["stages"]}
    for calls, name in [(1, "stage"), (2, "stage (call 2)")]:
        unit = tuple(checks[name]["unit"])
        support = oracle_torch.gradient_support(StageTwice(calls).eval(), (1, 3, 64, 64), unit, (2, 3))
        assert not support.touches_border
        assert checks[name]["size"] == list(support.size), name
        assert checks[name]["agrees"] is True
        stage = next(stage for stage in report["stages"] if stage["name"] == name)
        assert stage["size"] == list(support.size)
    [row] = resnet_inspect.compare({"twice": model}, 64).to_dict()
    details = {stage["name"]: stage for stage in row["stage_details"]}
    stage_macs = oracle_torch.flop_counter_macs(model.stage, torch.zeros(1, 8, 32, 32))
    for name in ("stage", "stage (call 2)"):
        assert details[name]["blocks"] == 2
        assert details[name]["macs"] == stage_macs
