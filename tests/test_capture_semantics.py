"""What one forward pass cannot see is said, not guessed: data-dependent branches, every output of the model,
padding that wraps around, small inputs, and the operation that failed."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn
from typer.testing import CliRunner

from resnet_inspect.analysis.empirical import effective_receptive_field
from resnet_inspect.analysis.receptive_field import analyze_receptive_field
from resnet_inspect.cli.app import app
from resnet_inspect.errors import ForwardError
from resnet_inspect.pipeline.build import capture_model, inspect, verify

runner = CliRunner()


class Branchy(nn.Module):
    """Runs `extra` only when the features sum above zero; returns a dict of two outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.extra = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        y = self.conv(x)
        if y.sum() > 0:
            y = self.extra(y)
        return {"features": y, "pooled": y.mean((2, 3))}


def test_a_branch_chosen_by_data_is_named_in_the_warnings():
    report = inspect(Branchy(), 16)
    (warning,) = report.to_dict()["warnings"]
    assert "reads the value of conv" in warning and "all-zero input" in warning
    assert any("reads the value of conv" in line for line in verify(Branchy(), 16).to_dict()["warnings"])


def test_every_output_of_a_dict_returning_model_is_reported():
    data = inspect(Branchy(), 16).to_dict()
    assert data["output_shapes"] == [[1, 4, 16, 16], [1, 4]]
    assert data["output_names"] == ["features", "pooled"]
    assert data["output_shape"] == [1, 4, 16, 16]


def test_the_effective_field_of_a_dict_returning_model_is_measured():
    torch.manual_seed(0)
    model = Branchy()
    captured = capture_model(model, 16)
    erf = effective_receptive_field(model, captured, analyze_receptive_field(captured), samples=1)
    assert erf.unit == (7, 7) and erf.r99 <= 2  # within the field of conv (+ extra, when it ran): 5 wide


def test_circular_padding_marks_the_fields_after_it():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, padding_mode="circular"), nn.Conv2d(4, 4, 3, padding=1))
    result = analyze_receptive_field(capture_model(model, 16))
    assert result.output.padding_mode == "circular"
    assert result.remarks == ("0 pads with 'circular': from here on, the intervals of units near the border hold "
                              "other input pixels than the formula's",)


def test_a_failing_concatenation_is_blamed_on_the_concatenation():
    class BadCat(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 4, 3, stride=2, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cat([self.a(x), self.b(x)], dim=1)

    try:
        capture_model(BadCat(), 16)
    except ForwardError as error:
        message = str(error)
    assert message.startswith("forward pass failed at cat in the model's forward with inputs 1x4x16x16, 1x4x8x8")


def test_an_imagenet_resnet_at_32_pixels_keeps_its_stage_rows():
    result = runner.invoke(app, ["rf", "resnet18", "-i", "32", "-f", "json"])
    assert [stage["name"] for stage in json.loads(result.stdout)["stages"]] == [
        "stem", "layers.0", "layers.1", "layers.2", "layers.3", "output"]
    rows = json.loads(runner.invoke(app, ["compare", "resnet18", "-i", "32", "-f", "json"]).stdout)
    assert rows[0]["stages"] == [2, 2, 2, 2]


def test_declared_feature_info_gives_the_stages():
    class Declared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
            self.stage_a = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1))
            self.stage_b = nn.Conv2d(8, 16, 3, stride=2, padding=1)
            self.feature_info = [{"num_chs": 8, "reduction": 2, "module": "stage_a"},
                                 {"num_chs": 16, "reduction": 4, "module": "stage_b"}]

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.stage_b(self.stage_a(self.stem(x)))

    result = analyze_receptive_field(capture_model(Declared(), 32))
    assert [(stage.name, stage.size) for stage in result.stages] == [
        ("stage_a", (11, 11)), ("stage_b", (15, 15)), ("output", (15, 15))]  # 3 + 2*2 + 2*2, then + 2*2


def test_blocks_per_stage_are_shown_only_for_residual_stages():
    class Inverted(nn.Module):
        """A MobileNetV2 block: expand, depthwise, project; residual only at stride 1 with equal widths."""

        def __init__(self, channels: int, stride: int) -> None:
            super().__init__()
            self.residual = stride == 1
            self.body = nn.Sequential(nn.Conv2d(channels, 4 * channels, 1), nn.ReLU6(),
                                      nn.Conv2d(4 * channels, 4 * channels, 3, stride, 1, groups=4 * channels),
                                      nn.Conv2d(4 * channels, channels, 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.body(x) if self.residual else self.body(x)

    class MobileNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), Inverted(8, 1), Inverted(8, 2), Inverted(8, 1),
                                          Inverted(8, 1), Inverted(8, 2), Inverted(8, 1))
            self.head = nn.Linear(8, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.features(x).mean((2, 3)))

    from resnet_inspect.pipeline.compare import row_from_capture

    row = row_from_capture(capture_model(MobileNet(), 32))
    assert not row.residual_stages  # a strided block without a shortcut sits in each stage
    assert [stage.name for stage in row.stage_rows] == ["stem", "1", "2..4", "5..6", "head"]


def test_the_cli_reads_sizes_for_every_spatial_axis(tmp_path: Path):
    factory = tmp_path / "video.py"
    factory.write_text("from torch import nn\n\ndef video():\n"
                       "    return nn.Sequential(nn.Conv3d(3, 4, 3, padding=1), nn.MaxPool3d(2))\n")
    data = json.loads(runner.invoke(app, ["summary", f"{factory}:video", "-i", "8x16x16", "-f", "json"]).stdout)
    assert data["input_shape"] == [1, 3, 8, 16, 16] and data["output_shape"] == [1, 4, 4, 8, 8]
    cube = json.loads(runner.invoke(app, ["verify", f"{factory}:video", "-i", "8", "-f", "json"]).stdout)
    assert cube["input_shape"] == [1, 3, 8, 8, 8] and cube["failed"] == 0


def test_the_fallback_to_real_tensors_is_refused_when_it_cannot_fit():
    """Branchy reads a value, so the meta pass cannot finish: at 60000x60000 the real pass would need well over
    100 GB (its first convolution alone gives 57.6 GB), and the capture says so before allocating anything."""
    from resnet_inspect.analysis.memory import MemoryGuardError

    try:
        capture_model(Branchy(), 60000)
    except MemoryGuardError as error:
        message = str(error)
    assert message.startswith("the forward pass on real tensors")
    assert "lower --input-size or --batch-size" in message


def test_a_model_built_on_meta_is_traced_as_it_is_and_keeps_its_modes_and_no_hooks():
    with torch.device("meta"):
        model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.5)).train()
    model[1].eval()
    captured = capture_model(model, 16)
    assert captured.output_shape == (1, 4, 14, 14)
    assert [module.training for module in model.modules()] == [True, True, False, True]
    assert not any(module._forward_hooks or module._forward_pre_hooks for module in model.modules())
