"""The paper's claims, each with a verdict from the store: supported, contradicted, not resolved
or not tested.

The claims are those of Hu, Luschi and Balanca (2025), arXiv:2509.17791 (``CLAIMS``). Each is a
statement and one or more tests. A test reads the estimates the report already computes: the
per-task least-squares effects of ``effects`` on the relative loss gap, with their 95 % intervals
and their effects within each value of another axis (contexts); the fronts; the divergence
criterion of ``results.quality``. Where the report's fit does not answer a comparison directly
(its reference is another option, or the claim holds within cells of other axes), the same least
squares is fitted on the trials that use one of the two options compared (and lie in those
cells). A comparison counts once per task and compared option.

Rules (``RULES`` holds them as the report page prints them):

- **consistent gain** (Hadamard transforms, tensor scaling, SR in the backward pass): supported
  when the effect lowers the gap resolvably (interval below zero) in every comparison where it is
  resolved, at least one, and none raises it resolvably, neither in a task nor within a context
  (that contradicts it); not resolved when none is resolved. Beside the verdict: how many members
  of each task's front use the technique (the claim says it trades quality for overhead best).
- **gain** (UE5M3 against E8M0 within tensor scaling and backward SR): supported when it lowers
  the gap resolvably in every comparison, contradicted when it raises it resolvably in one,
  otherwise not resolved.
- **no better** (spline and power against STE): contradicted when one lowers the gap resolvably;
  supported when every interval's lower end lies above minus the report's tolerance (no gain
  beyond it is possible); otherwise not resolved.
- **largest effect** (the scale format): per task, each axis' largest effect in magnitude with its
  interval in magnitude (from zero where it includes zero); supported in a task when the axis'
  interval lies above every other axis', contradicted when another's lies above its own; the
  test is supported when every task that varies the axis and another supports it, contradicted
  when one contradicts it, otherwise not resolved.
- **divergence** (UE4M3 with tensor scaling: above 1/2, "do not converge"; STE, in tasks that vary
  the estimator: below 1/10, "stable"): the share of diverged trials among finished and diverged
  ones in the cells (presets with those options count), with its 95 % Clopper-Pearson interval;
  per task, supported on the claimed side of the threshold, contradicted on the other, not
  resolved across it; combined over tasks as the largest-effect rule does.

- **carries** (FP4 behaviour may not carry across model scales): per pair of consecutive model
  sizes of a task, Spearman's rank correlation of the recipes' gaps with its interval
  (``fidelity.rank_correlation``); supported when some pair's interval lies below 0.5 (the cheap
  size orders the recipes at best weakly as the larger one does), contradicted when every pair's
  lies above 0.5, otherwise not resolved. 0.5 is this tool's line between a weak and a useful
  ranking; the paper names none.

A test is not tested where no task's trials vary what it compares ("the store does not vary
..."). A claim's verdict combines its tests': contradicted if any test is, supported if all are,
not tested if none could be, otherwise not resolved.

Adding a claim is one entry in ``CLAIMS``; a new kind of test is a class with ``rule``,
``describe`` and ``assess`` (``ClaimTest``) and its rule's text in ``RULES``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import pandas as pd
from scipy.stats import binomtest

from fp4sweep.analysis.effects import Effects, axis_effects
from fp4sweep.analysis.pareto import OVERHEADS
from fp4sweep.analysis.quality import CONFIDENCE, TASK_KEY, task_name
from fp4sweep.quant.axes import MIXED

SUPPORTED, CONTRADICTED, NOT_RESOLVED, NOT_TESTED = (
    "supported", "contradicted", "not resolved", "not tested"
)
SOURCE = "Hu, Luschi and Balanca (2025), arXiv:2509.17791"
_LEVEL = f"{CONFIDENCE:.0%}"
RULES = {
    "consistent gain": (
        f"supported where the effect against the baseline option lowers the gap ({_LEVEL} "
        "interval below zero) in every task where it is resolved, in at least one, and no task "
        "or context of another axis shows it resolved raising the gap (that contradicts it); "
        "not resolved when no task resolves it"
    ),
    "gain": (
        f"supported where the effect lowers the gap ({_LEVEL} interval below zero) in every task "
        "tested; contradicted where it raises it resolvably in some task; otherwise not resolved"
    ),
    "no better": (
        "supported where, in every task tested, the alternative's effect against the baseline "
        "option cannot be a gain larger than the report's tolerance (interval's lower end above "
        "minus the tolerance); contradicted where some alternative lowers the gap resolvably; "
        "otherwise not resolved"
    ),
    "largest effect": (
        "per task, each axis' largest effect in magnitude, with its interval in magnitude (from "
        "zero where it includes zero): supported where, in every task that varies the axis and "
        "another, its interval lies above every other axis'; contradicted where another axis' "
        "interval lies above its own in some task; otherwise not resolved"
    ),
    "carries": (
        f"per pair of consecutive model sizes of a task (size presets, not training lengths alone), "
        f"Spearman's rank correlation of the recipes' gaps with its {_LEVEL} interval: the claim "
        "(rankings may not carry) is supported where some pair's interval lies below 0.5, "
        "contradicted where every pair's lies above 0.5, otherwise not resolved"
    ),
    "divergence": (
        "the share of diverged trials (of finished and diverged ones, presets with the options "
        f"included) with its {_LEVEL} Clopper-Pearson interval, per task: supported where the "
        "interval lies on the claimed side of the threshold in every task tested, contradicted "
        "where it lies on the other side in some task, otherwise not resolved"
    ),
}


Estimate = tuple[float, tuple[float, float], list[dict]]  # effect, interval, per-context rows


@dataclass(frozen=True)
class Evidence:
    """What the tests read: the trials with their gaps (``quality.trial_gaps``), the report's
    effects, its recipe table with front flags, and its tolerance."""

    runs: pd.DataFrame
    effects: Effects
    recipes: pd.DataFrame
    tolerance: float
    fidelity: pd.DataFrame = field(default_factory=pd.DataFrame)  # ``fidelity.fidelity_changes``


@dataclass
class Assessment:
    """One test's verdict on the store, a sentence with its numbers, and the numbers per task
    as rows."""

    test: str
    rule: str
    verdict: str
    sentence: str
    rows: list[dict] = field(default_factory=list)


@dataclass
class ClaimVerdict:
    """A claim's statement, its verdict, and its tests' results."""

    statement: str
    verdict: str
    tests: list[Assessment]
    front: str = ""  # where the claim's technique sits on the fronts, when it says it trades well


class ClaimTest(Protocol):
    rule: str

    def describe(self) -> str: ...

    def assess(self, evidence: Evidence) -> Assessment: ...


@dataclass(frozen=True)
class Cell:
    """Trials with ``option`` under the first of ``keys`` the store records (scoped keys in
    order of preference, e.g. SR on the backward as ``rounding@bwd``, else ``rounding@dy``)."""

    keys: tuple[str, ...]
    option: str

    def text(self) -> str:
        return f"{self.keys[0]} = {self.option}"


@dataclass(frozen=True)
class Comparison:
    """The effect on the gap of ``options`` (none given: every option recorded but ``against``)
    under the first of ``keys`` a task varies, against ``against``, within ``cells``."""

    keys: tuple[str, ...]
    against: str
    options: tuple[str, ...] = ()
    cells: tuple[Cell, ...] = ()

    def text(self) -> str:
        options = "= " + " or ".join(self.options) if self.options else f"!= {self.against}"
        within = f" within {', '.join(c.text() for c in self.cells)}" if self.cells else ""
        return f"{self.keys[0]} {options} (against {self.against}){within}"

    def chosen(self, values: pd.Series) -> pd.Series:
        """Which of ``values`` (options under the key) are among the options compared."""
        if self.options:
            return values.isin(self.options)
        return values.notna() & ~values.isin([self.against, MIXED])

    def estimates(
        self, evidence: Evidence, contexts: bool = True
    ) -> tuple[list[dict], list[dict], list[str]]:
        """Per task and option: the effect with its interval and trial count; the per-context
        effects of the same options (with ``contexts``); and sentences for tasks where no effect
        could be fitted."""
        rows, within, problems = [], [], []
        finished = evidence.runs[
            np.isfinite(evidence.runs["loss_gap"].to_numpy(dtype=float))
            & ~evidence.runs["is_preset"].astype(bool)
        ]
        for (task, size), trials in finished.groupby(TASK_KEY, sort=True):
            trials = _in_cells(trials, self.cells)
            key = self._key(trials)
            if key is None:
                continue
            column = f"axis.{key}"
            for option in sorted(set(trials.loc[self.chosen(trials[column]), column])):
                compared = trials[trials[column].isin([option, self.against])]
                found = None if self.cells else _reported(
                    evidence.effects, compared, (task, size), key, (option, self.against)
                )
                found = found or _refitted(compared, key, (option, self.against), contexts)
                if isinstance(found, str):
                    problems.append(f"{task_name(task, size)}: {key} = {option}: {found}")
                    continue
                effect, (low, high), context = found
                rows.append({
                    "task": task, "size": size, "key": key, "option": option,
                    "against": self.against, "effect": effect, "ci_low": low, "ci_high": high,
                    "n_trials": len(compared),
                })
                within += [{"task": task, "size": size, "key": key, "option": option, **row}
                           for row in context]
        return rows, within, problems

    def _key(self, trials: pd.DataFrame) -> str | None:
        """The first key under which these trials hold the baseline option and a compared one."""
        for key in self.keys:
            column = f"axis.{key}"
            if column not in trials.columns:
                continue
            if trials[column].eq(self.against).any() and self.chosen(trials[column]).any():
                return key
        return None

    def not_tested(self) -> str:
        return f"not tested: the store does not vary {self.text()}"


def _in_cells(trials: pd.DataFrame, cells: Sequence[Cell]) -> pd.DataFrame:
    for cell in cells:
        column = next((f"axis.{k}" for k in cell.keys if f"axis.{k}" in trials.columns
                       and trials[f"axis.{k}"].notna().any()), None)
        trials = trials.iloc[0:0] if column is None else trials[trials[column].eq(cell.option)]
    return trials


def _fitted_name(effects: Effects, task: str, size: str, key: str) -> str:
    """The axis under which the report's fit shows ``key`` (a key that moved with another
    is shown under that one)."""
    for head, others in effects.aliases.get((task, size), {}).items():
        if key in others:
            return head
    return key


def _as_fitted(trials: pd.DataFrame, key: str, fitted: str, option: str) -> str:
    """``key``'s option named as the fitted axis names it (they determine each other)."""
    if fitted == key:
        return option
    return str(trials.loc[trials[f"axis.{key}"].eq(option), f"axis.{fitted}"].iloc[0])


