"""The picture of a checkpointing plan (``fit --train --checkpoint auto --plot``): the memory-versus-recompute
curve of the plans the search evaluated at the answer's batch size, the budget, and the plan chosen. It draws the
``checkpoint`` object of the JSON fit report, nothing else."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from resnet_inspect.render.plot import _plain_text, figure_bytes

if TYPE_CHECKING:
    from matplotlib.figure import Figure

MIB = 2**20


@_plain_text
def checkpoint_figure(fit: Mapping[str, Any]) -> Figure:
    """Peak (MiB) against recomputed GMACs, one point per plan (labelled by how many blocks it checkpoints), the
    budget as a line, the chosen plan ringed."""
    from matplotlib.figure import Figure

    plan = fit["checkpoint"]
    curve = sorted(plan["curve"], key=lambda point: point["recompute_macs"])
    figure = Figure(figsize=(8, 4.8))
    axes = figure.add_subplot()
    recompute = [point["recompute_macs"] / 1e9 for point in curve]
    peaks = [point["peak_bytes"] / MIB for point in curve]
    axes.plot(recompute, peaks, marker="o", color="#4c72b0", zorder=2, label="plans evaluated")
    for point, x, y in zip(curve, recompute, peaks, strict=True):
        axes.annotate(str(point["blocks"]), (x, y), xytext=(4, 4), textcoords="offset points", fontsize=7)
    axes.axhline(fit["budget_bytes"] / MIB, color="#c44e52", linestyle="--", linewidth=1, zorder=1,
                 label=f"budget {fit['budget_bytes'] / MIB:,.1f} MiB")
    axes.scatter([plan["recompute_macs"] / 1e9], [plan["peak_bytes"] / MIB], s=160, facecolors="none",
                 edgecolors="#222222", linewidths=1.5, zorder=3,
                 label=f"chosen: {len(plan['modules'])} modules, {100 * plan['recompute_share']:.1f}% of the step")
    axes.set_xlabel("recomputed in the backward (GMACs)")
    axes.set_ylabel("peak of a training step (MiB)")
    axes.set_title(f"{fit['model']} at batch {plan['batch_size']}: memory against recompute "
                   "(point labels: blocks checkpointed)", fontsize=10)
    axes.legend(loc="upper right", fontsize=8, framealpha=0.9)
    return figure


def checkpoint_picture(report: Any, fmt: str) -> bytes:
    """The fit report's checkpointing curve as ``fmt`` bytes."""
    return figure_bytes(checkpoint_figure(report.to_dict()), fmt)


__all__ = ["checkpoint_figure", "checkpoint_picture"]
