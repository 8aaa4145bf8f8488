"""Pictures: receptive fields to scale (PNG, SVG, PDF), the ERF panel, compare charts, the terminal heatmap.

The reference is a 3-layer CNN whose fields are worked out by hand below, at a 13x21 input (Distill 2019:
r' = r + (k - 1) S, S' = S s, P' = P + p S; the centre unit u = (o - 1) // 2 sees [-P + u S, -P + u S + r - 1]).
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image  # matplotlib's own dependency
from typer.testing import CliRunner

from resnet_inspect.cli.app import app
from resnet_inspect.render import render_table
from resnet_inspect.render.fields import BOX_COLOURS, stage_boxes
from resnet_inspect.render.heatmap import erf_heatmap
from resnet_inspect.render.plot import compare_figure, rf_figure
from resnet_inspect.render.svg import fields_svg

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()

THREE_LAYERS = """
from torch import nn

def three_layer():
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, stride=2, padding=1),
                         nn.Conv2d(4, 4, 5, stride=2, padding=2))
"""
INPUT = (13, 21)
# By hand, per stage: (size, stride, padding), output size, centre unit, rows (first, last), columns (first, last).
#   stage1: 3x3/1 p1: r 3,  S 1, P 1; output 13x21, unit (6, 10): rows 5..7,   columns 9..11
#   stage2: 3x3/2 p1: r 5,  S 2, P 2; output 7x11,  unit (3, 5):  rows 4..8,   columns 8..12
#   stage3: 5x5/2 p2: r 13, S 4, P 6; output 4x6,   unit (1, 2):  rows -2..10, columns 2..14 (2 rows of padding)
HAND_FIELDS = {
    "stage1": ((5, 7), (9, 11)),
    "stage2": ((4, 8), (8, 12)),
    "stage3": ((-2, 10), (2, 14)),
}


@pytest.fixture(scope="module")
def three_layer(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("models") / "three.py"
    path.write_text(THREE_LAYERS)
    return f"{path}:three_layer"


@pytest.fixture(scope="module")
def three_layer_rf(three_layer) -> dict:
    result = runner.invoke(app, ["rf", three_layer, "-i", "13x21", "-f", "json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def draw(args: list[str]) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output


# ------------------------------------------------------------------------------------------------ the boxes


def test_boxes_follow_the_hand_arithmetic_and_the_output_shares_the_last_stage_box(three_layer_rf):
    boxes = stage_boxes(three_layer_rf)
    assert [box.label for box in boxes] == ["stage1", "stage2", "stage3 = output"]
    for box, (name, (rows, columns)) in zip(boxes, HAND_FIELDS.items(), strict=True):
        assert (box.start, box.end) == ((rows[0], columns[0]), (rows[1], columns[1])), name
    assert boxes[2].covered(INPUT) == ((0, 10), (2, 14))  # the part inside the input: padding rows cut off


def _line_centres(mask: np.ndarray, axis: int) -> list[float]:
    """Centres of the runs of rows (axis=1) or columns (axis=0) where ``mask`` draws a long line."""
    counts = mask.sum(axis=axis)
    strong = np.flatnonzero(counts >= 0.5 * counts.max())
    clusters: list[list[int]] = []
    for index in strong:
        if clusters and index - clusters[-1][-1] <= 1:
            clusters[-1].append(int(index))
        else:
            clusters.append([int(index)])
    return [sum(cluster) / len(cluster) for cluster in clusters]


def _colour_mask(pixels: np.ndarray, colour: str) -> np.ndarray:
    rgb = tuple(int(colour[i:i + 2], 16) for i in (1, 3, 5))
    return np.all(pixels[:, :, :3] == rgb, axis=2)


def test_png_box_pixels_lie_where_the_arithmetic_says(three_layer, tmp_path):
    picture = tmp_path / "fields.png"
    draw(["rf", three_layer, "-i", "13x21", "--plot", str(picture)])
    pixels = np.asarray(Image.open(picture).convert("RGB"))
    # the input's outline (0..20 x 0..12 in pixel-edge units) fixes the scale and origin of the drawing
    input_mask = _colour_mask(pixels, "#333333")
    left, right = _line_centres(input_mask, axis=0)
    top, bottom = _line_centres(input_mask, axis=1)
    scale_x, scale_y = (right - left) / INPUT[1], (bottom - top) / INPUT[0]
    assert scale_x == pytest.approx(scale_y, rel=0.02)  # drawn to scale: a pixel is square
    for colour, (name, (rows, columns)) in zip(BOX_COLOURS, HAND_FIELDS.items(), strict=False):
        mask = _colour_mask(pixels, colour)
        expected_x = [left + columns[0] * scale_x, left + (columns[1] + 1) * scale_x]
        expected_y = [top + rows[0] * scale_y, top + (rows[1] + 1) * scale_y]
        assert _line_centres(mask, axis=0) == pytest.approx(expected_x, abs=1), name
        assert _line_centres(mask, axis=1) == pytest.approx(expected_y, abs=1), name


def _path_box(svg: str, gid: str) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) of the path inside ``<g id="gid">`` of a matplotlib SVG."""
    group = re.search(rf'<g id="{gid}">(.*?)</g>', svg, re.S)
    assert group, gid
    numbers = [float(value) for value in re.findall(r"-?\d+(?:\.\d+)?", re.search(r' d="([^"]+)"', group[1])[1])]
    xs, ys = numbers[0::2], numbers[1::2]
    return min(xs), min(ys), max(xs), max(ys)