def _reported(
    effects: Effects, trials: pd.DataFrame, where: tuple[str, str], key: str, pair: tuple[str, str]
) -> Estimate | None:
    """The report's own estimate of ``pair``'s option against its baseline option, where its fit
    has the baseline as the reference; None otherwise."""
    (task, size), (option, against) = where, pair
    fitted = _fitted_name(effects, task, size, key)
    value, reference = (_as_fitted(trials, key, fitted, o) for o in (option, against))
    main = effects.main
    row = main[(main["task"] == task) & (main["size"] == size) & (main["axis"] == fitted)
               & (main["value"] == value) & (main["reference"] == reference)]
    if row.empty:
        return None
    row = row.iloc[0]
    contexts = effects.contexts
    within = contexts[(contexts["task"] == task) & (contexts["size"] == size)
                      & (contexts["axis"] == fitted) & (contexts["value"] == value)]
    return row["effect"], (row["ci_low"], row["ci_high"]), _context_rows(within, 1.0)


def _refitted(
    trials: pd.DataFrame, key: str, pair: tuple[str, str], contexts: bool
) -> Estimate | str:
    """``pair``'s option against its baseline option by the report's least squares on these
    trials alone (the two options, the cells), with its per-context effects if ``contexts``; a
    sentence where it cannot be fitted."""
    option, against = pair
    effects = axis_effects(trials, pairs_with=[key] if contexts else [])
    if effects.main.empty:
        return "; ".join(p.split(": ", 1)[-1] for p in effects.problems) or "no effect fitted"
    task, size = trials["task"].iloc[0], trials["size"].iloc[0]
    fitted = _fitted_name(effects, task, size, key)
    main = effects.main[(effects.main["axis"] == fitted) & ~effects.main["is_reference"]]
    if main.empty:
        return f"{key} is not among the axes fitted on these trials"
    row = main.iloc[0]
    # Two options: the cheaper is the reference. Against the other way round, the sign flips.
    sign = 1.0 if row["reference"] == _as_fitted(trials, key, fitted, against) else -1.0
    low, high = sorted((sign * row["ci_low"], sign * row["ci_high"]))
    contexts = effects.contexts[effects.contexts["axis"] == fitted]
    return sign * row["effect"], (low, high), _context_rows(contexts, sign)


