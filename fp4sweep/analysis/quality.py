"""Quality of each trial against its bf16 baseline, and of each recipe over seeds.

The gaps and the divergence criterion are ``fp4sweep.results.quality``'s, the ones the adaptive
search optimises: a trial's relative loss gap (and accuracy gap) to the baseline of the same task,
size and seed; a recipe's gap is the mean over its seeds. A diverged trial has no gap; it is
counted, per recipe and per technique, never dropped.

A preset (a named recipe such as ``nvfp4`` that no combination of the sweep's crossed axes
builds) has ``is_preset`` set; it carries its axis values where the schema can express them, and
stores written before that have its axis columns empty. Effects are fitted on the other,
axis-crossed, recipes.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from pandas.api.typing import SeriesGroupBy
from scipy import stats

from fp4sweep.analysis.labels import readable_labels
from fp4sweep.results.quality import accuracy_gap, diverged, recipe_gap, relative_gap, seed_baseline
from fp4sweep.results.schema import STATUSES

TASK_KEY = ["task", "size"]
RECIPE_KEY = [*TASK_KEY, "recipe_id"]
REQUIRED_COLUMNS = (
    "trial_id", "task", "size", "seed", "recipe_id", "recipe_label", "is_baseline", "status",
    "overhead.model",
)
VAL_LOSS, VAL_ACC, STEP_S = "metric.val_loss", "metric.val_acc", "time.step_s"
CONFIDENCE = 0.95
# An axis key that an axis-crossed trial does not record and its recorded keys cannot give
# (``load.fill_unrecorded_axes`` fills the others in: a new axis reads as its default).
UNSET_AXIS = "(unset)"


def task_name(task: str, size: str) -> str:
    return f"{task} ({size})"


def axis_columns(trials: pd.DataFrame) -> list[str]:
    return [column for column in trials.columns if column.startswith("axis.")]


def check_trials(trials: pd.DataFrame) -> None:
    """Raise ValueError if ``trials`` does not follow the results-store schema."""
    missing = [column for column in REQUIRED_COLUMNS if column not in trials.columns]
    if missing:
        raise ValueError(
            f"trial rows lack column(s) {missing}; required: {list(REQUIRED_COLUMNS)}"
        )
    unknown = sorted(set(trials["status"].dropna()) - set(STATUSES))
    if unknown or trials["status"].isna().any():
        raise ValueError(f"unknown trial status(es) {unknown or [None]}; valid: {list(STATUSES)}")
    if VAL_LOSS not in trials.columns and trials["status"].eq("done").any():
        raise ValueError(
            f"finished trials need column {VAL_LOSS!r}; columns: {sorted(trials.columns)}"
        )


def latest_attempts(trials: pd.DataFrame) -> pd.DataFrame:
    """One row per trial: the last attempt by ``finished_at`` (a rerun replaces a failure)."""
    if "finished_at" in trials.columns:
        trials = trials.sort_values("finished_at", kind="stable", na_position="first")
    return trials.drop_duplicates("trial_id", keep="last").reset_index(drop=True)


def trial_gaps(trials: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """The non-baseline trials with their outcome and gaps, and a sentence per missing baseline.

    Adds ``outcome`` (done/diverged/failed; a "done" trial whose loss is not finite diverged),
    ``loss_gap``, ``acc_gap`` (where accuracy is reported) and ``measured_overhead`` (step time
    relative to the baseline's, minus one; where step times are recorded).
    """
    if VAL_LOSS not in trials.columns:  # every trial so far failed or diverged
        trials = trials.assign(**{VAL_LOSS: np.nan})
    trials = trials.assign(outcome=_outcome(trials))
    baselines = trials[trials["is_baseline"].astype(bool)]
    runs = trials[~trials["is_baseline"].astype(bool)].copy()
    runs["recipe_label"] = readable_labels(runs)
    axes = axis_columns(runs)
    # Stores written before presets carried axis values mark none: a row without axes is one.
    without_axes = runs[axes].isna().all(axis=1) if axes else pd.Series(True, index=runs.index)
    marked = runs["is_preset"] if "is_preset" in runs.columns else pd.Series(pd.NA, index=runs.index)
    runs["is_preset"] = marked.astype("boolean").fillna(without_axes).astype(bool)
    for axis in axes:
        runs[axis] = runs[axis].astype(object).where(runs["is_preset"], runs[axis].fillna(UNSET_AXIS))
        runs[axis] = runs[axis].map(lambda value: value if pd.isna(value) else str(value))

    measures = [column for column in (VAL_LOSS, VAL_ACC, STEP_S) if column in trials.columns]
    finished = baselines[baselines["outcome"].eq("done")]
    base = finished.groupby([*TASK_KEY, "seed"])[measures].agg(seed_baseline).add_prefix("base.")
    runs = runs.join(base, on=[*TASK_KEY, "seed"])

    done = runs["outcome"].eq("done")
    runs["loss_gap"] = relative_gap(runs[VAL_LOSS], runs[f"base.{VAL_LOSS}"]).where(done)
    if VAL_ACC in runs.columns:
        runs["acc_gap"] = accuracy_gap(runs[VAL_ACC], runs[f"base.{VAL_ACC}"]).where(done)
    if STEP_S in runs.columns:
        runs["measured_overhead"] = (runs[STEP_S] / runs[f"base.{STEP_S}"] - 1.0).where(done)
    return runs, _missing_baselines(baselines, runs)


def _outcome(trials: pd.DataFrame) -> pd.Series:
    blown_up = trials["status"].eq("done") & trials[VAL_LOSS].astype(float).map(diverged)
    return trials["status"].astype(str).mask(blown_up, "diverged")


def _missing_baselines(baselines: pd.DataFrame, runs: pd.DataFrame) -> list[str]:
    problems = []
    with_baseline = set(baselines[TASK_KEY].itertuples(index=False, name=None))
    for (task, size), group in runs.groupby(TASK_KEY, sort=True):
        where = task_name(task, size)
        if (task, size) not in with_baseline:
            problems.append(
                f"{where}: no bf16 baseline trial in the store, so none of its {len(group)} trials "
                "has a quality gap"
            )
            continue
        orphans = group[group["outcome"].eq("done") & group["loss_gap"].isna()]
        if len(orphans):
            seeds = sorted(orphans["seed"].unique().tolist())
            problems.append(
                f"{where}: no finished bf16 baseline for seed(s) {seeds}; {len(orphans)} finished "
                "trials of those seeds have no quality gap"
            )
    return problems


def summarise_recipes(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (task, size, recipe): counts of outcomes and seed statistics of each gap.

    ``eligible`` marks recipes fit for a Pareto front: at least one gap and no diverged seed.
    """
    flags = runs.assign(
        n_gaps=runs["loss_gap"].notna(),
        n_diverged=runs["outcome"].eq("diverged"),
        n_failed=runs["outcome"].eq("failed"),
    )
    groups = flags.groupby(RECIPE_KEY, sort=True)
    first = ["recipe_label", "is_preset", *axis_columns(runs)]
    summary = groups[first].first()
    summary["n_trials"] = groups.size()
    counts = ["n_gaps", "n_diverged", "n_failed"]
    summary[counts] = groups[counts].sum()
    means = [
        c for c in ("overhead.model", "overhead.points", "measured_overhead") if c in runs.columns
    ]
    summary[means] = groups[means].mean()
    for gap in ("loss_gap", "acc_gap"):
        if gap in runs.columns:
            summary = summary.join(_seed_statistics(groups[gap], gap))
    summary["eligible"] = summary["n_gaps"].gt(0) & summary["n_diverged"].eq(0)
    return summary.reset_index()


def _seed_statistics(values: SeriesGroupBy, name: str) -> pd.DataFrame:
    """The recipe's gap (``results.quality.recipe_gap``), the standard deviation over seeds and a
    Student-t confidence interval of the mean."""
    table = values.agg(["std", "count"])
    table["mean"] = values.agg(lambda gaps: recipe_gap(gaps.dropna()))
    n = table["count"].to_numpy(dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        t = stats.t.ppf(0.5 + CONFIDENCE / 2, np.where(n > 1, n - 1, np.nan))
        half_width = t * table["std"].to_numpy() / np.sqrt(n)
    return pd.DataFrame(
        {
            f"{name}_mean": table["mean"],
            f"{name}_std": table["std"],
            f"{name}_ci_low": table["mean"] - half_width,
            f"{name}_ci_high": table["mean"] + half_width,
        }
    )


def outcomes_by_axis(runs: pd.DataFrame) -> pd.DataFrame:
    """Per task and technique choice (axis value): how many trials ran, diverged and failed."""
    flags = runs.assign(
        diverged=runs["outcome"].eq("diverged"), failed=runs["outcome"].eq("failed")
    )
    columns = [*TASK_KEY, "axis", "value", "n_trials", "n_diverged", "n_failed"]
    tables = []
    for axis in axis_columns(runs):
        counts = flags.groupby([*TASK_KEY, axis], sort=True).agg(
            n_trials=("trial_id", "size"),
            n_diverged=("diverged", "sum"),
            n_failed=("failed", "sum"),
        )
        counts = counts.reset_index().rename(columns={axis: "value"})
        counts.insert(2, "axis", axis.removeprefix("axis."))
        tables.append(counts)
    if not tables:
        return pd.DataFrame(columns=columns)
    table = pd.concat(tables, ignore_index=True)
    table["diverged_fraction"] = table["n_diverged"] / table["n_trials"]
    return table


def failed_trials(trials: pd.DataFrame) -> pd.DataFrame:
    """Every failed trial, baselines included, with the error it recorded."""
    columns = [
        c for c in ("trial_id", *TASK_KEY, "seed", "recipe_label", "error.type", "error.message")
        if c in trials.columns
    ]
    failed = trials[trials["status"].eq("failed")]
    return failed[columns].sort_values([*TASK_KEY, "seed", "trial_id"]).reset_index(drop=True)


def incomplete_recipes(summary: pd.DataFrame, runs: pd.DataFrame) -> list[str]:
    """A sentence per task where some recipes have fewer seeds than others (a sweep running)."""
    problems = []
    seeds = runs.groupby(TASK_KEY)["seed"].nunique()
    for (task, size), group in summary.groupby(TASK_KEY, sort=True):
        expected = seeds[(task, size)]
        short = int(group["n_trials"].lt(expected).sum())
        if short:
            problems.append(
                f"{task_name(task, size)}: {short} of {len(group)} recipes have trials for fewer "
                f"than the task's {expected} seeds (the sweep may still be running)"
            )
    return problems
