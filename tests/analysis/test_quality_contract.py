"""The adaptive search and the report rank by the same quality gap, and share one divergence test."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from synthetic_store import trial_row
from optuna.trial import TrialState

from fp4sweep.analysis import analyse
from fp4sweep.results.quality import BLOWUP, diverged, recipe_gap, relative_gap
from fp4sweep.sweep.adaptive import recipe_result
from fp4sweep.tasks.base import DivergenceGuard

BASE = {0: 2.0, 1: 2.5, 2: 4.0}  # per-seed baselines far apart: a ratio of means would differ
LOSSES = {0: 2.2, 1: 3.5, 2: 4.1}


def store_rows() -> list[dict]:
    rows = []
    for seed, base in BASE.items():
        rows.append(trial_row("gpt", seed, "bf16", val_loss=base, axes={"scale": None}))
        rows.append(trial_row("gpt", seed, "ue5m3", val_loss=LOSSES[seed], axes={"scale": "ue5m3"},
                              overhead=0.2))
    return rows


def test_search_objective_equals_report_gap():
    rows = store_rows()
    recipe_rows = [row for row in rows if not row["is_baseline"]]
    state, (search_gap, overhead) = recipe_result(recipe_rows, BASE)
    assert state == TrialState.COMPLETE and overhead == pytest.approx(0.2)

    recipes = analyse(pd.DataFrame(rows)).recipes.set_index("recipe_label")
    assert recipes.loc["ue5m3", "loss_gap_mean"] == pytest.approx(search_gap, rel=1e-12)
    # Each seed against its own baseline, then the mean: not the gap of the mean losses.
    expected = recipe_gap(relative_gap(LOSSES[s], BASE[s]) for s in BASE)
    assert search_gap == pytest.approx(expected)
    ratio_of_means = sum(LOSSES.values()) / sum(BASE.values()) - 1
    assert abs(search_gap - ratio_of_means) > 0.02


def test_a_rerun_baseline_is_averaged_with_the_first():
    rows = store_rows()
    rerun = trial_row("gpt", 0, "bf16", val_loss=3.0, axes={"scale": None})
    rerun["trial_id"] += "-rerun"
    recipes = analyse(pd.DataFrame([*rows, rerun])).recipes.set_index("recipe_label")
    seed_gaps = [relative_gap(LOSSES[0], 2.5), *(relative_gap(LOSSES[s], BASE[s]) for s in (1, 2))]
    assert recipes.loc["ue5m3", "loss_gap_mean"] == pytest.approx(recipe_gap(seed_gaps))


def test_non_finite_loss_is_diverged_for_the_search_and_the_report():
    rows = store_rows()
    rows[1]["metric.val_loss"] = math.inf  # seed 0 of the recipe "finished" with an infinite loss
    recipe_rows = [row for row in rows if not row["is_baseline"]]
    assert recipe_result(recipe_rows, BASE) == (TrialState.PRUNED, None)
    recipes = analyse(pd.DataFrame(rows)).recipes.set_index("recipe_label")
    assert recipes.loc["ue5m3", "n_diverged"] == 1 and not recipes.loc["ue5m3", "eligible"]


def test_task_guard_uses_the_shared_criterion():
    guard = DivergenceGuard()
    assert not guard.diverged(-2.0)
    assert not guard.diverged(2.0 * BLOWUP)  # magnitudes: at the limit, not past it
    assert guard.diverged(-2.0 * BLOWUP * 1.01) == diverged(-2.0 * BLOWUP * 1.01, -2.0)
    assert guard.diverged(math.nan) and diverged(math.inf)
    assert DivergenceGuard().diverged(math.nan)  # a first loss that is not finite too