def _context_rows(contexts: pd.DataFrame, sign: float) -> list[dict]:
    return [
        {"context": f"{row.context_axis} = {row.context_value}", "effect": sign * row.effect,
         "ci_low": min(sign * row.ci_low, sign * row.ci_high),
         "ci_high": max(sign * row.ci_low, sign * row.ci_high), "n_trials": int(row.n_trials)}
        for row in contexts.itertuples()
    ]


def _effect_text(row: dict) -> str:
    within = f" within {row['context']}" if "context" in row else ""
    return (
        f"{task_name(row['task'], row['size'])}: {row['key']} = {row['option']}{within} "
        f"{row['effect']:+.3g} [{row['ci_low']:.3g}, {row['ci_high']:.3g}], "
        f"{row['n_trials']} trials"
    )


def _lowers(row: dict) -> bool:
    return row["ci_high"] < 0


def _raises(row: dict) -> bool:
    return row["ci_low"] > 0


def _without_estimates(test: ClaimTest, comparison: Comparison, problems: list[str]) -> Assessment:
    """A comparison no task could estimate: not tested, or not resolved where a fit failed."""
    if problems:
        return Assessment(test.describe(), test.rule, NOT_RESOLVED, _not_estimated(problems))
    return Assessment(test.describe(), test.rule, NOT_TESTED, comparison.not_tested())


