"""Which recipes of a ladder rung go on to the next: those that could still be on the front.

A rung's result for a recipe is its quality gap (the seed mean, with its Student-t interval over
seeds, as the report computes them: ``fp4sweep.analysis.quality``) and its modelled overhead
(``overhead.model``, exact: no interval). The front is the set of non-dominated recipes by
(mean gap, overhead), ties kept, as on the report's page.

The rule, per task:

- a recipe that diverged on any seed, or has no gap (its trials failed or are missing), stops;
- a recipe is **surely dominated** when some front member costs no more and that member's
  pessimistic gap (upper interval bound) lies below the recipe's optimistic gap (lower bound):
  no outcome within the intervals puts it on the front, so it stops;
- every other recipe could still be on the front: it is promoted, up to the rung's budget.
  Front members always qualify. A recipe with a single seed has no interval: its mean counts
  as both bounds.

Over budget, the candidates nearest the front go first: their distance is the report's front
slack (how far the mean gap lies above the front at the same or lower overhead; zero on it).
When the front alone is over budget, members spread evenly along it by overhead are kept (its
two ends always), which keeps the shape of the front and so most of its hypervolume.
"""

from __future__ import annotations

import math

import moocore
import numpy as np
import pandas as pd

GAP, LOW, HIGH, OVERHEAD = "loss_gap_mean", "loss_gap_ci_low", "loss_gap_ci_high", "overhead.model"

# Why each recipe stops or goes on (the ``reason`` column).
FRONT = "on the front"
WITHIN = "within its interval of the front"
OVER_BUDGET = "could be on the front; over the rung's budget"
DOMINATED = "surely dominated"
DIVERGED = "diverged"
NO_RESULT = "no result"


def promote(summary: pd.DataFrame, keep: int) -> pd.DataFrame:
    """Decide, for one task's recipes at one rung, which go on; at most ``keep`` do.

    ``summary`` has a row per recipe with ``loss_gap_mean``, ``loss_gap_ci_low``,
    ``loss_gap_ci_high``, ``overhead.model``, ``n_diverged`` and ``eligible`` (as
    ``fp4sweep.analysis.quality.summarise_recipes`` gives them). Returns it with ``promoted``
    (bool), ``reason`` and ``distance`` (front slack; NaN where the recipe has no result).
    """
    if keep < 1:
        raise ValueError(f"keep must be at least 1, got {keep!r}")
    table = summary.copy()
    table["promoted"] = False
    table["reason"] = np.where(table["n_diverged"].gt(0), DIVERGED, NO_RESULT)
    table["distance"] = np.nan
    gaps = table[GAP].to_numpy(dtype=float)
    costs = table[OVERHEAD].to_numpy(dtype=float)
    ranked = table.index[table["eligible"].astype(bool) & np.isfinite(gaps) & np.isfinite(costs)]
    if not len(ranked):
        return table

    points = table.loc[ranked, [GAP, OVERHEAD]].to_numpy(dtype=float)
    on_front = moocore.is_nondominated(points, keep_weakly=True)
    # A single seed has no interval: its mean is both bounds.
    low = table.loc[ranked, LOW].fillna(table.loc[ranked, GAP]).to_numpy(dtype=float)
    high = table.loc[ranked, HIGH].fillna(table.loc[ranked, GAP]).to_numpy(dtype=float)
    members = np.flatnonzero(on_front)
    distance = np.empty(len(ranked))
    surely_dominated = np.zeros(len(ranked), dtype=bool)
    for i, (gap, cost) in enumerate(points):
        cheaper = members[points[members, 1] <= cost]
        distance[i] = max(0.0, gap - points[cheaper, 0].min()) if len(cheaper) else 0.0
        surely_dominated[i] = bool((high[cheaper] < low[i]).any())
    table.loc[ranked, "distance"] = distance
    table.loc[ranked, "reason"] = np.where(on_front, FRONT, np.where(surely_dominated, DOMINATED, WITHIN))

    candidates = ranked[~surely_dominated]
    chosen = _within_budget(table.loc[candidates], keep)
    table.loc[chosen, "promoted"] = True
    table.loc[candidates.difference(chosen), "reason"] = OVER_BUDGET
    return table


def _within_budget(candidates: pd.DataFrame, keep: int) -> pd.Index:
    """The candidates that fit the budget: the front first (spread along it if it alone is over
    budget), then the nearest to it."""
    front = candidates[candidates["reason"].eq(FRONT)].sort_values([OVERHEAD, GAP, "recipe_id"])
    if len(front) >= keep:
        spread = np.unique(np.round(np.linspace(0, len(front) - 1, keep)).astype(int))
        return front.index[spread]
    others = candidates.drop(front.index).sort_values(["distance", OVERHEAD, "recipe_id"])
    return front.index.append(others.index[: keep - len(front)])


def budget(keep: int | float, ran: int) -> int:
    """A rung's budget in recipes: ``keep`` itself if a count, else that share of the ``ran``
    recipes of the rung below (rounded up; at least one)."""
    return int(keep) if isinstance(keep, int) else max(1, math.ceil(keep * ran))
