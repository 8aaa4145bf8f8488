"""No wrong figure given silently: stages, transposed convolutions, padding a module runs, ERF labels, charts."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from typer.testing import CliRunner

from resnet_inspect.cli.app import app

FIXTURES = Path(__file__).parent / "fixtures"
TORCHVISION_LAYOUT = str(FIXTURES / "tv_resnet.py")

runner = CliRunner()


def run_json(*args: str) -> object:
    result = runner.invoke(app, [*args, "--format", "json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def chart_bars(html: str) -> list[tuple[str, int, int]]:
    """(stage, MACs, parameters) of each bar of the HTML page's stage chart."""
    bars = re.findall(r'<g class="stage-bar" data-stage="([^"]+)" data-macs="(\d+)" data-params="(\d+)"', html)
    return [(name, int(macs), int(params)) for name, macs, params in bars]


# ------------------------------------------------------------------------------ 1. one stage model, all outputs


def test_a_dilated_resnet_keeps_one_stage_per_stage_container(tmp_path: Path):
    """DeepLab's backbone: layer3 and layer4 dilate instead of striding, so layer2..layer4 share one resolution.
    Each stage container is still one stage, in compare, rf, the summary's stage queries and the HTML chart."""
    spec = f"{TORCHVISION_LAYOUT}:dilated_resnet18"
    stages = ["layer1", "layer2", "layer3", "layer4"]
    [row] = run_json("compare", spec, "-i", "64")
    assert row["stages"] == [2, 2, 2, 2]
    assert [stage["name"] for stage in row["stage_details"]] == ["stem", *stages, "head"]
    rf = run_json("rf", spec, "-i", "64")
    assert [stage["name"] for stage in rf["stages"]] == ["stem", *stages, "output"]
    assert [stage["output_size"] for stage in rf["stages"]] == [[16, 16], [16, 16], [8, 8], [8, 8], [8, 8], [8, 8]]
    # at stride 8 a 3x3 conv adds 16 per dilation step: layer3 = 99 + 2*16 (its first block keeps the previous
    # dilation, as torchvision's) + 2*32, layer4 = 195 + 2*32 + 2*64
    assert [stage["size"][0] for stage in rf["stages"]] == [11, 43, 99, 195, 387, 387]

    summary = run_json("summary", spec, "-i", "64")
    assert list(summary["totals"]["params_by_stage"]) == ["stem", *stages, "head"]
    page = tmp_path / "dilated.html"
    assert runner.invoke(app, ["summary", spec, "-i", "64", "-f", "html", "-o", str(page)]).exit_code == 0
    assert [name for name, _, _ in chart_bars(page.read_text())] == ["stem", *stages, "head"]


def test_compare_at_a_tiny_input_keeps_the_published_blocks_per_stage():
    """At 16 pixels layer3 and layer4 of a ResNet both end at 1x1; they are still two stages."""
    rows = run_json("compare", "resnet18", "resnet50", "-i", "16")
    assert [row["stages"] for row in rows] == [[2, 2, 2, 2], [3, 4, 6, 3]]


def test_every_output_agrees_on_the_stages_of_a_dilated_resnet50(tmp_path: Path):
    from resnet_inspect import inspect
    from resnet_inspect.capture.loader import load_model

    network, _ = load_model(f"{TORCHVISION_LAYOUT}:dilated_resnet50")
    report = inspect(network, 32)
    names = [stage["name"] for stage in report.stages]
    assert names == ["stem", "layer1", "layer2", "layer3", "layer4", "head"]
    assert [stage["blocks"] for stage in report.stages] == [0, 3, 4, 6, 3, 0]
    totals = report.to_dict()["totals"]
    assert list(totals["params_by_stage"]) == names
    assert sum(totals["params_by_stage"].values()) == totals["params"]
    bars = chart_bars(report.to_html())
    assert [name for name, _, _ in bars] == names
    assert sum(params for _, _, params in bars) == totals["params"]
    assert sum(macs for _, macs, _ in bars) == totals["macs"]