def _not_estimated(problems: list[str]) -> str:
    return "not estimated: " + "; ".join(problems) if problems else ""


def _sentence(*parts: str) -> str:
    return "; ".join(part for part in parts if part)


@dataclass(frozen=True)
class Gain:
    """The compared options lower the gap against the baseline option (``consistent``: the
    "consistent gain" rule, else the "gain" rule)."""

    comparison: Comparison
    consistent: bool = False

    @property
    def rule(self) -> str:
        return "consistent gain" if self.consistent else "gain"

    def describe(self) -> str:
        return f"{self.comparison.text()} lowers the gap"

    def assess(self, evidence: Evidence) -> Assessment:
        rows, contexts, problems = self.comparison.estimates(evidence, contexts=self.consistent)
        if not rows:
            return _without_estimates(self, self.comparison, problems)
        lower = [r for r in rows if _lowers(r)]
        higher = [r for r in rows if _raises(r)]
        higher_within = [c for c in contexts if _raises(c)] if self.consistent else []
        if higher or higher_within:
            verdict = CONTRADICTED
        elif self.consistent:
            verdict = SUPPORTED if lower else NOT_RESOLVED
        else:
            verdict = SUPPORTED if len(lower) == len(rows) and not problems else NOT_RESOLVED
        sentence = _sentence(
            f"resolved lower in {len(lower)} of {len(rows)} comparisons (task and option), higher "
            f"in {len(higher)}: " + "; ".join(_effect_text(r) for r in rows),
            "resolved higher within " + "; ".join(_effect_text(c) for c in higher_within)
            if higher_within else "",
            _not_estimated(problems),
        )
        return Assessment(self.describe(), self.rule, verdict, sentence, rows)


@dataclass(frozen=True)
class NoBetter:
    """The compared options (alternatives) do not lower the gap against the baseline option by
    more than the report's tolerance (the "no better" rule)."""

    comparison: Comparison
    rule: str = "no better"

    def describe(self) -> str:
        return f"{self.comparison.text()} does not lower the gap"

    def assess(self, evidence: Evidence) -> Assessment:
        rows, _, problems = self.comparison.estimates(evidence, contexts=False)
        if not rows:
            return _without_estimates(self, self.comparison, problems)
        better = [r for r in rows if _lowers(r)]
        bounded = [r for r in rows if r["ci_low"] > -evidence.tolerance]
        if better:
            verdict = CONTRADICTED
        elif len(bounded) == len(rows) and not problems:
            verdict = SUPPORTED
        else:
            verdict = NOT_RESOLVED
        sentence = _sentence(
            f"resolved lower in {len(better)} of {len(rows)} comparisons (task and option); a gain "
            f"above the tolerance {evidence.tolerance:g} excluded in {len(bounded)}: "
            + "; ".join(_effect_text(r) for r in rows),
            _not_estimated(problems),
        )
        return Assessment(self.describe(), self.rule, verdict, sentence, rows)


