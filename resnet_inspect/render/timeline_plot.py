"""The picture of a training step: live bytes over the step, stacked by kind, module by module through the
forward, the backward and the optimizer step, the peak marked and named (``summary --train --plot``). It draws the
``memory_timeline`` of the JSON report, nothing else."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from resnet_inspect.render.plot import _plain_text, figure_bytes

if TYPE_CHECKING:
    from matplotlib.figure import Figure

KIND_COLOURS = {"weights": "#4c72b0", "input": "#8c8c8c", "optimizer_state": "#55a868", "gradients": "#c44e52",
                "activations": "#dd8452", "temporaries": "#f2c14e", "fsdp": "#8172b3"}
KIND_LABELS = {"weights": "weights and buffers", "input": "input", "optimizer_state": "optimizer state",
               "gradients": "gradients", "activations": "activations (kept from the forward)",
               "temporaries": "temporaries", "fsdp": "FSDP gathered units and buffers"}
PHASE_SHADES = {"forward": "#ffffff", "backward": "#f3f6fb", "optimizer": "#f6f3ee"}
MIB = 2**20


@_plain_text
def timeline_figure(timeline: Mapping[str, Any], title: str = "") -> Figure:
    """Stacked live bytes (MiB) per module stretch; the phases shaded and named; the peak marked."""
    from matplotlib.figure import Figure

    points = timeline["points"]
    kinds = [kind for kind in timeline["kinds"] if any(point["bytes"].get(kind, 0) for point in points)]
    steps = list(range(len(points)))
    figure = Figure(figsize=(11, 4.8))
    axes = figure.add_subplot()
    start = 0
    for index in range(1, len(points) + 1):
        if index == len(points) or points[index]["phase"] != points[start]["phase"]:
            phase = points[start]["phase"]
            axes.axvspan(start - 0.5, index - 0.5, color=PHASE_SHADES.get(phase, "#ffffff"), zorder=0)
            axes.text((start + index - 1) / 2, 1.01, phase, transform=axes.get_xaxis_transform(), ha="center",
                      va="bottom", fontsize=9)
            start = index
    axes.stackplot(steps, [[point["bytes"].get(kind, 0) / MIB for point in points] for kind in kinds],
                   labels=[KIND_LABELS.get(kind, kind) for kind in kinds],
                   colors=[KIND_COLOURS.get(kind, "#999999") for kind in kinds], step="mid", zorder=2)
    peak = timeline["peak_index"]
    peak_mib = timeline["peak_bytes"] / MIB
    axes.axvline(peak, color="#222222", linestyle="--", linewidth=1, zorder=3)
    axes.annotate(f"peak {peak_mib:,.1f} MiB\nin {timeline['peak']}", (peak, peak_mib), xytext=(8, -4),
                  textcoords="offset points", ha="left", va="top", fontsize=8, zorder=4,
                  bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.85})
    axes.set_xlim(-0.5, len(points) - 0.5)
    axes.set_ylim(0, peak_mib * 1.08 or 1)
    axes.set_xlabel("the step, module by module (forward, backward, optimizer)")
    axes.set_ylabel("live MiB (per device when sharded)")
    axes.legend(loc="upper left", fontsize=8, framealpha=0.9)
    if title:
        figure.suptitle(title)
    return figure


def timeline_picture(report: Any, fmt: str) -> bytes:
    """The summary report's memory timeline as ``fmt`` bytes."""
    summary = report.to_dict()
    timeline = summary["memory_timeline"]
    return figure_bytes(timeline_figure(timeline, f"{summary['model']}: memory of one training step"), fmt)


__all__ = ["timeline_figure", "timeline_picture"]
