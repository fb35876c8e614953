"""The effect of each technique choice on quality: ordinary least squares on one-hot axes.

Per task, every finished trial's relative loss gap is regressed on an intercept plus one indicator
per axis value, leaving out each axis' most common value as its reference. A value's coefficient
is then its effect on the loss gap relative to that reference, all other axes held fixed; negative
is better. Diverged trials have no gap and are not in the fit: they are counted by
``quality.outcomes_by_axis``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from fp4sweep.analysis.quality import CONFIDENCE, TASK_KEY, axis_columns, task_name

EFFECT_COLUMNS = [
    *TASK_KEY, "axis", "value", "reference", "is_reference", "effect", "ci_low", "ci_high",
    "p_value", "n_trials",
]


def axis_effects(runs: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Effects of every axis value per task, best first, and a sentence per task not fitted."""
    finished = runs[np.isfinite(runs["loss_gap"].to_numpy(dtype=float))]
    tables, problems = [], []
    for (task, size), group in finished.groupby(TASK_KEY, sort=True):
        table, problem = _fit_task(group)
        if problem:
            problems.append(f"{task_name(task, size)}: {problem}")
        if table is not None:
            tables.append(table.assign(task=task, size=size))
    if not tables:
        return pd.DataFrame(columns=EFFECT_COLUMNS), problems
    effects = pd.concat(tables, ignore_index=True)[EFFECT_COLUMNS]
    return effects.sort_values([*TASK_KEY, "effect", "axis", "value"], ignore_index=True), problems


def _fit_task(group: pd.DataFrame) -> tuple[pd.DataFrame | None, str | None]:
    axes = [axis for axis in axis_columns(group) if group[axis].nunique() > 1]
    if not axes:
        return None, "no axis varies among its finished trials; no effects to estimate"

    names, indicators, references = [], [], {}
    for axis in axes:
        counts = group[axis].value_counts()
        # Most common value as reference; ties broken by name so the choice is reproducible.
        levels = sorted(counts.index, key=lambda level: (-counts[level], level))
        references[axis] = levels[0]
        values = group[axis].to_numpy()
        for level in levels[1:]:
            names.append((axis, level))
            indicators.append(values == level)
    design = np.column_stack([np.ones(len(group)), *indicators]).astype(float)

    if len(group) <= design.shape[1]:
        return None, (
            f"{len(group)} finished trials are too few to estimate {design.shape[1]} coefficients"
        )
    rank = np.linalg.matrix_rank(design)
    if rank < design.shape[1]:
        return None, (
            f"the axes {[a.removeprefix('axis.') for a in axes]} are confounded in its trials "
            f"(design rank {rank} < {design.shape[1]} coefficients); effects not estimated"
        )

    # Imported here: statsmodels takes about a second to import, which only a report needs.
    from statsmodels.regression.linear_model import OLS

    fit = OLS(group["loss_gap"].to_numpy(dtype=float), design).fit()
    intervals = fit.conf_int(alpha=1 - CONFIDENCE)
    rows = [
        _row(group, axis, level, references[axis], fit.params[i], intervals[i], fit.pvalues[i])
        for i, (axis, level) in enumerate(names, start=1)
    ]
    rows += [_row(group, axis, level, level) for axis, level in references.items()]
    return pd.DataFrame(rows), None


def _row(
    group: pd.DataFrame, axis: str, level: str, reference: str,
    effect: float = 0.0, interval: tuple[float, float] = (np.nan, np.nan), p_value: float = np.nan,
) -> dict:
    """One line of the effects table; the reference value's effect is zero by definition."""
    return {
        "axis": axis.removeprefix("axis."),
        "value": level,
        "reference": reference,
        "is_reference": level == reference,
        "effect": effect,
        "ci_low": interval[0],
        "ci_high": interval[1],
        "p_value": p_value,
        "n_trials": int((group[axis] == level).sum()),
    }