@dataclass(frozen=True)
class Largest:
    """The axis ``key`` has the largest effect of all varied axes (the "largest effect" rule)."""

    key: str
    rule: str = "largest effect"

    def describe(self) -> str:
        return f"{self.key} has the largest effect of the axes varied"

    def assess(self, evidence: Evidence) -> Assessment:
        main = evidence.effects.main
        rows = []
        for (task, size), effects in main[~main["is_reference"].astype(bool)].groupby(TASK_KEY):
            fitted = _fitted_name(evidence.effects, task, size, self.key)
            sizes = {axis: _magnitude(group) for axis, group in effects.groupby("axis")}
            if fitted not in sizes or len(sizes) < 2:
                continue
            own = sizes.pop(fitted)
            if own["near"] > max(s["far"] for s in sizes.values()):
                verdict = SUPPORTED
            elif any(s["near"] > own["far"] for s in sizes.values()):
                verdict = CONTRADICTED
            else:
                verdict = NOT_RESOLVED
            rival_axis, rival = max(sizes.items(), key=lambda item: item[1]["magnitude"])
            rows.append({
                "task": task, "size": size, "key": self.key, **own, "largest_other": rival_axis,
                **{f"other_{name}": value for name, value in rival.items()},
                "task_verdict": verdict,
            })
        if not rows:
            return Assessment(self.describe(), self.rule, NOT_TESTED,
                              f"not tested: no task varies {self.key} and another axis")
        sentence = "; ".join(
            f"{task_name(r['task'], r['size'])}: {self.key} = {r['option']} {r['effect']:+.3g} "
            f"(magnitude {r['near']:.3g} to {r['far']:.3g}) against the largest other, "
            f"{r['largest_other']} = {r['other_option']} {r['other_effect']:+.3g} (magnitude "
            f"{r['other_near']:.3g} to {r['other_far']:.3g}): {r['task_verdict']}"
            for r in rows
        )
        verdict = _combine([r["task_verdict"] for r in rows])
        return Assessment(self.describe(), self.rule, verdict, sentence, rows)


def _magnitude(effects: pd.DataFrame) -> dict:
    """An axis' largest effect in magnitude, with its interval in magnitude (from zero where the
    interval includes zero)."""
    row = effects.loc[effects["effect"].abs().idxmax()]
    low, high = abs(row["ci_low"]), abs(row["ci_high"])
    near = 0.0 if row["ci_low"] <= 0 <= row["ci_high"] else min(low, high)
    return {"option": row["value"], "against": row["reference"], "effect": row["effect"],
            "magnitude": abs(row["effect"]), "near": near, "far": max(low, high),
            "n_trials": int(row["n_trials"])}


@dataclass(frozen=True)
class Divergence:
    """The share of diverged trials in ``cells`` lies above (``above``) or below ``threshold``
    (the "divergence" rule); tested only in tasks whose axis-crossed trials vary ``varying``."""

    cells: tuple[Cell, ...]
    threshold: float
    above: bool
    varying: str = ""
    rule: str = "divergence"

    def describe(self) -> str:
        side = "above" if self.above else "below"
        return f"the share of {self._cells()} trials that diverge is {side} {self.threshold:g}"

    def _cells(self) -> str:
        return ", ".join(cell.text() for cell in self.cells)

    def _verdict(self, low: float, high: float) -> str:
        """The share's interval against the threshold: on the claimed side, the other, or both."""
        if low > self.threshold:
            return SUPPORTED if self.above else CONTRADICTED
        if high < self.threshold:
            return CONTRADICTED if self.above else SUPPORTED
        return NOT_RESOLVED

    def assess(self, evidence: Evidence) -> Assessment:
        runs = evidence.runs[evidence.runs["outcome"].isin(["done", "diverged"])]
        rows = []
        for (task, size), trials in runs.groupby(TASK_KEY, sort=True):
            if self.varying and not _varies(trials, self.varying):
                continue
            trials = _in_cells(trials, self.cells)
            if trials.empty:
                continue
            diverged = int(trials["outcome"].eq("diverged").sum())
            interval = binomtest(diverged, len(trials)).proportion_ci(confidence_level=CONFIDENCE)
            verdict = self._verdict(interval.low, interval.high)
            gaps = trials["loss_gap"].dropna()
            rows.append({
                "task": task, "size": size, "n_diverged": diverged, "n_trials": len(trials),
                "share": diverged / len(trials), "ci_low": interval.low, "ci_high": interval.high,
                "gap_mean_finished": float(gaps.mean()) if len(gaps) else math.nan,
                "task_verdict": verdict,
            })
        if not rows:
            varied = f" while varying {self.varying}" if self.varying else ""
            sentence = f"not tested: the store has no finished or diverged {self._cells()} trials"
            return Assessment(self.describe(), self.rule, NOT_TESTED, sentence + varied)
        sentence = "; ".join(
            f"{task_name(r['task'], r['size'])}: {r['n_diverged']} of {r['n_trials']} diverged "
            f"({r['share']:.0%}, {_LEVEL} CI {r['ci_low']:.0%} to {r['ci_high']:.0%})"
            + ("" if math.isnan(r["gap_mean_finished"]) else
               f", finished ones' mean gap {r['gap_mean_finished']:.3g}")
            for r in rows
        )
        verdict = _combine([r["task_verdict"] for r in rows])
        return Assessment(self.describe(), self.rule, verdict, sentence, rows)


