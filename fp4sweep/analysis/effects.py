"""The effect of each technique choice on quality, estimated on the axis-crossed trials.

Per task, ordinary least squares on the finished trials of recipes built by crossing axes (presets
carry no axis values: they are shown beside the fit, never in it):

- **Main effects**: the relative loss gap regressed on a factor per seed (each trial's gap is
  already paired with its own seed's baseline; the seed factor removes what a seed shares across
  recipes) plus one indicator per axis value, against each axis' cheapest value (lowest modelled
  overhead). Axes with a single value among these trials are dropped. A value's coefficient is
  the change in the gap from the reference value, the other axes held fixed (averaged over
  them); negative is better.
- **Interactions and per-context effects**: for every pair of varying axes A, B whose cells
  (every combination of their values) hold trials, a second fit adds A x B. Its product terms
  say how much the effect of an A value changes at a B value (a difference of differences); the
  effect of each A value within each B value is a linear combination of its coefficients.
- **Heterogeneous** effects: an axis whose effect depends on another axis, by an F test of the
  A x B terms at 5 % (Holm-adjusted over the task's axis pairs), or whose per-context effects
  are resolved (intervals excluding zero) with opposite signs. An average over such contexts
  misleads; the page shows the contexts.

Diverged trials have no gap and are not in any fit: ``quality.outcomes_by_axis`` counts them.
"""

from __future__ import annotations

import itertools
from collections.abc import Collection
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.multitest import multipletests

from fp4sweep.analysis.quality import CONFIDENCE, TASK_KEY, UNSET_AXIS, axis_columns, task_name
from fp4sweep.quant.axes import parse_key

EFFECT_COLUMNS = [
    *TASK_KEY, "axis", "value", "reference", "is_reference", "effect", "ci_low", "ci_high",
    "p_value", "n_trials", "heterogeneous_by",
]
INTERACTION_COLUMNS = [
    *TASK_KEY, "axis", "value", "other_axis", "other_value", "interaction", "ci_low", "ci_high",
    "p_value",
]
CONTEXT_COLUMNS = [
    *TASK_KEY, "axis", "value", "reference", "context_axis", "context_value", "effect", "ci_low",
    "ci_high", "p_value", "n_trials", "interaction_p_value", "interaction_p_holm", "heterogeneous",
]
HETEROGENEITY_LEVEL = 0.05  # the F test's level for "the effect depends on the other axis"
FINDINGS_MAX = 5  # a sentence names at most this many effects, the largest; the table has all