def detectron_layout_factory(tmp_path: Path) -> str:
    """A ResNet-18 laid out as Detectron2 names it (``stem``, ``res2``..``res5``): stage containers that are named
    like no other library's."""
    source = f'''
import sys
from torch import nn
sys.path.insert(0, {str(FIXTURES)!r})
from tv_resnet import resnet18


class DetectronLayout(nn.Module):
    def __init__(self):
        super().__init__()
        tv = resnet18()
        self.stem = nn.Sequential(tv.conv1, tv.bn1, tv.relu, tv.maxpool)
        self.res2, self.res3, self.res4, self.res5 = tv.layer1, tv.layer2, tv.layer3, tv.layer4
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), tv.fc)

    def forward(self, x):
        return self.head(self.res5(self.res4(self.res3(self.res2(self.stem(x))))))


def detectron_resnet18():
    return DetectronLayout()
'''
    path = tmp_path / "detectron_layout.py"
    path.write_text(source)
    return f"{path}:detectron_resnet18"


def test_stages_named_like_no_library_are_the_same_stages_in_every_output(tmp_path: Path):
    spec = detectron_layout_factory(tmp_path)
    stages = ["res2", "res3", "res4", "res5"]
    [row] = run_json("compare", spec, "-i", "64")
    assert row["stages"] == [2, 2, 2, 2]
    assert [stage["name"] for stage in run_json("rf", spec, "-i", "64")["stages"]] == ["stem", *stages, "output"]
    summary = run_json("summary", spec, "-i", "64")
    by_stage = summary["totals"]["params_by_stage"]
    assert list(by_stage) == ["stem", *stages, "head"]
    assert by_stage["stem"] == 64 * 3 * 7 * 7 + 2 * 64 and by_stage["head"] == 512 * 1000 + 1000
    page = tmp_path / "detectron.html"
    assert runner.invoke(app, ["summary", spec, "-i", "64", "-f", "html", "-o", str(page)]).exit_code == 0
    bars = chart_bars(page.read_text())
    assert [name for name, _, _ in bars] == ["stem", *stages, "head"]
    assert [params for _, _, params in bars] == list(by_stage.values())
    assert [macs for _, macs, _ in bars] == [stage["macs"] for stage in row["stage_details"]]


# ------------------------------------------------------------------ 6. the chart counts each parameter once


class SharedBlock(nn.Module):
    """A stem (3 -> 4 channels, 112 parameters) and one 296-parameter block run three times: 408 parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.block = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for _ in range(3):
            x = self.block(x)
        return x.mean((2, 3))


class SharedResidual(SharedBlock):
    """The same, the block used as a residual branch (so the stage model finds stages)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for _ in range(3):
            x = x + self.block(x)
        return x.mean((2, 3))


@pytest.mark.parametrize("model", [SharedBlock, SharedResidual])
def test_the_stage_chart_counts_a_module_called_three_times_once(model: type[nn.Module]):
    from resnet_inspect import inspect

    report = inspect(model(), 8)
    totals = report.to_dict()["totals"]
    assert totals["params"] == sum(p.numel() for p in model().parameters()) == 408
    bars = chart_bars(report.to_html())
    assert sum(params for _, _, params in bars) == 408
    assert sum(macs for _, macs, _ in bars) == totals["macs"] == 3 * 2 * (8 * 8 * 4 * 4 * 9) + 8 * 8 * 4 * 3 * 9
    assert sum(totals["params_by_stage"].values()) in (0, 408)


# ------------------------------------------------ 2. a transposed convolution called with output_size


class UNetDecoder(nn.Module):
    """The usual U-Net up step: the transposed convolution is told the skip connection's size (28 from 14, where
    the geometry alone gives 27), so output_size picks output padding 1 (torch's _output_padding)."""

    def __init__(self) -> None:
        super().__init__()
        self.down = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose2d(4, 4, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x), output_size=x.shape[-2:]) + x.mean(1, keepdim=True)


def test_verify_uses_the_output_padding_that_output_size_picks():
    from resnet_inspect import verify

    assert UNetDecoder()(torch.zeros(1, 3, 28, 28)).shape[-2:] == (28, 28)  # torch's own kernels
    report = verify(UNetDecoder(), 28)
    assert report.failed == 0
    up = next(item for item in report.checks if item.node.name == "up")
    assert up.check.expected == up.check.observed == (28, 28)
    assert up.node.geometry.output_padding == (1, 1)
    assert up.check.formulas[0] == "o = 2*(14 - 1) + 1 + 3 - 2*1 = 28"