@dataclass(frozen=True)
class Carries:
    """Whether recipe rankings carry from a smaller model size to the next larger one."""

    threshold: float = 0.5
    rule: str = "carries"

    def describe(self) -> str:
        return (f"rank correlation of the recipes' gaps between consecutive model sizes, "
                f"against {self.threshold:g}")

    def assess(self, evidence: Evidence) -> Assessment:
        fidelity = evidence.fidelity
        across = fidelity.get("across_sizes", pd.Series(False, index=fidelity.index)).astype(bool)
        pairs = fidelity[across]
        if pairs.empty or pairs["rho_low"].isna().all():
            return Assessment(self.describe(), self.rule, NOT_TESTED,
                              "not tested: no task holds recipes run at two model sizes "
                              "(at least four recipes at both)")
        rows, verdicts, parts = [], [], []
        for pair in pairs[pairs["rho_low"].notna()].itertuples():
            if pair.rho_high < self.threshold:
                verdict = SUPPORTED
            elif pair.rho_low > self.threshold:
                verdict = CONTRADICTED
            else:
                verdict = NOT_RESOLVED
            verdicts.append(verdict)
            rows.append({"task": pair.task, "size": f"{pair.lower} -> {pair.higher}",
                         "effect": pair.rho, "ci_low": pair.rho_low, "ci_high": pair.rho_high,
                         "n_recipes": pair.n_recipes})
            parts.append(f"{pair.task} {pair.lower} -> {pair.higher}: rho {pair.rho:.2f} "
                         f"[{pair.rho_low:.2f}, {pair.rho_high:.2f}] over {pair.n_recipes} recipes")
        # "May not carry": one pair where rankings break is enough; every pair must carry to refute it.
        if SUPPORTED in verdicts:
            verdict = SUPPORTED
        elif all(v == CONTRADICTED for v in verdicts):
            verdict = CONTRADICTED
        else:
            verdict = NOT_RESOLVED
        return Assessment(self.describe(), self.rule, verdict, _sentence(*parts), rows)


def _varies(trials: pd.DataFrame, key: str) -> bool:
    column = f"axis.{key}"
    crossed = trials[~trials["is_preset"].astype(bool)]
    return column in crossed.columns and crossed[column].nunique() > 1


def _combine(verdicts: Sequence[str]) -> str:
    """Contradicted if any is, supported if all are, not tested if none was, else not resolved."""
    if CONTRADICTED in verdicts:
        return CONTRADICTED
    if verdicts and all(v == SUPPORTED for v in verdicts):
        return SUPPORTED
    if all(v == NOT_TESTED for v in verdicts):
        return NOT_TESTED
    return NOT_RESOLVED


@dataclass(frozen=True)
class Claim:
    """A statement of the paper and the tests that decide it. ``front``: the technique whose
    place on the quality-overhead fronts is reported beside the verdict."""

    statement: str
    tests: tuple[ClaimTest, ...]
    front: Comparison | None = None

    def assess(self, evidence: Evidence) -> ClaimVerdict:
        results = [test.assess(evidence) for test in self.tests]
        front = "" if self.front is None else _front_place(evidence, self.front)
        return ClaimVerdict(self.statement, _combine([r.verdict for r in results]), results, front)


