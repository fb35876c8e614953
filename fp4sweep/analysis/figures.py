"""The report's figures, drawn with matplotlib's Agg canvas and returned as PNG data URIs.

Figures are built on ``matplotlib.figure.Figure`` directly, not pyplot, so no global backend or
figure registry is touched and nothing needs closing.
"""

from __future__ import annotations

import base64
import io

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from matplotlib.figure import Figure

FRONT_LABELS_MAX = 30  # number front points on the plot only while the numbers stay legible


def front_figure(
    recipes: pd.DataFrame, quality: str, overhead: str, front: str,
    corner: list[float], xlabel: str, title: str,
) -> str:
    """Every eligible recipe of one task, its Pareto front, and the region it dominates up to
    the hypervolume's reference point ``corner`` (quality gap, overhead), shaded.

    ``recipes`` has the task's eligible recipes; ``front`` names their boolean front column.
    Front points are numbered like the rows of the front table, cheapest first.
    """
    figure = _figure(9.0, 4.2)
    axes = figure.add_subplot()
    points = recipes[[overhead, quality]].to_numpy(dtype=float)
    members = recipes[recipes[front]].sort_values([overhead, quality])
    front_points = members[[overhead, quality]].to_numpy(dtype=float)

    axes.scatter(points[:, 0], points[:, 1], s=8, color="0.65", alpha=0.6, rasterized=True,
                 label=f"recipes ({len(points)})")
    _shade_dominated(axes, front_points, corner)
    axes.step(front_points[:, 0], front_points[:, 1], where="post", color="tab:red", lw=1)
    axes.scatter(front_points[:, 0], front_points[:, 1], s=24, color="tab:red", zorder=3,
                 label=f"Pareto front ({len(front_points)})")
    if len(front_points) <= FRONT_LABELS_MAX:
        for number, (x, y) in enumerate(front_points, start=1):
            axes.annotate(str(number), (x, y), textcoords="offset points", xytext=(4, 4),
                          fontsize=7)

    # Zoom on the recipes, not the reference point, which may lie far out. Near-divergent recipes
    # with huge gaps would squash the front: the view stops above the front and most recipes.
    x_low, x_high = points[:, 0].min(), points[:, 0].max()
    y_low = points[:, 1].min()
    y_high = max(front_points[:, 1].max(), np.quantile(points[:, 1], 0.95))
    x_pad, y_pad = 0.05 * (x_high - x_low or 1.0), 0.05 * (y_high - y_low or 1.0)
    axes.set_xlim(x_low - x_pad, x_high + x_pad)
    axes.set_ylim(y_low - y_pad, y_high + y_pad)
    hidden = int((points[:, 1] > y_high + y_pad).sum())
    if hidden:
        title += f" ({hidden} recipes above the view)"
    axes.set_title(title, fontsize=10)
    axes.set_xlabel(xlabel)
    axes.set_ylabel("relative loss gap to bf16 (mean over seeds)")
    # Outside the axes: inside, it would hide recipes wherever it went.
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    axes.grid(alpha=0.3)
    return _png_data_uri(figure)


def _shade_dominated(axes, front_points: np.ndarray, corner: list[float]) -> None:
    """Fill the area between the front (cheapest first) and the reference point: the hypervolume."""
    inside = front_points[(front_points[:, 0] < corner[1]) & (front_points[:, 1] < corner[0])]
    if not len(inside):
        return
    xs = np.append(inside[:, 0], corner[1])
    ys = np.append(inside[:, 1], inside[-1, 1])
    axes.fill_between(xs, ys, corner[0], step="post", color="tab:red", alpha=0.12, lw=0,
                      label="dominated up to the reference (hypervolume)")


def effects_figure(effects: pd.DataFrame, title: str) -> str:
    """Each estimated effect on the loss gap with its confidence interval, best at the top.

    Reference values (effect zero by definition) are named in each label, not drawn.
    """
    effects = effects[~effects["is_reference"].astype(bool)].sort_values("effect", ascending=False)
    labels = effects["axis"] + " = " + effects["value"] + "  (vs " + effects["reference"] + ")"
    resolved = ((effects["ci_low"] > 0) | (effects["ci_high"] < 0)).to_numpy()
    figure = _figure(9.0, 1.2 + 0.3 * len(effects))
    axes = figure.add_subplot()
    position = np.arange(len(effects))
    errors = np.vstack([effects["effect"] - effects["ci_low"], effects["ci_high"] - effects["effect"]])
    for mask, color, label in ((resolved, "tab:blue", "interval excludes zero"),
                               (~resolved, "0.55", "interval includes zero")):
        if mask.any():
            axes.errorbar(effects["effect"][mask], position[mask], xerr=errors[:, mask], fmt="o",
                          color=color, ms=4, capsize=2, label=label)
    axes.axvline(0.0, color="0.3", lw=0.8)
    axes.set_yticks(position, labels, fontsize=8)
    axes.set_xlabel("effect on the relative loss gap, 95% CI (negative is better)")
    axes.set_title(title, fontsize=10)
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    axes.grid(axis="x", alpha=0.3)
    return _png_data_uri(figure)


def _figure(width: float, height: float) -> Figure:
    # Imported here: matplotlib takes about a second to import, which only a report needs.
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _png_data_uri(figure: Figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
