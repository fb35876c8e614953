"""Everything a report shows, computed from trial rows in the results-store schema.

``analyse`` is pure: rows in, an ``Analysis`` of tables out. Rendering and writing files live in
``render`` and ``report``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from fp4sweep.analysis.effects import Effects, axis_effects
from fp4sweep.analysis.fidelity import fidelity_changes
from fp4sweep.analysis.findings import ClaimVerdict, Evidence, assess_claims
from fp4sweep.analysis.pareto import ReferencePoint, front_slack, pareto_fronts, robust_recipes
from fp4sweep.analysis.quality import (
    TASK_KEY,
    check_trials,
    failed_trials,
    incomplete_recipes,
    latest_attempts,
    outcomes_by_axis,
    summarise_recipes,
    trial_gaps,
)

DEFAULT_TOLERANCE = 0.01  # a recipe within 1% relative loss gap of a front counts as near it


@dataclass
class Analysis:
    """The tables of one report. Problems are sentences naming what is missing or unreadable."""

    reference: ReferencePoint
    tolerance: float
    trials: pd.DataFrame = field(default_factory=pd.DataFrame)  # outcome counts per task
    recipes: pd.DataFrame = field(default_factory=pd.DataFrame)  # per task x recipe, fronts marked
    hypervolumes: pd.DataFrame = field(default_factory=pd.DataFrame)
    effects: Effects = field(default_factory=Effects)
    claims: list[ClaimVerdict] = field(default_factory=list)  # the paper's claims, with verdicts
    outcomes_by_axis: pd.DataFrame = field(default_factory=pd.DataFrame)
    failed: pd.DataFrame = field(default_factory=pd.DataFrame)
    robust: pd.DataFrame = field(default_factory=pd.DataFrame)
    fidelity: pd.DataFrame = field(default_factory=pd.DataFrame)  # rankings across fidelities
    problems: list[str] = field(default_factory=list)

    @property
    def tasks(self) -> list[tuple[str, str]]:
        """The (task, size) pairs in the store, sorted."""
        return list(self.trials.index)


def analyse(
    trials: pd.DataFrame,
    reference: ReferencePoint = ReferencePoint(),
    tolerance: float = DEFAULT_TOLERANCE,
    problems: list[str] | None = None,
) -> Analysis:
    """Quality, fronts, hypervolumes, axis effects, the paper's claims and cross-task recipes of
    ``trials``.

    ``trials`` holds rows in the results-store schema (every attempt; the latest per trial
    counts). ``problems`` are sentences already known, e.g. files the reader skipped.
    """
    analysis = Analysis(reference=reference, tolerance=tolerance, problems=list(problems or []))
    if trials.empty:
        analysis.problems.append("the store holds no trial rows yet")
        return analysis
    check_trials(trials)
    trials = latest_attempts(trials)

    runs, missing = trial_gaps(trials)
    summary = summarise_recipes(runs)
    summary, analysis.hypervolumes = pareto_fronts(summary, reference)
    if "front.model" in summary.columns:
        summary["slack.model"] = front_slack(summary, "model")
    analysis.recipes = summary
    analysis.robust = robust_recipes(summary, tolerance)
    analysis.fidelity = fidelity_changes(summary, trials)
    analysis.effects = axis_effects(runs)
    analysis.claims = assess_claims(Evidence(runs, analysis.effects, summary, tolerance, analysis.fidelity))
    analysis.outcomes_by_axis = outcomes_by_axis(runs)
    analysis.failed = failed_trials(trials)
    analysis.trials = _outcome_counts(trials, runs)
    analysis.problems += [
        *missing, *incomplete_recipes(summary, runs), *analysis.effects.problems, *_failure_note(trials)
    ]
    return analysis


def _outcome_counts(trials: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Per task: baseline trials, and recipe trials by outcome (a non-finite loss is diverged)."""
    counts = pd.crosstab([runs["task"], runs["size"]], runs["outcome"])
    counts = counts.reindex(columns=["done", "diverged", "failed"], fill_value=0)
    baselines = trials[trials["is_baseline"].astype(bool)]
    counts.insert(0, "baseline", baselines.groupby(TASK_KEY).size())
    tasks = trials.groupby(TASK_KEY).size().index
    return counts.reindex(tasks, fill_value=0).fillna(0).astype(int)


def _failure_note(trials: pd.DataFrame) -> list[str]:
    failed = int(trials["status"].eq("failed").sum())
    if not failed:
        return []
    return [f"{failed} trial(s) failed with an error and have no result (see Failed trials)"]