def _front_place(evidence: Evidence, technique: Comparison) -> str:
    """Per task with a front (modelled overhead, else measured): how many of its members use
    the technique."""
    recipes = evidence.recipes
    places = []
    for (task, size), group in recipes.groupby(TASK_KEY, sort=True) if len(recipes) else ():
        overhead = next(
            (o for o in OVERHEADS if f"front.{o}" in group and group[f"front.{o}"].any()), None
        )
        key = next((k for k in technique.keys
                    if f"axis.{k}" in group and technique.chosen(group[f"axis.{k}"]).any()), None)
        if overhead is None or key is None:
            continue
        members = group[group[f"front.{overhead}"]]
        using = members[technique.chosen(members[f"axis.{key}"])]
        places.append(
            f"{task_name(task, size)}: {len(using)} of the {len(members)} members of the "
            f"{overhead}-overhead front use it"
            + (f" ({', '.join(using['recipe_label'].astype(str))})" if len(using) else "")
        )
    if not places:
        return "no task has a front with a recipe that uses it"
    return "; ".join(places)


SR_KEYS = ("rounding@bwd", "rounding@dy")  # SR on the backward operands, else on dy
HADAMARD = Comparison(("transform", "transform@wgrad"), against="none")
TENSOR_SCALING = Comparison(("tensor_scale",), against="none", options=("fp32",))
BACKWARD_SR = Comparison(SR_KEYS, against="rne", options=("sr",))
CLAIMS: tuple[Claim, ...] = (
    Claim("Hadamard transforms give consistent gains and the best quality-to-overhead trade-off",
          (Gain(HADAMARD, consistent=True),), front=HADAMARD),
    Claim("Tensor scaling gives consistent gains and the best quality-to-overhead trade-off",
          (Gain(TENSOR_SCALING, consistent=True),), front=TENSOR_SCALING),
    Claim("Stochastic rounding in the backward pass gives consistent gains and the best "
          "quality-to-overhead trade-off",
          (Gain(BACKWARD_SR, consistent=True),), front=BACKWARD_SR),
    Claim("Scale representation is the primary bottleneck: the scale format has the largest "
          "effect, and UE5M3 scales beat E8M0 when combined with tensor scaling and stochastic "
          "rounding in the backward pass",
          (Largest("scale"),
           Gain(Comparison(("scale",), against="e8m0", options=("ue5m3",),
                           cells=(Cell(("tensor_scale",), "fp32"), Cell(SR_KEYS, "sr")))))),
    Claim("E4M3 (UE4M3) block scales do not converge, even with tensor scaling",
          (Divergence((Cell(("scale",), "ue4m3"), Cell(("tensor_scale",), "fp32")),
                      threshold=0.5, above=True),)),
    Claim("STE is stable, and the spline and power estimators do not beat it",
          (Divergence((Cell(("estimator",), "ste"),), threshold=0.1, above=False,
                      varying="estimator"),
           NoBetter(Comparison(("estimator",), against="ste", options=("spline", "power"))))),
    Claim("FP4 training behaviour may not carry across model scales: a smaller model's ranking "
          "of the recipes need not hold at a larger one", (Carries(),)),
)


def claims_table(verdicts: Sequence[ClaimVerdict]) -> pd.DataFrame:
    """Every number behind the verdicts: one row per claim, test and task (or the test alone
    where nothing was tested)."""
    rows = []
    for number, claim in enumerate(verdicts, start=1):
        for result in claim.tests:
            head = {"claim": number, "statement": claim.statement, "claim_verdict": claim.verdict,
                    "test": result.test, "rule": result.rule, "test_verdict": result.verdict}
            rows += [{**head, **row} for row in result.rows] or [head]
    table = pd.DataFrame(rows)
    counts = [c for c in ("n_trials", "n_diverged", "other_n_trials", "n_recipes") if c in table.columns]
    return table.astype(dict.fromkeys(counts, "Int64"))  # counts stay whole beside blank cells


def assess_claims(evidence: Evidence, claims: Sequence[Claim] = CLAIMS) -> list[ClaimVerdict]:
    """Each claim's verdict, its tests' verdicts and numbers, in the order of ``claims``."""
    return [claim.assess(evidence) for claim in claims]
