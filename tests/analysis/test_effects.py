"""Axis effects recover planted effects; diverged trials are counted per technique choice."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from conftest import trial_row

from fp4sweep.analysis import analyse

INTERCEPT = 0.20
PLANTED = {
    "transform": {"hadamard16": -0.05, "hadamard64": -0.08, "none": 0.0},
    "scale": {"e8m0": 0.0, "ue4m3": -0.03, "ue5m3": -0.06},
    "rounding_bwd": {"rne": 0.0, "sr": -0.04},
}
SEEDS = range(4)
NOISE = 0.005


def planted_store(diverge: bool = False) -> pd.DataFrame:
    """Full factorial of PLANTED, gap = intercept + sum of effects + noise, 4 seeds.

    With ``diverge``, every seed-0 trial without a transform and with E8M0 scales diverges.
    """
    rng = np.random.default_rng(0)
    rows = []
    for seed in SEEDS:
        rows.append(trial_row("gpt", seed, "bf16", val_loss=3.0, axes=dict.fromkeys(PLANTED)))
        for values in itertools.product(*(levels.items() for levels in PLANTED.values())):
            axes = {axis: value for axis, (value, _) in zip(PLANTED, values)}
            gap = INTERCEPT + sum(effect for _, effect in values) + rng.normal(0.0, NOISE)
            unstable = axes["transform"] == "none" and axes["scale"] == "e8m0"
            diverged = diverge and seed == 0 and unstable
            rows.append(trial_row(
                "gpt", seed, "/".join(axes.values()), axes=axes, val_loss=3.0 * (1 + gap),
                status="diverged" if diverged else "done", overhead=0.1,
            ))
    return pd.DataFrame(rows)


def test_recovers_planted_effects_within_their_confidence_intervals():
    effects = analyse(planted_store()).effects
    assert len(effects) == sum(len(levels) for levels in PLANTED.values())
    for row in effects.itertuples():
        truth = PLANTED[row.axis][row.value] - PLANTED[row.axis][row.reference]
        if row.is_reference:
            assert row.effect == 0.0
            continue
        assert row.ci_low <= truth <= row.ci_high, row
        # A difference of two value means over 24 trials each: standard error NOISE * sqrt(2/24).
        assert row.effect == pytest.approx(truth, abs=4 * NOISE * np.sqrt(2 / 24))
        assert row.ci_high - row.ci_low < 0.01  # 72 trials, noise 0.005: a tight interval


def test_effects_are_ranked_best_first():
    effects = analyse(planted_store()).effects
    assert effects["effect"].is_monotonic_increasing
    best = effects.iloc[0]
    # Balanced design: ties in frequency pick the first value by name as reference.
    assert (best["axis"], best["value"], best["reference"]) == ("scale", "ue5m3", "e8m0")


def test_diverged_trials_are_counted_per_axis_value():
    analysis = analyse(planted_store(diverge=True))
    outcomes = analysis.outcomes_by_axis.set_index(["axis", "value"])
    # Seed 0, transform none, scale e8m0: both rounding choices diverged.
    assert outcomes.loc[("transform", "none"), "n_diverged"] == 2
    assert outcomes.loc[("scale", "e8m0"), "n_diverged"] == 2
    assert outcomes.loc[("rounding_bwd", "sr"), "n_diverged"] == 1
    assert outcomes.loc[("transform", "hadamard16"), "n_diverged"] == 0
    assert outcomes.loc[("transform", "none"), "n_trials"] == 4 * 6
    assert analysis.trials.loc[("gpt", "tiny"), "diverged"] == 2
    assert analysis.effects["n_trials"].groupby(analysis.effects["axis"]).sum().eq(4 * 18 - 2).all()


def test_confounded_axes_are_named_not_fitted():
    trials = planted_store()
    # A second axis that always equals the first cannot be told apart from it.
    trials["axis.block"] = trials["axis.transform"]
    analysis = analyse(trials)
    assert analysis.effects.empty
    assert any("confounded" in problem and "block" in problem for problem in analysis.problems)
