"""Axis effects recover planted effects; diverged trials are counted per technique choice."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from synthetic_store import trial_row

from fp4sweep.analysis import analyse
from fp4sweep.analysis.effects import axis_effects
from fp4sweep.analysis.quality import latest_attempts, trial_gaps

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
    effects = analyse(planted_store()).effects.main
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
    effects = analyse(planted_store()).effects.main
    assert effects["effect"].is_monotonic_increasing
    best = effects.iloc[0]
    # Balanced design, equal overheads: ties pick the axis' default as reference (transform: none).
    assert (best["axis"], best["value"], best["reference"]) == ("transform", "hadamard64", "none")


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
    assert analysis.effects.main["n_trials"].groupby(analysis.effects.main["axis"]).sum().eq(4 * 18 - 2).all()


def test_axes_that_move_together_are_fitted_once_and_named():
    trials = planted_store()
    # A second axis that always equals the first cannot be told apart from it: one effect,
    # under the shorter key, with the other named beside it.
    trials["axis.transform@wgrad"] = trials["axis.transform"]
    analysis = analyse(trials)
    main = analysis.effects.main
    assert set(main["axis"]) == set(PLANTED)
    assert analysis.effects.aliases[("gpt", "tiny")] == {"transform": ["transform@wgrad"]}
    assert "transform@wgrad with transform" in analysis.effects.findings[("gpt", "tiny")]


def test_confounded_axes_are_named_not_fitted():
    trials = planted_store()
    # An axis that is constant within each value of another, without the two determining each
    # other, cannot be told apart from it either; no effect is fitted.
    trials["axis.block"] = trials["axis.transform"].map(
        lambda transform: "16" if transform == "none" else "32"
    )
    trials.loc[trials["axis.scale"].eq("ue5m3") & trials["axis.transform"].eq("none"), "axis.block"] = "8"
    analysis = analyse(trials)
    assert analysis.effects.main.empty
    assert any("confounded" in problem and "block" in problem for problem in analysis.problems)


def with_preset(trials: pd.DataFrame) -> pd.DataFrame:
    """``trials`` plus a preset, which carries no axis values, on every seed."""
    rows = [
        trial_row("gpt", seed, "nvfp4", axes=dict.fromkeys(PLANTED), val_loss=3.0 * 1.5,
                  overhead=0.3)
        for seed in SEEDS
    ]
    return pd.concat([trials, pd.DataFrame(rows)], ignore_index=True)


def test_planted_effects_are_recovered_with_a_preset_beside_the_fit():
    analysis = analyse(with_preset(planted_store()))
    effects = analysis.effects.main
    assert not any("not estimated" in problem for problem in analysis.problems)
    for row in effects[~effects["is_reference"]].itertuples():
        truth = PLANTED[row.axis][row.value] - PLANTED[row.axis][row.reference]
        assert row.ci_low <= truth <= row.ci_high, row
    # The preset's four trials are not in any axis value's count, and it keeps its own row.
    assert effects.groupby("axis")["n_trials"].sum().eq(4 * 18).all()
    preset = analysis.recipes.set_index("recipe_label").loc["nvfp4"]
    assert preset["is_preset"] and preset["loss_gap_mean"] == pytest.approx(0.5)
    assert "(unset)" not in set(analysis.recipes["axis.scale"].dropna())


def test_finding_names_resolved_choices_with_intervals():
    finding = analyse(planted_store()).effects.findings[("gpt", "tiny")]
    # Largest first; equal overheads make the default, none, transform's reference.
    assert finding.startswith("gpt (tiny): transform = hadamard64 lowers the loss gap by 0.079")
    assert "rounding_bwd = sr lowers the loss gap by 0.039 (95% CI 0.037 to 0.041) against rne" in finding
    assert "scale = ue5m3 lowers the loss gap by 0.06" in finding
    assert "depends on" not in finding  # additive by construction


def heterogeneous_store() -> pd.DataFrame:
    """SR on the backward pass helps only with E8M0 scales (-0.1 there, 0 with UE5M3)."""
    rng = np.random.default_rng(1)
    rows = []
    for seed in SEEDS:
        rows.append(trial_row("gpt", seed, "bf16", val_loss=3.0, axes=dict.fromkeys(PLANTED)))
        for transform, scale, rounding in itertools.product(
            ("none", "hadamard16"), ("e8m0", "ue5m3"), ("rne", "sr")
        ):
            gap = 0.2 - 0.03 * (transform != "none") - 0.06 * (scale == "ue5m3")
            gap += -0.1 * (rounding == "sr" and scale == "e8m0") + rng.normal(0.0, NOISE)
            axes = {"transform": transform, "scale": scale, "rounding_bwd": rounding}
            # Overheads make the plain choices the references.
            cost = 0.1 * (transform != "none") + 0.01 * (scale != "e8m0") + 0.2 * (rounding == "sr")
            rows.append(trial_row("gpt", seed, f"{transform}/{scale}/{rounding}", axes=axes,
                                  val_loss=3.0 * (1 + gap), overhead=cost))
    return pd.DataFrame(rows)


def test_heterogeneous_effect_is_flagged_with_its_contexts():
    effects = analyse(heterogeneous_store()).effects
    main = effects.main.set_index(["axis", "value"])
    assert main.loc[("rounding_bwd", "sr"), "heterogeneous_by"] == "scale"
    assert main.loc[("rounding_bwd", "sr"), "effect"] == pytest.approx(-0.05, abs=0.01)
    assert main.loc[("transform", "hadamard16"), "heterogeneous_by"] == ""
    contexts = effects.contexts.set_index(
        ["axis", "value", "context_axis", "context_value"]
    ).sort_index()
    within = contexts.loc[("rounding_bwd", "sr", "scale")]
    assert within.loc["e8m0", "effect"] == pytest.approx(-0.1, abs=0.01)
    assert within.loc["ue5m3", "ci_low"] < 0 < within.loc["ue5m3", "ci_high"]
    assert within["heterogeneous"].all()
    assert not contexts.loc[("transform", "hadamard16", "scale"), "heterogeneous"].any()
    interactions = effects.interactions
    pair = interactions[
        interactions[["axis", "other_axis"]].apply(frozenset, axis=1) == {"rounding_bwd", "scale"}
    ]
    assert len(pair) == 1  # SR against RNE, UE5M3 against E8M0: one product term
    assert pair["interaction"].iloc[0] == pytest.approx(0.1, abs=0.01)
    assert pair["ci_low"].iloc[0] > 0
    assert "depends on scale" in effects.findings[("gpt", "tiny")]


def test_a_finding_names_only_the_largest_effects():
    many = {f"axis{i}": {"a": 0.0, "b": -0.01 * (i + 1)} for i in range(7)}
    rows = []
    rng = np.random.default_rng(2)
    for seed in range(2):
        rows.append(trial_row("gpt", seed, "bf16", val_loss=3.0, axes=dict.fromkeys(many)))
        for values in itertools.product("ab", repeat=len(many)):
            axes = dict(zip(many, values))
            gap = 0.2 + sum(many[axis][value] for axis, value in axes.items())
            rows.append(trial_row("gpt", seed, "".join(values), axes=axes, overhead=0.1,
                                  val_loss=3.0 * (1 + gap + rng.normal(0.0, NOISE / 5))))
    finding = analyse(pd.DataFrame(rows)).effects.findings[("gpt", "tiny")]
    assert finding.startswith("gpt (tiny): axis6 = b lowers the loss gap by 0.07")
    assert "axis2 = b" in finding and "axis1 = b" not in finding
    assert finding.endswith("; 2 smaller resolved effects in the table.")


def test_a_value_is_charged_only_its_own_overhead_not_what_it_was_crossed_with():
    """An unbalanced crossing: the cheap optimiser appears mostly beside a costly transform. Its
    own overhead is zero within every cell, so the default stays the reference."""
    rows = []
    for seed in range(3):
        rows.append(trial_row("regression", seed, "bf16", val_loss=1.0, axes=dict.fromkeys(["transform", "optimizer"])))
        for transform, optimizer in [("none", "adamw"), ("rhadamard16", "adamw"),
                                     ("rhadamard16", "stable_spam"), ("none", "stable_spam"),
                                     ("rhadamard16", "stable_spam")]:
            rows.append(trial_row(
                "regression", seed, f"{transform}/{optimizer}", axes={"transform": transform, "optimizer": optimizer},
                val_loss=1.1 + 0.01 * seed + (0.05 if optimizer == "stable_spam" else 0.0),
                overhead=0.5 if transform == "rhadamard16" else 0.1,
            ))
    effects = analyse(pd.DataFrame(rows)).effects.main.set_index(["axis", "value"])
    assert effects.loc[("optimizer", "stable_spam"), "reference"] == "adamw"
    assert effects.loc[("transform", "rhadamard16"), "reference"] == "none"


def test_pairs_can_be_limited_to_some_axes_without_changing_main_effects():
    runs, _ = trial_gaps(latest_attempts(planted_store()))
    every, some, none = (axis_effects(runs, pairs_with=axes) for axes in (None, ["transform"], []))
    pd.testing.assert_frame_equal(some.main.drop(columns="heterogeneous_by"),
                                  every.main.drop(columns="heterogeneous_by"))
    assert set(map(frozenset, every.contexts[["axis", "context_axis"]].to_numpy())) == {
        frozenset(pair) for pair in itertools.combinations(PLANTED, 2)
    }
    assert {"transform"} <= set(some.contexts["axis"]) and (
        some.contexts["axis"].eq("transform") | some.contexts["context_axis"].eq("transform")
    ).all()
    assert none.contexts.empty and none.interactions.empty and len(none.main) == len(every.main)
