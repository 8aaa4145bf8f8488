"""The summary as one self-contained HTML file: no network, no external scripts, styles or fonts.

The page holds the layer tree (collapsible by depth, every column of the terminal table, failed checks
highlighted), the totals, the receptive-field picture and a per-stage bar chart (with ``--train``, a second one:
the bytes each stage saves for the backward), as inline SVG written by ``svg.py``. It reads only the report: its
``to_dict()`` (the JSON contract) and its ``document()`` (the table).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from resnet_inspect.errors import BadInputError
from resnet_inspect.names import call_name
from resnet_inspect.render.document import Document, Table, cell_style, cell_text
from resnet_inspect.render.fields import undefined_stages
from resnet_inspect.render.svg import bar_chart_svg, fields_legend, fields_svg, saved_chart_svg
from resnet_inspect.render.text import escape

STYLE = """
:root { color-scheme: light; }
body { font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; margin: 0 0 .2em; } h2 { font-size: 1.15em; margin: 1.4em 0 .4em; }
table.layers { border-collapse: collapse; font-size: 12px; }
table.layers th, table.layers td { padding: 2px 8px; border-bottom: 1px solid #e4e4e4; white-space: nowrap; }
table.layers th { position: sticky; top: 0; background: #f4f4f4; text-align: left; }
td.right, th.right { text-align: right; font-variant-numeric: tabular-nums; }
td.center, th.center { text-align: center; }
tr.failed td { background: #fde2e2; }
tr.has-failure > td:first-child::after { content: " \\2717"; color: #c62828; font-weight: bold; }
td .ok, .ok { color: #2e7d32; } td .fail, .fail { color: #c62828; font-weight: bold; }
tr[hidden] { display: none; }
button.toggle { border: none; background: none; cursor: pointer; width: 1.4em; padding: 0; font: inherit; }
span.leaf { display: inline-block; width: 1.4em; }
.controls button { margin-right: .4em; }
ul.totals, ul.notes { margin: .2em 0; padding-left: 1.2em; } ul.notes li { color: #8a5a00; }
.pictures { display: flex; flex-wrap: wrap; gap: 2em; align-items: flex-start; }
.legend { font-size: 12px; } .legend td { padding: 1px 6px; }
.swatch { display: inline-block; width: 1.2em; height: .8em; border: 2px solid; vertical-align: middle; }
.swatch.global-context { border-style: dashed; } .swatch.union { border-style: dotted; }
@media print {
  body { margin: 0; } .controls, button.toggle { display: none; }
  table.layers th { position: static; } thead { display: table-header-group; } tr { break-inside: avoid; }
  * { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
  .pictures { display: block; } svg { max-width: 100%; height: auto; break-inside: avoid; }
}
"""

# Expand and collapse rows: a row's children are the rows right below it with a larger depth.
SCRIPT = """
(function () {
  "use strict";
  var rows = Array.prototype.slice.call(document.querySelectorAll("table.layers tbody tr"));
  function depth(row) { return Number(row.getAttribute("data-depth")); }
  function setOpen(index, open) {
    var row = rows[index], button = row.querySelector("button.toggle");
    if (!button) { return; }
    button.setAttribute("aria-expanded", String(open));
    button.textContent = open ? "\\u25BE" : "\\u25B8";
    var base = depth(row), hiddenBelow = Infinity;
    for (var i = index + 1; i < rows.length && depth(rows[i]) > base; i++) {
      var child = rows[i], level = depth(child);
      if (level <= hiddenBelow) { hiddenBelow = Infinity; }
      child.hidden = !open || level > hiddenBelow;
      var inner = child.querySelector("button.toggle");
      if (!child.hidden && inner && inner.getAttribute("aria-expanded") !== "true") { hiddenBelow = level; }
    }
  }
  function showDepth(limit) {
    rows.forEach(function (row, index) {
      row.hidden = depth(row) > limit;
      var button = row.querySelector("button.toggle");
      if (button) { button.setAttribute("aria-expanded", String(depth(row) < limit));
                    button.textContent = depth(row) < limit ? "\\u25BE" : "\\u25B8"; }
    });
  }
  rows.forEach(function (row, index) {
    var button = row.querySelector("button.toggle");
    if (button) {
      button.addEventListener("click", function () {
        setOpen(index, button.getAttribute("aria-expanded") !== "true");
      });
    }
  });
  Array.prototype.forEach.call(document.querySelectorAll(".controls button"), function (button) {
    button.addEventListener("click", function () { showDepth(Number(button.getAttribute("data-depth"))); });
  });
}());
"""


OUTSIDE_MODULES = "(outside modules)"  # the bar for what the model's own forward and parameters hold


def stage_costs(summary: Mapping[str, Any]) -> list[tuple[str, int, int]]:
    """(name, MACs, parameters) per stage, as the report gives them: ``macs_by_stage`` and ``params_by_stage``
    (the stem, each stage as in compare and rf, the head), which add up to the totals.

    A model without stages gets one bar per top-level module, each module's parameters once however often it
    runs, and one more bar for what runs outside them, so the bars add up to the totals too.
    """
    totals = summary["totals"]
    by_stage = totals.get("params_by_stage") or {}
    if by_stage:
        macs = totals.get("macs_by_stage") or {}
        return [(name, macs.get(name, 0), params) for name, params in by_stage.items()]
    bars: dict[str, tuple[int, int]] = {}
    for layer in summary["layers"]:
        if layer["depth"] == 1:
            macs, params = bars.get(layer["name"], (0, layer["params"]))
            bars[layer["name"]] = (macs + layer["macs"], params)
    outside = (totals["macs"] - sum(macs for macs, _ in bars.values()),
               totals["params"] - sum(params for _, params in bars.values()))
    if any(outside):
        bars[OUTSIDE_MODULES] = outside
    return [(name, macs, params) for name, (macs, params) in bars.items()]


def stage_values(summary: Mapping[str, Any], key: str) -> dict[str, int]:
    """A per-layer figure (inclusive, such as ``macs`` or ``saved_bytes``) per stage: each stage module's own, the
    stem's from the calls before the first stage that hold no stage, and the rest of the total to the head.
    Models without residual stages: one entry per top-level module."""
    layers = summary["layers"]
    by_stage = summary["totals"].get("params_by_stage") or {}
    stage_names = [name for name in by_stage if name not in ("stem", "head")]
    if not stage_names:
        return {layer["name"]: layer[key] or 0 for layer in layers if layer["depth"] == 1}
    first = min((index for index, layer in enumerate(layers) if layer["name"] in stage_names), default=len(layers))
    outer: list[str] = []  # the outermost calls before the first stage that enclose no stage
    stem = 0
    for layer in layers[:first]:
        name = layer["name"]
        if any(stage.startswith(name + ".") for stage in stage_names):
            continue
        if any(name.startswith(enclosing + ".") for enclosing in outer):
            continue
        outer.append(name)
        stem += layer[key] or 0
    stages: dict[str, int] = {}
    calls: dict[str, int] = {}  # a stage run again is "name (call 2)", as the stage model names it
    for layer in layers:
        calls[layer["name"]] = calls.get(layer["name"], 0) + 1
        call = call_name(layer["name"], calls[layer["name"]])
        if call in stage_names:
            stages[call] = layer[key] or 0
    head = (summary["totals"][key] or 0) - stem - sum(stages.values())
    return {"stem": stem, **{name: stages.get(name, 0) for name in stage_names}, "head": max(0, head)}


def _saved_section(summary: Mapping[str, Any]) -> str:
    """`summary --train`: the bytes each stage saves for the backward, against the forward MACs that recomputing
    it would cost (activation checkpointing keeps only a stage's input and runs its forward again)."""
    if summary["totals"].get("saved_bytes") is None:
        return ""
    saved, macs = stage_values(summary, "saved_bytes"), stage_values(summary, "macs")
    chart = saved_chart_svg([(name, size, macs.get(name, 0)) for name, size in saved.items()])
    explanation = ("Activation checkpointing keeps only a stage's input and recomputes its forward pass during the "
                   "backward: it pays where a stage saves many bytes for few MACs (the MiB per GMAC column).")
    return f"<h2>Saved for backward per stage</h2><p>{escape(explanation)}</p><figure>{chart}</figure>"


def _timeline_section(summary: Mapping[str, Any]) -> str:
    """`summary --train`: the step's memory over time by kind, module by module, the peak marked."""
    timeline = summary.get("memory_timeline")
    if not timeline:
        return ""
    from resnet_inspect.render.timeline_svg import timeline_svg

    explanation = ("Live bytes through one training step (forward, backward, optimizer step), stacked by kind: each "
                   "column is one module's stretch at its highest moment.")
    return f"<h2>Memory of the step</h2><p>{escape(explanation)}</p><figure>{timeline_svg(timeline)}</figure>"


def _parents(depths: Sequence[int]) -> list[int | None]:
    """Each row's enclosing row: the nearest row above it with a smaller depth (rows are in tree order)."""
    parents: list[int | None] = []
    stack: list[int] = []
    for index, depth in enumerate(depths):
        while stack and depths[stack[-1]] >= depth:
            stack.pop()
        parents.append(stack[-1] if stack else None)
        stack.append(index)
    return parents


def _cell_class(style: str | None, justify: str) -> str:
    classes = [justify] if justify != "left" else []
    if style:
        classes.append("fail" if "red" in style else "ok" if "green" in style else "")
    return " ".join(name for name in classes if name)


def _layer_table(table: Table, layers: Sequence[Mapping[str, Any]], open_depth: int) -> str:
    """One row per layer, in tree order; rows deeper than ``open_depth`` start hidden, except on a failure's path."""
    depths = [layer["depth"] for layer in layers]
    parents = _parents(depths)
    failed = [bool(layer.get("arithmetic") and layer["arithmetic"].get("ok") is False) for layer in layers]
    has_children = [False] * len(layers)
    on_failure_path = [False] * len(layers)
    for index, parent in enumerate(parents):
        if parent is not None:
            has_children[parent] = True
        if failed[index]:
            ancestor = parent
            while ancestor is not None:
                on_failure_path[ancestor] = True
                ancestor = parents[ancestor]
    expanded = [(depth < open_depth or on_failure_path[index]) and has_children[index]
                for index, depth in enumerate(depths)]
    visible: list[bool] = []
    for parent in parents:
        visible.append(parent is None or (visible[parent] and expanded[parent]))
    header = "".join(f'<th class="{column.justify}">{escape(column.header)}</th>' for column in table.columns)
    body = []
    for index, (layer, row) in enumerate(zip(layers, table.rows, strict=True)):
        classes = ["layer", *(["failed"] * failed[index]), *(["has-failure"] * on_failure_path[index])]
        cells = []
        for position, (column, cell) in enumerate(zip(table.columns, row, strict=True)):
            text = escape(cell_text(cell).strip() if position == 0 else cell_text(cell))
            if position == 0:
                toggle = (f'<button class="toggle" type="button" aria-expanded="{str(expanded[index]).lower()}" '
                          f'aria-label="expand {escape(layer["name"])}">{"▾" if expanded[index] else "▸"}</button>'
                          if has_children[index] else '<span class="leaf"></span>')
                indent = 1.2 * (layer["depth"] - 1)
                cells.append(f'<td style="padding-left:{indent:.1f}em" title="{escape(layer["name"])}">'
                             f"{toggle}{text}</td>")
                continue
            css = _cell_class(cell_style(cell), column.justify)
            cells.append(f'<td class="{css}">{text}</td>' if css else f"<td>{text}</td>")
        hidden = "" if visible[index] else " hidden"
        body.append(f'<tr class="{" ".join(classes)}" data-depth="{layer["depth"]}"{hidden}>{"".join(cells)}</tr>')
    return (f'<table class="layers"><thead><tr>{header}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table>')


def _fields_section(rf: Mapping[str, Any] | None) -> str:
    if rf is None:
        return ""
    try:
        picture = fields_svg(rf)
    except BadInputError as exc:  # a 3-D input: the numbers are in the table, the picture is not drawn
        return f"<h2>Receptive fields</h2><p>Not drawn: {escape(str(exc))}</p>"
    if not picture:
        reasons = "; ".join(undefined_stages(rf))
        return f"<h2>Receptive fields</h2><p>No stage has a receptive field: {escape(reasons)}</p>"
    legend = "".join(
        f'<tr><td><span class="swatch {kind}" style="border-color:{colour}"></span></td>'
        f"<td>{escape(label)}</td><td>{escape(geometry)}</td></tr>"
        for colour, label, geometry, kind in fields_legend(rf)
    )
    undefined = "".join(f"<li>{escape(line)}</li>" for line in undefined_stages(rf))
    notes = (
        "The input is drawn to scale with the field of each stage's centre unit; the grey dotted area is zero "
        "padding, the tint marks the part of the input the field covers. Dashed and hatched: the unit also sees "
        "the whole input (global context). Dotted: the union of paths whose fields are not aligned."
    )
    return (f"<h2>Receptive fields</h2><div class=\"pictures\"><figure>{picture}</figure>"
            f'<div class="legend"><table>{legend}</table><p>{escape(notes)}</p>'
            f'{f"<ul>{undefined}</ul>" if undefined else ""}</div></div>')


def summary_html(summary: Mapping[str, Any], document: Document, rf: Mapping[str, Any] | None = None,
                 open_depth: int | None = None) -> str:
    """The page: ``summary`` is the report's JSON, ``document`` its table with every layer, ``rf`` the `rf`
    JSON of the same model (stages), ``open_depth`` how deep the tree starts expanded (default 2)."""
    table = document.tables[0]
    layers = summary["layers"]
    depth_limit = open_depth or 2
    max_depth = max((layer["depth"] for layer in layers), default=1)
    controls = "".join(f'<button type="button" data-depth="{depth}">depth {depth}</button>'
                       for depth in range(1, max_depth + 1))
    totals = "".join(f"<li>{escape(line)}</li>" for line in table.footer)
    notes = "".join(f"<li>{escape(note)}</li>" for note in document.notes)
    failed = summary.get("arithmetic", {}).get("failed", 0)
    verdict = (f'<p class="fail">{failed} layer(s) fail the convolution-arithmetic check (highlighted)</p>'
               if failed else '<p class="ok">every checked layer agrees with convolution arithmetic</p>')
    chart = bar_chart_svg(stage_costs(summary))
    title = escape(f"{summary['model']}: resnet-inspect summary")
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{title}</title><style>{STYLE}</style></head><body>"
        f"<h1>{escape(table.title)}</h1>{verdict}"
        f'<h2>Totals</h2><ul class="totals">{totals}</ul>'
        f'{f"<ul class=notes>{notes}</ul>" if notes else ""}'
        f"{_fields_section(rf)}"
        f'<h2>MACs and parameters per stage</h2><figure>{chart}</figure>'
        f"{_saved_section(summary)}"
        f"{_timeline_section(summary)}"
        f'<h2>Layers</h2><p class="controls">Expand to: {controls}</p>'
        f"{_layer_table(table, layers, depth_limit)}"
        f"<script>{SCRIPT}</script></body></html>\n"
    )


__all__ = ["stage_costs", "stage_values", "summary_html"]