def test_matplotlib_svg_has_one_labelled_box_per_stage_at_the_hand_coordinates(three_layer, tmp_path):
    picture = tmp_path / "fields.svg"
    draw(["rf", three_layer, "-i", "13x21", "--plot", str(picture)])
    svg = picture.read_text()
    left, top, right, bottom = _path_box(svg, "input")
    scale = (right - left) / INPUT[1]
    assert (bottom - top) / INPUT[0] == pytest.approx(scale)
    for position, (name, (rows, columns)) in enumerate(HAND_FIELDS.items()):
        expected = (left + columns[0] * scale, top + rows[0] * scale, left + (columns[1] + 1) * scale,
                    top + (rows[1] + 1) * scale)
        assert _path_box(svg, f"field-{position}") == pytest.approx(expected, abs=0.01), name
        assert re.search(rf"<text[^>]*>[^<]*{name}", svg), name  # the label is text, not glyph outlines
    assert "size 13, stride 4, padding 6" in svg  # the legend names size, stride and padding


def test_inline_svg_has_one_labelled_box_per_stage_in_input_pixels(three_layer_rf):
    svg = fields_svg(three_layer_rf)
    groups = re.findall(r'<g class="field local" data-stage="([^"]+)">(.*?)</g>', svg, re.S)
    assert [stage for stage, _ in groups] == ["stage1", "stage2", "stage3 = output"]
    for (stage, body), (rows, columns) in zip(groups, HAND_FIELDS.values(), strict=True):
        box = re.search(r'<rect class="box" x="([-\d.]+)" y="([-\d.]+)" width="([\d.]+)" height="([\d.]+)"', body)
        assert tuple(float(value) for value in box.groups()) == (
            columns[0], rows[0], columns[1] - columns[0] + 1, rows[1] - rows[0] + 1), stage
        assert f">{stage}</text>" in body
    assert '<rect class="input" x="0" y="0" width="21" height="13"' in svg


def test_pdf_is_written(three_layer, tmp_path):
    picture = tmp_path / "fields.pdf"
    draw(["rf", three_layer, "-i", "13x21", "--plot", str(picture)])
    assert picture.read_bytes().startswith(b"%PDF")


# ------------------------------------------------------------------------ global context, unions, 1-D and 3-D


def _with_flags(rf: dict, stage: int, **flags: bool) -> dict:
    copy = json.loads(json.dumps(rf))
    copy["stages"][stage].update(flags)
    return copy