def test_the_verify_command_passes_a_unet_decoder(tmp_path: Path):
    factory = tmp_path / "decoder.py"
    factory.write_text(f"import sys\nsys.path.insert(0, {str(Path(__file__).parent)!r})\n"
                       "from test_reliability_figures import UNetDecoder\n\ndef decoder():\n    return UNetDecoder()\n")
    result = runner.invoke(app, ["verify", f"{factory}:decoder", "-i", "28", "-f", "json"])
    assert result.exit_code == 0, result.output
    [up] = [layer for layer in json.loads(result.stdout)["layers"] if layer["name"] == "up"]
    assert up["expected"] == up["observed"] == [28, 28] and up["ok"]


# ------------------------------------------------------------ 3. --solve with --transposed


def test_arith_solves_the_transposed_relation():
    """56 -> 112 with k=3, s=2: padding 1 with output padding 1 (the usual 2x up-convolution)."""
    data = run_json("arith", "-i", "56", "-k", "3", "-s", "2", "--transposed", "--solve")
    assert data["solve"] == {"target": 112, "paddings": [1], "output_paddings": [1]}
    table = runner.invoke(app, ["arith", "-i", "56", "-k", "3", "-s", "2", "--transposed", "--solve"]).stdout
    assert "paddings giving o = 112" in table and "1 (output padding 1)" in table


@pytest.mark.parametrize(("i", "k", "s", "d"), [(56, 3, 2, 1), (7, 4, 2, 1), (10, 5, 3, 1), (9, 3, 1, 2),
                                                (5, 2, 4, 1), (6, 3, 2, 3), (11, 1, 1, 1), (8, 2, 1, 1)])
def test_every_transposed_solution_gives_the_target_in_the_relation_and_in_torch(i: int, k: int, s: int, d: int):
    from resnet_inspect.ops.arithmetic import conv_transpose_output, solve_transposed_padding

    solutions = solve_transposed_padding(i, k, s, d)
    for padding, output_padding in solutions:
        assert conv_transpose_output(i, k, s, padding, d, output_padding).output == s * i
        layer = nn.ConvTranspose2d(1, 1, k, s, padding, output_padding, dilation=d)
        assert layer(torch.zeros(1, 1, i, i)).shape[-2:] == (s * i, s * i)
    # and nothing is missed: every setting torch accepts that gives s*i with every output reached is listed
    found = set()
    for output_padding in range(max(s, d)):
        for padding in range(d * (k - 1) + 1):
            try:
                layer = nn.ConvTranspose2d(1, 1, k, s, padding, output_padding, dilation=d, bias=False)
                nn.init.ones_(layer.weight)
                out = layer(torch.ones(1, 1, i, i))
            except RuntimeError:
                continue
            if out.shape[-1] == s * i and bool((out > 0).all()):
                found.add((padding, output_padding))
    assert set(solutions) == found


# ------------------------------------------------------------- 4. what the ERF's weights are, and when it is undefined


def small_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))


def test_a_module_given_to_the_api_is_labelled_with_its_own_weights():
    from resnet_inspect import receptive_field

    torch.manual_seed(123)
    report = receptive_field(small_cnn(), 16, erf=True)
    assert "random" not in report.erf.weights and "seed" not in report.erf.weights
    assert report.erf.weights == "own (the module as given)"


