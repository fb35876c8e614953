"""Whether recipe rankings carry across fidelities: training lengths, or model sizes.

A store holds several fidelities of a task when its trials of that task were run at several
size presets, or at several parameter settings of one (a ladder's rungs: their store ``size``
reads e.g. ``tiny, steps=25``). Each fidelity is a task size of its own in the report, with its
own baseline and front. Consecutive fidelities are compared on the recipes run at both:

- **rank correlation** of the quality gap (seed mean): Spearman's rho with a Fisher-z interval,
  using Bonett and Wright's (2000) standard error for Spearman's rho,
  sqrt((1 + rho^2 / 2) / (n - 3)); it needs at least four recipes. It answers "does the cheap
  proxy order the recipes as the expensive setting does", the question behind the paper's note
  that FP4 training dynamics may not be consistent across model scales;
- **front changes**: the members of the lower fidelity's front that are not on the higher one's
  (of those run there), and those the higher fidelity did not run.

Fidelities are ordered by their size preset (``SIZE_ORDER``; others after, by name), then by
training steps, both read from the trials' specs.
"""

from __future__ import annotations

import json
import math
from typing import NamedTuple

import numpy as np
import pandas as pd
from scipy import stats

from fp4sweep.analysis.pareto import QUALITY
from fp4sweep.analysis.quality import CONFIDENCE

SIZE_ORDER = ("tiny", "small", "paper")  # the task configs' size presets, cheapest first


class RankCorrelation(NamedTuple):
    rho: float  # Spearman's rank correlation
    low: float  # the interval's bounds (NaN below four recipes)
    high: float
    n: int  # recipes with a gap at both fidelities


def rank_correlation(gaps: pd.DataFrame, lower: str, higher: str, confidence: float = CONFIDENCE) -> RankCorrelation:
    """Spearman's rho between two columns of recipe gaps (one row per recipe), with a Fisher-z
    interval at ``confidence``; rows with a missing gap in either column are left out.

    The columns may be training lengths, rungs of a ladder or model sizes alike.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie between 0 and 1, got {confidence!r}")
    for column in (lower, higher):
        if column not in gaps.columns:
            raise ValueError(f"no column {column!r} of gaps; columns: {list(gaps.columns)}")
    both = gaps[[lower, higher]].astype(float).dropna()
    n = len(both)
    if n < 2 or both[lower].nunique() < 2 or both[higher].nunique() < 2:
        return RankCorrelation(math.nan, math.nan, math.nan, n)
    rho = float(stats.spearmanr(both[lower], both[higher]).statistic)
    if n < 4:
        return RankCorrelation(rho, math.nan, math.nan, n)
    z = stats.norm.ppf(0.5 + confidence / 2)
    error = math.sqrt((1 + rho**2 / 2) / (n - 3))
    with np.errstate(divide="ignore"):
        centre = np.arctanh(rho)  # infinite for a perfect ranking: the interval closes on it
    return RankCorrelation(rho, float(np.tanh(centre - z * error)), float(np.tanh(centre + z * error)), n)


def fidelity_order(trials: pd.DataFrame) -> dict[str, list[str]]:
    """Per task with more than one fidelity: its store sizes, lowest fidelity first."""
    return {task: [size for size, _ in sizes] for task, sizes in _fidelities(trials).items()}


def _fidelities(trials: pd.DataFrame) -> dict[str, list[tuple[str, str]]]:
    """Per task with more than one fidelity: (store size, size preset), lowest fidelity first."""
    keys = {}
    # Rows written without a spec (by other writers) are ordered by their size's name alone.
    specs = trials.assign(spec=trials["spec"] if "spec" in trials.columns else "{}")
    for (task, size), spec in specs.groupby(["task", "size"], sort=True)["spec"].first().items():
        values = json.loads(spec or "{}")
        preset = values.get("size", size)
        rank = SIZE_ORDER.index(preset) if preset in SIZE_ORDER else len(SIZE_ORDER)
        steps = values.get("params", {}).get("steps", math.inf)
        keys.setdefault(task, []).append(((rank, preset, steps, size), (size, preset)))
    return {task: [pair for _, pair in sorted(sizes)] for task, sizes in keys.items() if len(sizes) > 1}


def fidelity_changes(recipes: pd.DataFrame, trials: pd.DataFrame, overhead: str = "model") -> pd.DataFrame:
    """One row per pair of consecutive fidelities of a task: the rank correlation of the gap,
    the lower front's members that fell off the higher front, or were not run there, and whether
    the two differ in model size (their size presets), not only in training length.

    ``recipes`` is the report's recipe summary with fronts marked (``pareto_fronts``); ``trials``
    the store's rows (for the specs that order the fidelities).
    """
    columns = ["task", "lower", "higher", "n_recipes", "rho", "rho_low", "rho_high",
               "n_front_lower", "fell_off", "not_run_higher", "across_sizes"]
    rows = []
    flag = f"front.{overhead}"
    for task, sizes in _fidelities(trials).items():
        of_task = recipes[recipes["task"].eq(task)]
        for (lower, lower_preset), (higher, higher_preset) in zip(sizes, sizes[1:]):
            low = of_task[of_task["size"].eq(lower)].set_index("recipe_id")
            high = of_task[of_task["size"].eq(higher)].set_index("recipe_id")
            gaps = pd.DataFrame({
                "lower": low[QUALITY].where(low["eligible"]),
                "higher": high[QUALITY].where(high["eligible"]),
            })
            result = rank_correlation(gaps, "lower", "higher")
            front = low[low[flag]] if flag in low.columns else low.iloc[:0]
            ran = front.index.isin(high.index)
            on_higher = high[flag] if flag in high.columns else pd.Series(False, index=high.index)
            fell = front[ran & ~front.index.map(lambda r: bool(on_higher.get(r, False)))]
            rows.append({
                "task": task, "lower": lower, "higher": higher, "n_recipes": result.n,
                "rho": result.rho, "rho_low": result.low, "rho_high": result.high,
                "n_front_lower": len(front),
                "fell_off": "; ".join(sorted(fell["recipe_label"])),
                "not_run_higher": "; ".join(sorted(front[~ran]["recipe_label"])),
                "across_sizes": lower_preset != higher_preset,
            })
    return pd.DataFrame(rows, columns=columns)