def test_global_context_and_union_fields_are_drawn_as_such(three_layer_rf):
    rf = _with_flags(_with_flags(three_layer_rf, 0, global_context=True), 1, union=True)
    svg = fields_svg(rf)
    assert re.search(r'<g class="field global-context" data-stage="stage1">.*?stroke-dasharray="6 3" '
                     r'fill="url\(#rf-hatch\)"', svg, re.S)
    assert re.search(r'<g class="field union" data-stage="stage2">.*?stroke-dasharray="1.5 3"', svg, re.S)
    figure = rf_figure(rf)
    patches = {patch.get_gid(): patch for patch in figure.axes[0].patches}
    assert patches["field-0"].get_hatch() == "//" and patches["field-0"].get_linestyle() == "--"
    assert patches["field-1"].get_linestyle() == ":" and patches["field-2"].get_linestyle() == "-"
    legend = [text.get_text() for text in figure.axes[0].get_legend().get_texts()]
    assert any("global context" in text for text in legend) and any("union" in text for text in legend)


ZOO = """
import torch.nn.functional as F
from torch import nn


class SqueezeExcite(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, channels, 1), nn.Sigmoid())

    def forward(self, x):
        return x * self.gate(x)


def gated():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Sequential(nn.Conv2d(8, 8, 3, 2, 1), SqueezeExcite(8)))


def conv1d():
    return nn.Sequential(nn.Conv1d(2, 4, 5, stride=2, padding=2), nn.Conv1d(4, 4, 3, stride=2, padding=1))


def conv3d():
    return nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.Conv3d(4, 4, 3, stride=2, padding=1))
"""


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("zoo") / "zoo.py"
    path.write_text(ZOO)
    return str(path)