def test_a_factory_that_loads_a_checkpoint_is_not_labelled_random(tmp_path: Path):
    torch.manual_seed(7)
    checkpoint = tmp_path / "trained.pt"
    torch.save(small_cnn().state_dict(), checkpoint)
    factory = tmp_path / "trained.py"
    factory.write_text(f"import sys\nimport torch\nsys.path.insert(0, {str(Path(__file__).parent)!r})\n"
                       "from test_reliability_figures import small_cnn\n\n"
                       "def trained():\n    model = small_cnn()\n"
                       f"    model.load_state_dict(torch.load({str(checkpoint)!r}))\n    return model\n\n"
                       "def fresh():\n    return small_cnn()\n")
    loaded = run_json("rf", f"{factory}:trained", "-i", "16", "--erf")["erf"]["weights"]
    assert "random" not in loaded and "seed" not in loaded
    assert run_json("rf", f"{factory}:fresh", "-i", "16", "--erf")["erf"]["weights"] == "random (seed 0)"
    assert run_json("rf", "resnet20", "--erf", "--erf-samples", "1")["erf"]["weights"] == "random (seed 0)"


def test_a_model_whose_input_gradient_is_zero_has_no_erf_radii():
    from resnet_inspect import receptive_field

    model = small_cnn()
    nn.init.zeros_(model[2].weight)  # the centre unit no longer depends on the input
    image = torch.randn(1, 3, 16, 16, requires_grad=True)
    model[:4](image)[0, :, 8, 8].sum().backward()
    assert not image.grad.any()  # the oracle: torch's own input gradient is zero everywhere
    erf = receptive_field(model, 16, erf=True).erf
    assert (erf.r50, erf.r90, erf.r99, erf.ratio) == (None, None, None, None)
    data = receptive_field(model, 16, erf=True).to_dict()["erf"]
    assert (data["r50"], data["r90"], data["r99"]) == (None, None, None)
    text = str(receptive_field(model, 16, erf=True))
    assert re.search(r"r50\s+│\s+undefined", text) and "0 px" not in text


def test_the_rf_picture_of_a_zero_gradient_model_is_drawn_without_radii(tmp_path: Path):
    from resnet_inspect import receptive_field
    from resnet_inspect.render.plot import rf_picture

    model = small_cnn()
    nn.init.zeros_(model[2].weight)
    assert rf_picture(receptive_field(model, 16, erf=True), "png").startswith(b"\x89PNG")


# ------------------------------------------------------- 5. padding a module runs beyond what it declares


