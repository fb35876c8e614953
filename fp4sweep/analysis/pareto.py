"""Pareto fronts of quality gap against overhead, their hypervolume, and recipes good everywhere.

Both objectives are minimised: the seed-mean relative loss gap, and an overhead (modelled, or
measured step time relative to the baseline). Non-dominated sets and hypervolumes come from
moocore; recipes that tie on the front are all kept.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import moocore
import numpy as np
import pandas as pd

from fp4sweep.analysis.quality import RECIPE_KEY, TASK_KEY, task_name

QUALITY = "loss_gap_mean"
# Which overhead each front measures quality against: name -> column of the recipe summary.
OVERHEADS = {"model": "overhead.model", "measured": "measured_overhead"}


@dataclass(frozen=True)
class ReferencePoint:
    """The fixed corner hypervolumes are measured from; stored with each report so runs compare.

    Recipes beyond it (a loss gap above ``quality_gap``, or more overhead) add no hypervolume.
    """

    quality_gap: float = 1.0
    model_overhead: float = 1.0
    measured_overhead: float = 1.0

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not np.isfinite(value):
                raise ValueError(f"ReferencePoint.{name} must be a finite number, got {value!r}")

    def corner(self, overhead: str) -> list[float]:
        """The reference point in (quality gap, overhead) for the named overhead."""
        if overhead not in OVERHEADS:
            raise ValueError(f"unknown overhead {overhead!r}; valid: {list(OVERHEADS)}")
        return [self.quality_gap, getattr(self, f"{overhead}_overhead")]


def pareto_fronts(
    summary: pd.DataFrame, reference: ReferencePoint
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Mark each recipe's front membership and measure each front's hypervolume.

    Returns the summary with a boolean ``front.<overhead>`` column per overhead present (only
    eligible recipes, those with a gap and no diverged seed, can be on a front), and one row per
    (task, size, overhead) with the front's size and hypervolume.
    """
    summary = summary.copy()
    rows = []
    for overhead, column in OVERHEADS.items():
        if column not in summary.columns:
            continue
        flag = f"front.{overhead}"
        summary[flag] = False
        candidates = summary[summary["eligible"] & summary[column].notna()]
        for (task, size), group in candidates.groupby(TASK_KEY, sort=True):
            points = group[[QUALITY, column]].to_numpy(dtype=float)
            on_front = moocore.is_nondominated(points, keep_weakly=True)
            summary.loc[group.index[on_front], flag] = True
            corner = reference.corner(overhead)
            rows.append(
                {
                    "task": task,
                    "size": size,
                    "overhead": overhead,
                    "n_recipes": len(group),
                    "n_front": int(on_front.sum()),
                    "hypervolume": float(moocore.hypervolume(points[on_front], ref=corner)),
                    "reference_quality_gap": corner[0],
                    "reference_overhead": corner[1],
                }
            )
    columns = [*TASK_KEY, "overhead", "n_recipes", "n_front", "hypervolume",
               "reference_quality_gap", "reference_overhead"]
    return summary, pd.DataFrame(rows, columns=columns)


def front_slack(summary: pd.DataFrame, overhead: str = "model") -> pd.Series:
    """How far each recipe's loss gap lies above its task's front at the same or lower overhead.

    Zero on the front; infinite for recipes that cannot be on it (a diverged seed, no gap); NaN
    where the task has no front. Indexed like ``summary``.
    """
    column, flag = OVERHEADS[overhead], f"front.{overhead}"
    slack = pd.Series(np.inf, index=summary.index)
    for _, group in summary.groupby(TASK_KEY, sort=False):
        front = group[group[flag]].sort_values(column)
        if front.empty:
            slack[group.index] = np.nan
            continue
        # Best gap of a front recipe costing at most x, for x at each front point.
        best_gap = np.minimum.accumulate(front[QUALITY].to_numpy())
        candidates = group[group["eligible"]]
        cost = candidates[column].to_numpy()
        position = np.searchsorted(front[column].to_numpy(), cost, side="right")
        # An eligible recipe cheaper than the whole front is on it, so position >= 1 there.
        best_affordable = best_gap[np.maximum(position - 1, 0)]
        slack[candidates.index] = candidates[QUALITY].to_numpy() - best_affordable
    return slack


def robust_recipes(
    summary: pd.DataFrame, tolerance: float, overhead: str = "model"
) -> pd.DataFrame:
    """Recipes on, or within ``tolerance`` loss gap of, the front of every task that has one.

    One row per such recipe with its slack on each task and the largest, best first. A recipe
    missing from a task, or that diverged on it, does not qualify.
    """
    if not np.isfinite(tolerance) or tolerance < 0:
        raise ValueError(f"tolerance must be a finite number >= 0, got {tolerance!r}")
    flag = f"front.{overhead}"
    columns = ["recipe_id", "recipe_label", "max_slack", "mean_overhead"]
    if flag not in summary.columns or not summary[flag].any():
        return pd.DataFrame(columns=columns)
    table = summary.assign(slack=front_slack(summary, overhead))
    table = table[table.groupby(TASK_KEY)[flag].transform("any")]
    slack = table.pivot(index="recipe_id", columns=TASK_KEY, values="slack")
    slack.columns = [f"slack: {task_name(task, size)}" for task, size in slack.columns]
    slack = slack[slack.notna().all(axis=1)]
    slack.insert(0, "max_slack", slack.max(axis=1))
    per_recipe = table.groupby("recipe_id").agg(
        recipe_label=("recipe_label", "first"), mean_overhead=(OVERHEADS[overhead], "mean")
    )
    robust = per_recipe.join(slack, how="inner")
    robust = robust[robust["max_slack"].le(tolerance)]
    robust = robust.sort_values(["max_slack", "mean_overhead", "recipe_label"])
    return robust.reset_index()[[*columns, *slack.columns[1:]]]


def front_members(summary: pd.DataFrame) -> pd.DataFrame:
    """The recipes on any front, one row per (task, overhead, recipe), cheapest first."""
    tables = []
    for overhead, column in OVERHEADS.items():
        flag = f"front.{overhead}"
        if flag not in summary.columns:
            continue
        front = summary[summary[flag]].sort_values([*TASK_KEY, column, QUALITY])
        tables.append(front.assign(overhead=overhead))
    if not tables:
        return pd.DataFrame(columns=[*RECIPE_KEY, "overhead"])
    return pd.concat(tables, ignore_index=True)