def rf_json(*args: str) -> dict:
    result = runner.invoke(app, ["rf", *args, "-f", "json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_a_gated_network_draws_its_global_context_fields_hatched(zoo, tmp_path):
    rf = rf_json(f"{zoo}:gated", "-i", "32", "--plot", str(tmp_path / "gated.svg"))
    assert [stage["global_context"] for stage in rf["stages"]] == [False, True, True]
    patches = {patch.get_gid(): patch for patch in rf_figure(rf).axes[0].patches}
    assert patches["field-0"].get_hatch() is None
    assert patches["field-1"].get_hatch() == "//" and patches["field-1"].get_linestyle() == "--"
    assert '<g class="field global-context" data-stage="1 = output">' in fields_svg(rf)
    assert "also sees the whole input (global context)" in (tmp_path / "gated.svg").read_text()


def test_shifted_paths_draw_their_union_dotted(zoo):
    rf = rf_json("tests/fixtures/cnn_zoo.py:shifted", "-i", "16")
    assert rf["union"] is True
    assert [box.union for box in stage_boxes(rf)][-1] is True
    assert re.search(r'<g class="field union" data-stage="[^"]*output">.*?stroke-dasharray="1.5 3"', fields_svg(rf),
                     re.S)
    assert rf_figure(rf).axes[0].patches[-1].get_linestyle() == ":"


def test_a_conv1d_net_is_drawn_as_intervals(zoo, tmp_path):
    rf = rf_json(f"{zoo}:conv1d", "-i", "50", "--in-channels", "2", "--plot", str(tmp_path / "c1.png"))
    # stage1: r 5, S 2, P 2, output 25, unit 12: [22, 26]; stage2: r 9, S 4, P 4, output 13, unit 6: [20, 28]
    assert [(box.start, box.end) for box in stage_boxes(rf)] == [((22,), (26,)), ((20,), (28,))]
    assert Image.open(tmp_path / "c1.png").format == "PNG"


def test_a_conv3d_net_is_not_drawn_and_says_so_in_one_line(zoo, tmp_path):
    result = runner.invoke(app, ["rf", f"{zoo}:conv3d", "-i", "8x8x8", "--in-channels", "1", "--plot",
                                 str(tmp_path / "c3.png")])
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1] == (
        "error: the receptive-field picture draws 1-D and 2-D inputs; this input has 3 spatial axes (use --format "
        "json for the numbers)")
    assert not (tmp_path / "c3.png").exists()


def test_top_level_union_marks_the_encoder_output(three_layer_rf):
    rf = {**three_layer_rf, "aligned": False, "union": True}
    assert [box.union for box in stage_boxes(rf)] == [False, False, True]


def test_one_dimensional_fields_are_intervals_on_a_line():
    rf = {"model": "conv1d", "input_shape": [1, 2, 50], "union": False, "stages": [
        {"name": "a", "size": [5], "stride": [2], "padding": [2], "output_size": [25]},
        {"name": "b", "size": [13], "stride": [4], "padding": [6], "output_size": [13]},
    ]}
    svg = fields_svg(rf)
    # unit 12 of 25: [-2 + 24, 26]; unit 6 of 13: [-6 + 24, 30]
    assert re.search(r'data-stage="a">.*?<rect class="box" x="22" y="[\d.]+" width="5"', svg, re.S)
    assert re.search(r'data-stage="b">.*?<rect class="box" x="18" y="[\d.]+" width="13"', svg, re.S)
    lines = [line for line in rf_figure(rf).axes[0].get_lines() if line.get_label().startswith(("a:", "b:"))]
    assert [tuple(line.get_xdata()) for line in lines] == [(22, 27), (18, 31)]


def test_three_dimensional_fields_are_refused_with_one_line():
    rf = {"model": "conv3d", "input_shape": [1, 1, 8, 8, 8], "stages": []}
    with pytest.raises(ValueError, match="draws 1-D and 2-D inputs; this input has 3 spatial axes"):
        rf_figure(rf)
    with pytest.raises(ValueError, match="3 spatial axes"):
        fields_svg(rf)


# ---------------------------------------------------------------------------------------------- the ERF panel


@pytest.mark.slow
def test_erf_panel_has_a_colour_bar_the_radii_and_the_theoretical_box(tmp_path):
    picture = tmp_path / "erf.png"
    result = runner.invoke(app, ["rf", "resnet20", "--erf", "--erf-samples", "1", "--plot", str(picture), "-f",
                                 "json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert Image.open(picture).format == "PNG"
    from resnet_inspect.pipeline.rf import load_rf_model, rf_report

    model, name = load_rf_model("resnet20", 3, None, real=True)
    rf = rf_report(model, name, (32, 32), erf=True, erf_samples=1)
    figure = rf_figure(rf.to_dict(), rf.erf.mass)
    _, erf, colour_bar = figure.axes
    assert colour_bar.get_ylabel() == "share of the gradient mass (sqrt scale)"
    labels = {patch.get_label(): patch for patch in erf.patches}
    for level in ("r50", "r90", "r99"):
        radius = report["erf"][level]
        square = labels[f"{level} = {radius:g} px"]
        # the pixels within Chebyshev distance r of the centre (12, 12): edges half a pixel outside them
        assert (square.get_x(), square.get_width()) == (12 - radius, 2 * radius + 1)
    theoretical = labels["theoretical field: size 81, stride 4, padding 40"]
    assert (theoretical.get_y(), theoretical.get_height()) == (-40 + 3 * 4, 81)  # unit 3: [-P + 3S, .. + r - 1]


# ----------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("command", ["rf", "compare"])
def test_missing_matplotlib_says_how_to_install_it(command, three_layer, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    result = runner.invoke(app, [command, three_layer, "-i", "13x21", "--plot", str(tmp_path / "x.png")])
    assert result.exit_code == 2
    assert result.output.strip() == "error: pictures need matplotlib: pip install 'resnet-inspect[plot]'"
    assert not (tmp_path / "x.png").exists()


def test_a_model_without_any_field_has_nothing_to_draw():
    rf = {"model": "m", "input_shape": [1, 3, 8, 8], "stages": [
        {"name": "output", "size": None, "stride": None, "padding": None, "output_size": [4, 4],
         "reason": "an operation with no rule (Weird)"}]}
    with pytest.raises(ValueError, match=r"no receptive field to draw: output: an operation with no rule \(Weird\)"):
        rf_figure(rf)
    assert fields_svg(rf) == ""


def test_unknown_picture_format_is_refused_before_any_work(tmp_path):
    result = runner.invoke(app, ["rf", "resnet20", "--plot", str(tmp_path / "x.gif")])
    assert result.exit_code == 2
    assert result.output.strip() == f"error: cannot draw {tmp_path / 'x.gif'}: the picture's name must end in .png, " \
                                    ".svg or .pdf"


# --------------------------------------------------------------------------------------------------- compare


@pytest.mark.slow
def test_compare_plot_has_four_panels_against_depth(tmp_path):
    result = runner.invoke(app, ["compare", "resnet18", "resnet34", "--plot", str(tmp_path / "c.png"), "-f", "json"])
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "c.png").format == "PNG"
    rows = json.loads(result.stdout)
    figure = compare_figure(rows)
    panels = figure.axes
    assert [axes.get_ylabel() for axes in panels] == [
        "parameters (M)", "MACs (G)", "activation memory (MiB)", "receptive field at the encoder output (px)"]
    assert {axes.get_xlabel() for axes in panels} == {"depth (weighted layers)"}
    points = {line.get_label(): (line.get_xdata()[0], line.get_ydata()[0]) for line in panels[0].get_lines()
              if not line.get_label().startswith("_")}
    assert points == {"resnet18": (18, pytest.approx(11.689512)), "resnet34": (34, pytest.approx(21.797672))}
    fields = {line.get_label(): line.get_ydata()[0] for line in panels[3].get_lines()}
    assert fields["resnet18"] == 435 and fields["resnet34"] == 899
    assert {text.get_text() for text in panels[1].texts} == {"resnet18", "resnet34"}  # models labelled


def test_compare_plot_with_input_sizes_is_against_input_size(tmp_path):
    result = runner.invoke(app, ["compare", "resnet18", "-i", "128,224", "--plot", str(tmp_path / "c.svg"),
                                 "-f", "json"])
    assert result.exit_code == 0, result.output
    figure = compare_figure(json.loads(result.stdout))
    macs = figure.axes[1]
    assert macs.get_xlabel() == "input size (px, larger side)"
    (line,) = [line for line in macs.get_lines() if line.get_label() == "resnet18"]
    assert list(line.get_xdata()) == [128, 224]
    assert line.get_ydata()[1] == pytest.approx(1.814073344)  # the published 1.8 G MACs at 224
    assert (tmp_path / "c.svg").read_text().startswith("<?xml")


# ------------------------------------------------------------------------------------------- terminal heatmap


def test_terminal_heatmap_uses_two_characters_per_square_cell():
    mass = tuple(tuple(1.0 if (row, column) == (5, 40) else 0.0 for column in range(64)) for row in range(32))
    lines = erf_heatmap(mass, columns=32)
    assert len(lines) == 8 and {len(line) for line in lines} == {32}  # 16 cells across, 8 down: 4x4 px each
    assert all(line[i] == line[i + 1] for line in lines for i in range(0, 32, 2))
    assert lines[1][20:22] == "██" and set(lines[1][:20] + lines[1][22:]) == {" "}  # pixel (5, 40): cell (1, 10)


def test_heatmap_title_is_never_wrapped(three_layer):
    from resnet_inspect.pipeline.rf import load_rf_model, rf_report

    model, name = load_rf_model("resnet20", 3, None, real=True)
    text = render_table(rf_report(model, name, (32, 32), erf=True, erf_samples=1), width=70)
    assert "Gradient mass over the input (shade = sqrt of mass)" in text.splitlines()


# ------------------------------------------------------------------------------------------------- the docs


@pytest.mark.slow
def test_docs_pictures_script_draws_every_picture_the_docs_show(tmp_path):
    page = (ROOT / "docs" / "pictures.md").read_text()
    shown = re.findall(r"!\[[^\]]*\]\(images/([^)]+)\)", page)
    assert len(shown) >= 4
    subprocess.run([sys.executable, str(ROOT / "docs" / "make_pictures.py"), str(tmp_path)], check=True,
                   cwd=ROOT, timeout=300, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    for name in shown:
        assert (tmp_path / name).stat().st_size > 1000, name
        assert (ROOT / "docs" / "images" / name).is_file(), name
    assert io.BytesIO((tmp_path / shown[0]).read_bytes()).read(4) in (b"\x89PNG", b"<?xm")
