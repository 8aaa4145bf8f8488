"""`summary --format html`: one self-contained page, checked as text and in a real headless Chromium.

The browser tests drive the system Chromium through Playwright (`.ci/run` installs both). Outside CI they are
skipped when either is missing; in CI (CI=true) a missing browser fails them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from resnet_inspect.cli.app import app
from resnet_inspect.render.document import Column, Document, Table
from resnet_inspect.render.html import stage_costs, summary_html

FAILING = '''
from torch import nn


class DeclaresPaddingItSkips(nn.Conv2d):
    """Sets its padding after nn.Conv2d.__init__: with padding_mode="reflect", PyTorch pads by what __init__
    computed (nothing), so the layer declares p=1 and its output is two rows smaller than that says."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.padding = (1, 1)


def failing_cnn():
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(),
        nn.Sequential(DeclaresPaddingItSkips(4, 4, 3, padding_mode="reflect"), nn.ReLU()),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2),
    )
'''
runner = CliRunner()


def summary(*args: str) -> str:
    result = runner.invoke(app, ["summary", *args])
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.fixture(scope="module")
def pages(tmp_path_factory) -> dict[str, tuple[Path, dict]]:
    """resnet18 and a CNN whose check fails: the HTML file and the JSON report of the same command."""
    folder = tmp_path_factory.mktemp("html")
    (folder / "failing.py").write_text(FAILING)
    made = {}
    failing = [f"{folder / 'failing.py'}:failing_cnn", "-i", "16", "--depth", "1"]
    for name, args in (("resnet18", ["resnet18", "--depth", "2"]), ("failing", failing)):
        target = folder / f"{name}.html"
        summary(*args, "--format", "html", "-o", str(target))
        made[name] = (target, json.loads(summary(*args, "--format", "json")))
    return made


# ------------------------------------------------------------------------------------------------ as text


def test_page_is_self_contained(pages):
    html = pages["resnet18"][0].read_text()
    assert html.startswith("<!DOCTYPE html>")
    assert not re.search(r"""(src|href)\s*=|@import|url\((?!#)|@font-face|https?://(?!www\.w3\.org/2000/svg)""",
                         html)
    assert "<script>" in html and "<script src" not in html


def test_page_has_every_column_the_totals_and_both_pictures(pages):
    html, report = pages["resnet18"][0].read_text(), pages["resnet18"][1]
    for header in ("layer", "type", "input", "output", "kernel/stride/pad", "check", "RF", "params", "MACs"):
        assert f">{header}</th>" in html
    assert "parameters: 11,689,512" in html and "MACs: 1,814,073,344" in html
    assert html.count('<g class="field local"') == 5  # stem, 4 layers (the last shared with the output)
    assert 'data-stage="layers.3 = output"' in html
    bars = re.findall(r'<g class="stage-bar" data-stage="([^"]+)" data-macs="(\d+)" data-params="(\d+)"', html)
    assert [name for name, _, _ in bars] == ["stem", *(f"encoder.layers.{i}" for i in range(4)), "head"]
    assert sum(int(macs) for _, macs, _ in bars) == report["totals"]["macs"]
    assert sum(int(params) for _, _, params in bars) == report["totals"]["params"]


def test_depth_option_sets_how_far_the_tree_starts_open(tmp_path):
    target = tmp_path / "r.html"
    summary("resnet18", "--depth", "1", "--format", "html", "-o", str(target))
    rows = re.findall(r'<tr class="layer[^"]*" data-depth="(\d+)"( hidden)?>', target.read_text())
    assert {depth for depth, hidden in rows if not hidden} == {"1"}
    assert {depth for depth, hidden in rows if hidden} == {"2", "3", "4", "5", "6", "7"}  # all there, folded


def test_stage_costs_follow_the_published_resnet18_numbers(pages):
    costs = {name: (macs, params) for name, macs, params in stage_costs(pages["resnet18"][1])}
    assert costs["stem"] == (112 * 112 * 64 * 3 * 7 * 7, 9_536)  # 7x7/2 conv to 64x112x112 (pools: no MACs)
    assert costs["head"] == (512 * 1000, 513_000)  # the 512 -> 1000 classifier


def test_a_three_dimensional_input_gets_a_line_instead_of_a_picture(pages):
    report = pages["resnet18"][1]
    rf = {"model": "conv3d", "input_shape": [1, 1, 8, 8, 8], "stages": [
        {"name": "stem", "size": [3, 3, 3], "stride": [1, 1, 1], "padding": [1, 1, 1], "output_size": [8, 8, 8]}]}
    document = Document((Table("t", (Column("layer"),), tuple((layer["name"],) for layer in report["layers"])),))
    page = summary_html(report, document, rf)
    assert "Not drawn: the receptive-field picture draws 1-D and 2-D inputs; this input has 3 spatial axes" in page
    assert "<svg" in page and 'class="rf-picture"' not in page  # the stage chart is still there


def test_api_to_html_is_the_cli_page(pages):
    from resnet_inspect.capture.loader import load_model
    from resnet_inspect.pipeline.build import capture_model, summary_from_capture

    network, name = load_model("resnet18")
    report = summary_from_capture(capture_model(network, (224, 224), 1, 3, name), model=network)
    assert report.to_html() == pages["resnet18"][0].read_text()


# ------------------------------------------------------------------------------------------- in a browser


def _chromium() -> str | None:
    return os.environ.get("RESNET_INSPECT_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright  # in the [test] extra: never skipped

    executable = _chromium()
    if executable is None:
        if os.environ.get("CI"):
            pytest.fail("no Chromium found: .ci/run installs the system package")
        pytest.skip("no system Chromium (apt-get install chromium)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture
def open_page(browser):
    """Open a file; collect console errors, page errors and every request that is not the file itself."""
    opened = []

    def open_file(path: Path):
        page = browser.new_page()
        page.problems = []
        page.on("console", lambda message: page.problems.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: page.problems.append(str(error)))
        page.on("request", lambda request: page.problems.append(f"request {request.url}")
                if request.url != path.as_uri() else None)
        page.goto(path.as_uri())
        opened.append(page)
        return page

    yield open_file
    for page in opened:
        page.close()


@pytest.mark.slow
def test_page_loads_without_console_errors_or_requests(pages, open_page):
    page = open_page(pages["resnet18"][0])
    assert page.title() == "resnet18: resnet-inspect summary"
    assert page.locator("svg.rf-picture").is_visible() and page.locator("svg.stage-chart").is_visible()
    assert page.problems == []


@pytest.mark.slow
def test_rows_are_the_layers(pages, open_page):
    for path, report in pages.values():
        page = open_page(path)
        assert page.locator("table.layers tbody tr").count() == len(report["layers"])
        names = page.eval_on_selector_all("table.layers tbody tr td:first-child", "cells => cells.map(c => c.title)")
        assert names == [layer["name"] for layer in report["layers"]]


@pytest.mark.slow
def test_expanding_a_block_shows_its_children(pages, open_page):
    path, report = pages["resnet18"]
    page = open_page(path)
    rows = page.locator("table.layers tbody tr")
    layers = report["layers"]
    # encoder.layers.0 (depth 3) starts collapsed: its blocks (depth 4) are hidden
    block = next(i for i, layer in enumerate(layers) if layer["name"] == "encoder.layers.0")
    children = [i for i, layer in enumerate(layers) if layer["name"].startswith("encoder.layers.0.")
                and layer["depth"] == layers[block]["depth"] + 1]
    assert children and not any(rows.nth(i).is_visible() for i in children)
    rows.nth(block).locator("button.toggle").click()
    assert all(rows.nth(i).is_visible() for i in children)
    grandchildren = [i for i, layer in enumerate(layers) if layer["name"].startswith("encoder.layers.0.")
                     and layer["depth"] > layers[block]["depth"] + 1]
    assert not any(rows.nth(i).is_visible() for i in grandchildren)  # one level at a time
    rows.nth(block).locator("button.toggle").click()
    assert not any(rows.nth(i).is_visible() for i in children)
    page.locator(".controls button", has_text="depth 7").click()
    assert all(rows.nth(i).is_visible() for i in range(len(layers)))
    assert page.problems == []


@pytest.mark.slow
def test_a_failed_check_is_highlighted(pages, open_page):
    path, report = pages["failing"]
    page = open_page(path)
    failed = [i for i, layer in enumerate(report["layers"]) if layer["arithmetic"] and not layer["arithmetic"]["ok"]]
    assert failed == [3]  # 2.0, the DeclaresPaddingItSkips inside the block 2
    rows = page.locator("table.layers tbody tr")
    # the page opens at --depth 1, but the block holding the failure starts open and is marked
    assert "has-failure" in rows.nth(2).get_attribute("class")
    assert rows.nth(2).locator("button.toggle").get_attribute("aria-expanded") == "true"
    row = rows.nth(3)
    assert row.is_visible() and "failed" in row.get_attribute("class")
    background = row.locator("td").first.evaluate("cell => getComputedStyle(cell).backgroundColor")
    assert background == "rgb(253, 226, 226)"
    check = row.locator("td.fail")
    assert check.inner_text().startswith("✗")
    assert check.evaluate("cell => getComputedStyle(cell).color") == "rgb(198, 40, 40)"
    assert page.locator("tr.failed").count() == 1
    assert "1 layer(s) fail the convolution-arithmetic check" in page.locator("body").inner_text()


@pytest.mark.slow
def test_page_prints_without_the_controls(pages, open_page):
    page = open_page(pages["resnet18"][0])
    page.emulate_media(media="print")
    assert not page.locator(".controls").is_visible()
    assert page.pdf()[:4] == b"%PDF"


def test_a_stage_run_twice_has_both_calls_in_the_saved_bytes_chart_and_the_head_keeps_only_its_own() -> None:
    """Each call of a reused stage is a bar of its own (its MACs FlopCounterMode's count of the stage); the head
    is the classifier alone, not the second call."""
    import torch

    import resnet_inspect
    from resnet_inspect.render.html import stage_values
    from tests import oracle_torch
    from tests.test_reliability_round4_fields import StageTwice

    model = StageTwice()
    summary = resnet_inspect.summary(model, 64, batch_size=2, train=True).to_dict()
    macs, saved = stage_values(summary, "macs"), stage_values(summary, "saved_bytes")
    stage_macs = oracle_torch.flop_counter_macs(model.stage, torch.zeros(2, 8, 32, 32))
    assert macs["stage"] == macs["stage (call 2)"] == stage_macs
    assert macs["head"] == oracle_torch.flop_counter_macs(model.fc, torch.zeros(2, 8))
    assert saved["stage (call 2)"] > 0
    assert sum(saved.values()) == summary["totals"]["saved_bytes"]