class PadsTwice(nn.Conv2d):
    """Declares padding 1, and pads one more on every side in its forward: 20 -> 22 with a 3x3 kernel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, (1, 1, 1, 1)))


def pads_twice_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), PadsTwice(4, 4, 3, padding=1), nn.ReLU())


def test_verify_says_when_a_module_runs_more_padding_than_it_declares():
    from resnet_inspect import verify

    assert pads_twice_net()(torch.zeros(1, 3, 20, 20)).shape[-2:] == (22, 22)  # torch's own kernels
    report = verify(pads_twice_net(), 20)
    assert report.failed == 0  # what it runs is checked, and agrees
    message = "1 (PadsTwice): declares padding 1, runs 2"
    assert [warning for warning in report.to_dict()["warnings"] if warning.startswith("1 ")] == [message]
    [row] = [line for line in str(report).splitlines() if line.startswith("│ 1.conv2d")]
    assert "declares p1, runs p2" in row
    assert not any(warning.startswith("0 ") for warning in report.warnings)  # a stock Conv2d runs what it says


def test_the_summary_row_of_the_module_says_so_too():
    from resnet_inspect import inspect

    report = inspect(pads_twice_net(), 20)
    assert "1 (PadsTwice): declares padding 1, runs 2" in report.to_dict()["warnings"]
    [row] = [line for line in str(report).splitlines() if line.startswith("│ 1 ")]
    assert "declares p1, runs p2" in row


@pytest.mark.parametrize(("size", "sides"), [(64, "0 before and 1 after"), (65, "1 before and 1 after")])
def test_conv2d_same_passes_and_is_said_to_pad_same_from_the_input_size(size: int, sides: str):
    """timm's Conv2dSame (the zoo's re-creation): TF 'same' padding, computed from the input in forward; its 3x3/2
    conv pads (32 - 1)*2 + 3 - 64 = 1 at 64 (all after) and 2 at 65 (one each side)."""
    result = runner.invoke(app, ["verify", f"{FIXTURES / 'real_models.py'}:conv2d_same_net", "-i", str(size),
                                 "-f", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["failed"] == 0
    [first] = [warning for warning in data["warnings"] if warning.startswith("features.0 ")]
    assert first == (f"features.0 (Conv2dSame): declares padding 0, pads 'same' in its forward, from the input "
                     f"size: at {size}x{size}, {sides} on each axis")


# ------------------------------------------------------------------------------- 10. file names


@pytest.mark.parametrize("length", [236, 241, 242, 250, 255])
def test_every_legal_file_name_length_is_accepted(tmp_path: Path, length: int):
    from resnet_inspect.render.files import check_writable, write_output

    target = tmp_path / ("r" * (length - len(".json")) + ".json")
    check_writable(target)
    write_output(target, "{}\n")
    assert target.read_text() == "{}\n" and [path.name for path in tmp_path.iterdir()] == [target.name]
    result = runner.invoke(app, ["list", "-f", "json", "-o", str(target)])
    assert result.exit_code == 0, result.output
    assert target.read_text() == runner.invoke(app, ["list", "-f", "json"]).stdout


def test_a_name_of_255_bytes_in_multibyte_characters_is_accepted(tmp_path: Path):
    from resnet_inspect.render.files import write_output

    target = tmp_path / ("é" * 125 + ".png")  # 250 + 4 = 254 bytes, 129 characters
    assert len(target.name.encode()) == 254
    write_output(target, b"data")
    assert target.read_bytes() == b"data" and len(list(tmp_path.iterdir())) == 1


def test_hard_links_to_one_file_are_the_same_output(tmp_path: Path):
    report = tmp_path / "report.svg"
    report.write_text("old")
    picture = tmp_path / "picture.svg"
    picture.hardlink_to(report)
    result = runner.invoke(app, ["rf", "resnet20", "--plot", str(picture), "-o", str(report)])
    assert result.exit_code == 2
    assert result.output.strip().startswith("error: -o and --plot both name")
    assert report.read_text() == "old"
    result = runner.invoke(app, ["rf", "resnet20", "--png", str(tmp_path / "erf.png"), "-o", str(report),
                                 "--plot", str(tmp_path / "erf.png")])
    assert result.exit_code == 2  # a second, new name given twice: paths still count


def test_hard_linked_png_and_report_are_refused(tmp_path: Path):
    report = tmp_path / "report.png"
    report.write_bytes(b"old")
    (tmp_path / "erf.png").hardlink_to(report)
    result = runner.invoke(app, ["rf", "resnet20", "--png", str(tmp_path / "erf.png"), "-o", str(report)])
    assert result.exit_code == 2 and "both name" in result.output
    assert report.read_bytes() == b"old"


@pytest.mark.parametrize("name", ["erf.jpg", "erf.txt", "erf", "erf.png.bak"])
def test_png_refuses_a_name_that_does_not_end_in_png(tmp_path: Path, name: str):
    from resnet_inspect import receptive_field
    from resnet_inspect.errors import BadInputError

    target = tmp_path / name
    result = runner.invoke(app, ["rf", "resnet20", "--png", str(target)])
    assert result.exit_code == 2
    assert result.output.strip() == f"error: --png writes a PNG image: {target} must end in .png"
    with pytest.raises(BadInputError, match=r"must end in \.png"):
        receptive_field("resnet20", png=str(target))
    assert not target.exists()


def test_png_accepts_an_upper_case_suffix(tmp_path: Path):
    target = tmp_path / "ERF.PNG"
    result = runner.invoke(app, ["rf", "resnet20", "--png", str(target), "--erf-samples", "1"])
    assert result.exit_code == 0, result.output
    assert target.read_bytes().startswith(b"\x89PNG")


def test_png_judges_the_file_a_link_leads_to(tmp_path: Path):
    from resnet_inspect.errors import BadInputError
    from resnet_inspect.render.files import check_png_name

    (tmp_path / "picture").symlink_to(tmp_path / "erf.png")
    check_png_name(tmp_path / "picture")  # the file written is erf.png
    (tmp_path / "erf-link.png").symlink_to(tmp_path / "erf.txt")
    with pytest.raises(BadInputError, match=r"must end in \.png"):
        check_png_name(tmp_path / "erf-link.png")