@dataclass
class Effects:
    """The effect tables of every task, a sentence per task, and sentences for what was not fitted."""

    main: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=EFFECT_COLUMNS))
    interactions: pd.DataFrame = field(
        default_factory=lambda: pd.DataFrame(columns=INTERACTION_COLUMNS)
    )
    contexts: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=CONTEXT_COLUMNS))
    findings: dict[tuple[str, str], str] = field(default_factory=dict)
    fixed_axes: dict[tuple[str, str], list[str]] = field(default_factory=dict)  # not in the fit
    # Axes that moved together in a task's trials (e.g. ``transform`` and ``transform@wgrad`` when
    # the transform is crossed on all GEMMs): one effect, named by the first, the others beside it.
    aliases: dict[tuple[str, str], dict[str, list[str]]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def axis_effects(runs: pd.DataFrame, pairs_with: Collection[str] | None = None) -> Effects:
    """Main effects (best first), interactions and per-context effects of every task's axes.

    ``pairs_with`` names the axes (keys such as ``scale``) whose pairs are fitted for
    interactions and contexts, every axis by default; empty, only main effects are (the pair
    fits are most of the cost).
    """
    result = Effects()
    finished = runs[np.isfinite(runs["loss_gap"].to_numpy(dtype=float))]
    crossed = finished[~finished["is_preset"].astype(bool)]
    # A trial with no option on an axis (one the schema no longer reads): not in the fit.
    unset = crossed[axis_columns(crossed)].eq(UNSET_AXIS).any(axis=1)
    mains, interactions, contexts = [], [], []
    for (task, size), group in crossed.groupby(TASK_KEY, sort=True):
        where = task_name(task, size)
        left_out = int(unset[group.index].sum())
        if left_out:
            result.problems.append(
                f"{where}: {left_out} finished trials record no option under an axis key that the "
                "axis schema cannot give them (a key it does not know) and are left out of the effects"
            )
            group = group[~unset[group.index]]
        design = _Design.of(group)
        if isinstance(design, str):  # also where no trial is left
            result.problems.append(f"{where}: {design}")
            continue
        main = design.main_effects()
        pairs = [design.pair(a, b) for a, b in itertools.combinations(design.axes, 2)
                 if pairs_with is None or design.named(a, pairs_with) or design.named(b, pairs_with)]
        pairs = [pair for pair in pairs if pair is not None]
        context = _flag_contexts(pd.concat([p[1] for p in pairs], ignore_index=True)) if pairs else None
        main["heterogeneous_by"] = _heterogeneous_by(main, context)
        mains.append(main.assign(task=task, size=size))
        if pairs:
            contexts.append(context.assign(task=task, size=size))
            interactions += [p[0].assign(task=task, size=size) for p in pairs]
        result.findings[(task, size)] = finding(where, main, len(group), design.aliases)
        result.fixed_axes[(task, size)] = design.dropped
        result.aliases[(task, size)] = design.aliases
    if mains:
        main = pd.concat(mains, ignore_index=True)[EFFECT_COLUMNS]
        result.main = main.sort_values([*TASK_KEY, "effect", "axis", "value"], ignore_index=True)
    if interactions:
        result.interactions = pd.concat(interactions, ignore_index=True)[INTERACTION_COLUMNS]
    if contexts:
        result.contexts = pd.concat(contexts, ignore_index=True)[CONTEXT_COLUMNS]
    return result


@dataclass
class _Design:
    """One task's finished axis-crossed trials, their varying axes and each axis' reference."""

    trials: pd.DataFrame
    axes: list[str]
    levels: dict[str, list[str]]  # reference first
    dropped: list[str]  # axes with one value only
    seeds: np.ndarray
    aliases: dict[str, list[str]]  # an axis in the fit -> the axes whose values moved with it

    def __post_init__(self) -> None:
        # Plain arrays once: the fits below index them many times.
        self.values = {axis: self.trials[axis].to_numpy(dtype=object) for axis in self.axes}
        self.seed = self.trials["seed"].to_numpy()
        self.gap = self.trials["loss_gap"].to_numpy(dtype=float)

    @classmethod
    def of(cls, trials: pd.DataFrame) -> _Design | str:
        """The design, or a sentence saying why no effect can be estimated."""
        columns = axis_columns(trials)
        axes = [axis for axis in columns if trials[axis].nunique() > 1]
        if not axes:
            return "no axis varies among its finished axis-crossed trials; no effects to estimate"
        dropped = [axis.removeprefix("axis.") for axis in columns if axis not in axes]
        axes, aliases = _merge_aliases(trials, axes)
        levels = {axis: _cheapest_first(trials, axis, [a for a in axes if a != axis]) for axis in axes}
        design = cls(trials, axes, levels, dropped, np.sort(trials["seed"].unique()), aliases)
        matrix, _ = design.matrix()
        if len(trials) <= matrix.shape[1]:
            return (
                f"{len(trials)} finished axis-crossed trials are too few to estimate "
                f"{matrix.shape[1]} coefficients"
            )
        rank = _rank(matrix)
        if rank < matrix.shape[1]:
            return (
                f"the axes {[a.removeprefix('axis.') for a in axes]} are confounded in its trials "
                f"(design rank {rank} < {matrix.shape[1]} coefficients); effects not estimated"
            )
        return design

    def named(self, axis: str, names: Collection[str]) -> bool:
        """Whether ``axis`` or a key that moved with it is among ``names`` (keys, no prefix)."""
        key = axis.removeprefix("axis.")
        return bool({key, *self.aliases.get(key, [])} & set(names))

    def indicator(self, axis: str, level: str) -> np.ndarray:
        return (self.values[axis] == level).astype(float)

    def matrix(self, pair: tuple[str, str] | None = None) -> tuple[np.ndarray, list[tuple]]:
        """The design matrix and its column names: seed factor, axis values, pair products."""
        columns = [(self.seed == seed).astype(float) for seed in self.seeds]
        names: list[tuple] = [("seed", seed) for seed in self.seeds]
        for axis in self.axes:
            for level in self.levels[axis][1:]:
                columns.append(self.indicator(axis, level))
                names.append((axis, level))
        if pair is not None:
            a, b = pair
            for level_a, level_b in itertools.product(self.levels[a][1:], self.levels[b][1:]):
                columns.append(self.indicator(a, level_a) * self.indicator(b, level_b))
                names.append((a, level_a, b, level_b))
        return np.column_stack(columns), names

    def fit(self, pair: tuple[str, str] | None = None) -> tuple[_LeastSquares, list[tuple]]:
        matrix, names = self.matrix(pair)
        return _LeastSquares(matrix, self.gap), names

    def main_effects(self) -> pd.DataFrame:
        fit, names = self.fit()
        rows = []
        for axis in self.axes:
            reference = self.levels[axis][0]
            for level in self.levels[axis]:
                if level == reference:
                    rows.append(self._row(axis, level, reference, 0.0, (np.nan, np.nan), np.nan))
                    continue
                rows.append(self._row(axis, level, reference, *fit.estimate(_unit(names, (axis, level)))))
        return pd.DataFrame(rows)

    def pair(self, a: str, b: str) -> tuple[pd.DataFrame, pd.DataFrame] | None:
        """The A x B product terms, and each axis' effect within each value of the other; None
        where the design cannot estimate them (an empty cell, no residual degrees of freedom)."""
        cells = self.trials.groupby([a, b]).size()
        if len(cells) < len(self.levels[a]) * len(self.levels[b]):
            return None
        matrix, names = self.matrix((a, b))
        if len(self.gap) <= matrix.shape[1] or _rank(matrix) < matrix.shape[1]:
            return None
        fit, names = self.fit((a, b))
        estimate = fit.estimate
        terms = [i for i, name in enumerate(names) if len(name) == 4]
        interaction_p = fit.f_test(terms)

        products = []
        for i in terms:
            _, level_a, _, level_b = names[i]
            effect, interval, p_value = estimate(np.eye(len(names))[i])
            products.append({
                "axis": a.removeprefix("axis."), "value": level_a,
                "other_axis": b.removeprefix("axis."), "other_value": level_b,
                "interaction": effect, "ci_low": interval[0], "ci_high": interval[1],
                "p_value": p_value,
            })
        contexts = [
            *self._contexts(a, b, names, estimate, lambda x, y: (a, x, b, y)),
            *self._contexts(b, a, names, estimate, lambda x, y: (a, y, b, x)),
        ]
        return pd.DataFrame(products), pd.DataFrame(contexts).assign(interaction_p_value=interaction_p)

    def _contexts(self, axis, other, names, estimate, product) -> list[dict]:
        """``axis``' effect within each value of ``other``: its main term plus the product term
        of that value (``product(level, other_level)`` names it; none at other's reference)."""
        rows = []
        reference = self.levels[axis][0]
        for level, other_level in itertools.product(self.levels[axis][1:], self.levels[other]):
            contrast = _unit(names, (axis, level))
            if other_level != self.levels[other][0]:
                contrast += _unit(names, product(level, other_level))
            effect, interval, p_value = estimate(contrast)
            within = (self.values[other] == other_level) & (self.values[axis] == level)
            rows.append({
                "axis": axis.removeprefix("axis."), "value": level, "reference": reference,
                "context_axis": other.removeprefix("axis."), "context_value": other_level,
                "effect": effect, "ci_low": interval[0], "ci_high": interval[1],
                "p_value": p_value, "n_trials": int(within.sum()),
            })
        return rows

    def _row(self, axis, level, reference, effect, interval, p_value) -> dict:
        """One line of the main effects table; the reference value's effect is zero by definition."""
        return {
            "axis": axis.removeprefix("axis."), "value": level, "reference": reference,
            "is_reference": level == reference, "effect": effect, "ci_low": interval[0],
            "ci_high": interval[1], "p_value": p_value,
            "n_trials": int((self.values[axis] == level).sum()),
        }


def _cheapest_first(trials: pd.DataFrame, axis: str, others: list[str]) -> list[str]:
    """``axis``' values, the reference first: the cheapest, so that an effect reads as what a
    costlier choice does to the gap. A value's cost is its overhead against the other values of
    the same cell of the other axes (a plain mean would charge it for what it was crossed with);
    among equally cheap values the axis' default, then the most common, then the first by name."""
    counts = trials[axis].value_counts()
    cells = trials.pivot_table(index=others or None, columns=axis, values="overhead.model",
                               aggfunc="mean") if others else None
    if cells is not None:
        cells = cells.dropna()
    if cells is None or cells.empty:
        cost = trials.groupby(axis)["overhead.model"].mean()
    else:
        cost = cells.sub(cells.mean(axis=1), axis=0).mean()
    default = _axis_default(axis)
    return sorted(
        counts.index,
        key=lambda level: (round(float(cost.get(level, np.inf)), 9), level != default,
                           -counts[level], level),
    )


def _axis_default(column: str) -> str | None:
    """The default option of the axis key a store column names; None for a key the schema no
    longer has."""
    try:
        return parse_key(column.removeprefix("axis.")).axis.default
    except ValueError:
        return None


def _rank(matrix: np.ndarray) -> int:
    """The design's rank, from its small Gram matrix (the tall matrix's SVD is the slow part)."""
    return int(np.linalg.matrix_rank(matrix.T @ matrix, hermitian=True))


def _unit(names: list[tuple], name: tuple) -> np.ndarray:
    vector = np.zeros(len(names))
    vector[names.index(name)] = 1.0
    return vector


class _LeastSquares:
    """Ordinary least squares of ``y`` on a full-rank design of indicators, by its normal
    equations: the Gram matrix is small (coefficients squared) however many trials there are, and
    indicator designs are well conditioned. Estimates of linear combinations of the coefficients
    come with Student-t intervals and p-values; sets of coefficients with an F test."""

    def __init__(self, design: np.ndarray, y: np.ndarray) -> None:
        inverse = np.linalg.inv(design.T @ design)
        self.params = inverse @ (design.T @ y)
        residuals = y - design @ self.params
        self.df = len(y) - design.shape[1]
        self.cov = inverse * (residuals @ residuals / self.df)
        self.t = stats.t.ppf(0.5 + CONFIDENCE / 2, self.df)

    def estimate(self, contrast: np.ndarray) -> tuple[float, tuple[float, float], float]:
        effect = np.float64(contrast @ self.params)
        error = np.sqrt(np.float64(contrast @ self.cov @ contrast))
        with np.errstate(invalid="ignore", divide="ignore"):  # an exact fit: no error, p 0 or NaN
            p_value = 2 * stats.t.sf(np.abs(effect / error), self.df)
        return float(effect), (float(effect - self.t * error), float(effect + self.t * error)), float(p_value)

    def f_test(self, terms: list[int]) -> float:
        """The p-value of "these coefficients are all zero"."""
        values = self.params[terms]
        with np.errstate(invalid="ignore", divide="ignore"):
            statistic = values @ np.linalg.solve(self.cov[np.ix_(terms, terms)], values) / len(terms)
        return float(stats.f.sf(statistic, len(terms), self.df))


def _flag_contexts(contexts: pd.DataFrame) -> pd.DataFrame:
    """Mark ``heterogeneous`` per (A value, B): significant A x B terms, or resolved per-context
    effects of opposite sign.

    The F tests of a task's axis pairs are many: their p-values are Holm-adjusted together, so a
    task with many axes does not flag an additive effect by chance.
    """
    pairs = contexts.drop_duplicates(["axis", "context_axis"])
    # A x B and B x A are one test: adjust over unordered pairs.
    unordered = pairs[pairs["axis"] < pairs["context_axis"]]
    adjusted = multipletests(unordered["interaction_p_value"], method="holm")[1]
    holm = {}
    for (a, b), p_value in zip(zip(unordered["axis"], unordered["context_axis"]), adjusted):
        holm[(a, b)] = holm[(b, a)] = p_value
    contexts = contexts.assign(
        interaction_p_holm=[holm[(a, b)] for a, b in zip(contexts["axis"], contexts["context_axis"])]
    )
    flags = pd.Series(False, index=contexts.index)
    for _, rows in contexts.groupby(["axis", "value", "context_axis"]):
        resolved_better = (rows["ci_high"] < 0).any()
        resolved_worse = (rows["ci_low"] > 0).any()
        significant = rows["interaction_p_holm"].iloc[0] < HETEROGENEITY_LEVEL
        flags[rows.index] = bool(significant or (resolved_better and resolved_worse))
    return contexts.assign(heterogeneous=flags)


def _heterogeneous_by(main: pd.DataFrame, contexts: pd.DataFrame | None) -> list[str]:
    """Per main-effect row: the other axes its effect is heterogeneous across, comma-separated."""
    if contexts is None or contexts.empty:
        return [""] * len(main)
    flagged = contexts[contexts["heterogeneous"]]
    by = flagged.groupby(["axis", "value"])["context_axis"].agg(
        lambda axes: ", ".join(sorted(set(axes)))
    )
    return [by.get((axis, value), "") for axis, value in zip(main["axis"], main["value"])]


def _merge_aliases(trials: pd.DataFrame, axes: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """The axes to fit, one of each group whose values determine each other's in these trials,
    and the groups. A scoped key that mirrors another (every crossed recipe records
    ``transform@wgrad`` beside ``transform``) has no effect of its own to estimate. The key the
    sweep crossed names the group: the one its recipes' labels mention most, then the shortest."""
    labels = trials["recipe_label"].astype(str)
    mentions = {a: int(labels.str.contains(a.removeprefix("axis.") + "=", regex=False).sum()) for a in axes}
    kept: list[str] = []
    aliases: dict[str, list[str]] = {}
    for axis in sorted(axes, key=lambda a: (-mentions[a], len(a), axes.index(a))):
        twin = next((k for k in kept if _determine_each_other(trials, k, axis)), None)
        if twin is None:
            kept.append(axis)
        else:
            aliases.setdefault(twin.removeprefix("axis."), []).append(axis.removeprefix("axis."))
    return [a for a in axes if a in kept], aliases


def _determine_each_other(trials: pd.DataFrame, a: str, b: str) -> bool:
    pairs = trials[[a, b]].drop_duplicates()
    return len(pairs) == trials[a].nunique() == trials[b].nunique()


def finding(
    where: str, main: pd.DataFrame, n_trials: int, aliases: dict[str, list[str]] | None = None
) -> str:
    """One sentence: which choices change the gap, by how much, with intervals."""
    estimated = main[~main["is_reference"]]
    resolved = estimated[(estimated["ci_high"] < 0) | (estimated["ci_low"] > 0)]
    resolved = resolved.reindex(resolved["effect"].abs().sort_values(ascending=False).index)
    level = f"{CONFIDENCE:.0%}"
    if resolved.empty:
        sentence = (
            f"{where}: no choice changes the loss gap resolvably (every {level} interval includes "
            f"zero, {n_trials} trials)"
        )
    else:
        clauses = []
        for row in resolved.head(FINDINGS_MAX).itertuples():
            verb = "lowers" if row.effect < 0 else "raises"
            # An interval of a lowering effect, read as a size: the bounds swap and lose their sign.
            low, high = sorted((abs(row.ci_low), abs(row.ci_high)))
            clause = (
                f"{row.axis} = {row.value} {verb} the loss gap by {abs(row.effect):.2g} "
                f"({level} CI {low:.2g} to {high:.2g}) against {row.reference}"
            )
            if row.heterogeneous_by:
                clause += f", by an amount that depends on {row.heterogeneous_by}"
            clauses.append(clause)
        sentence = f"{where}: " + "; ".join(clauses)
        if len(resolved) > FINDINGS_MAX:
            sentence += f"; {len(resolved) - FINDINGS_MAX} smaller resolved effects in the table"
        unresolved = sorted(set(estimated["axis"]) - set(resolved["axis"]))
        if unresolved:
            sentence += f"; no resolved effect of {', '.join(unresolved)}"
    if aliases:
        moved = "; ".join(f"{', '.join(others)} with {axis}" for axis, others in aliases.items())
        sentence += f" (moved together in these trials, one effect each: {moved})"
    return sentence + "."
