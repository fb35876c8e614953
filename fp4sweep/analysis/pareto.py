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


REFERENCE_MARGIN = 0.10  # a reference from the data lies this share of the range past the nadir


@dataclass(frozen=True)
class ReferencePoint:
    """The corner hypervolumes are measured from; a coordinate left None comes from the data.

    From the data, per task and overhead: the nadir of the task's recipes (the worst gap and the
    worst overhead among those with both) pushed out by ``REFERENCE_MARGIN`` of the range from
    the ideal point (the best of each), so the worst recipes still add a sliver. A given value is
    used for every task, so that two runs compare on the same corner. Recipes beyond it add no
    hypervolume.
    """

    quality_gap: float | None = None
    model_overhead: float | None = None
    measured_overhead: float | None = None

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if value is not None and not np.isfinite(value):
                raise ValueError(f"ReferencePoint.{name} must be a finite number, got {value!r}")

    def corner(self, overhead: str) -> list[float | None]:
        """The reference point in (quality gap, overhead) for the named overhead; None: from data."""
        if overhead not in OVERHEADS:
            raise ValueError(f"unknown overhead {overhead!r}; valid: {list(OVERHEADS)}")
        return [self.quality_gap, getattr(self, f"{overhead}_overhead")]


def pareto_fronts(
    summary: pd.DataFrame, reference: ReferencePoint
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Mark each recipe's front membership and measure each front's hypervolume.

    Returns the summary with, per overhead present, a boolean ``front.<overhead>`` column (only
    eligible recipes, those with a gap and no diverged seed, can be on a front) and a
    ``margin.<overhead>`` column (see ``front_margin``); and one row per (task, size, overhead)
    with the front's size, its reference and ideal points, its hypervolume and that hypervolume
    as a share of the box from the ideal point to the reference (1: one recipe is best at both).
    """
    summary = summary.copy()
    rows = []
    for overhead, column in OVERHEADS.items():
        if column not in summary.columns:
            continue
        flag = f"front.{overhead}"
        summary[flag] = False
        summary[f"margin.{overhead}"] = np.nan
        measured = summary[np.isfinite(summary[[QUALITY, column]].to_numpy(dtype=float)).all(axis=1)]
        candidates = measured[measured["eligible"]]
        for (task, size), group in candidates.groupby(TASK_KEY, sort=True):
            points = group[[QUALITY, column]].to_numpy(dtype=float)
            on_front = moocore.is_nondominated(points, keep_weakly=True)
            summary.loc[group.index[on_front], flag] = True
            summary.loc[group.index, f"margin.{overhead}"] = front_margin(points, on_front)
            every = measured[(measured["task"] == task) & (measured["size"] == size)]
            rows.append({
                "task": task, "size": size, "overhead": overhead, "n_recipes": len(group),
                "n_front": int(on_front.sum()),
                **_hypervolume(points[on_front], every[[QUALITY, column]].to_numpy(dtype=float),
                               reference.corner(overhead)),
            })
    columns = [*TASK_KEY, "overhead", "n_recipes", "n_front", "hypervolume", "hypervolume_share",
               "reference_quality_gap", "reference_overhead", "reference_from",
               "ideal_quality_gap", "ideal_overhead"]
    return summary, pd.DataFrame(rows, columns=columns)


def _hypervolume(front: np.ndarray, every: np.ndarray, given: list[float | None]) -> dict:
    """The front's hypervolume from the given corner or one from the data, and its share."""
    ideal, nadir = every.min(axis=0), every.max(axis=0)
    span = np.where(nadir > ideal, nadir - ideal, 1.0)  # one recipe, or a tie: a unit range
    corner = [
        nadir[i] + REFERENCE_MARGIN * span[i] if value is None else value
        for i, value in enumerate(given)
    ]
    volume = float(moocore.hypervolume(front, ref=corner))
    box = float(np.prod(np.asarray(corner) - ideal))
    return {
        "hypervolume": volume,
        "hypervolume_share": volume / box if box > 0 else np.nan,
        "reference_quality_gap": corner[0],
        "reference_overhead": corner[1],
        "reference_from": "data" if all(v is None for v in given) else (
            "given" if all(v is not None for v in given) else "given and data"
        ),
        "ideal_quality_gap": ideal[0],
        "ideal_overhead": ideal[1],
    }


def front_margin(points: np.ndarray, on_front: np.ndarray) -> np.ndarray:
    """Per front member (gap, overhead), how much its gap could rise before another recipe
    costing no more dominates it; infinite for the only recipe at its cost, NaN off the front.

    A member whose margin is below the half-width of its gap's confidence interval may owe its
    place to seed noise: the report flags it.
    """
    margins = np.full(len(points), np.nan)
    for i in np.flatnonzero(on_front):
        others = np.delete(np.arange(len(points)), i)
        cheaper = others[points[others, 1] <= points[i, 1]]
        margins[i] = (points[cheaper, 0] - points[i, 0]).min() if len(cheaper) else np.inf
    return margins


def fragile(front: pd.DataFrame, overhead: str) -> pd.Series:
    """Whether each front member's margin (``front_margin``) is below the half-width of its gap's
    confidence interval: seed noise may have put it on the front."""
    return front[f"margin.{overhead}"] < front["loss_gap_ci_high"] - front[QUALITY]


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
