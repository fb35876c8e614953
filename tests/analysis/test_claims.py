"""The paper's claims get the verdict their planted stores call for, by each rule's letter."""

from __future__ import annotations

import io
import itertools
import json

import numpy as np
import pandas as pd
import pytest
from rich.console import Console
from synthetic_store import trial_row

from fp4sweep.analysis import analyse, build_report
from fp4sweep.analysis.effects import EFFECT_COLUMNS, Effects, axis_effects
from fp4sweep.analysis.findings import (
    BACKWARD_SR,
    CONTRADICTED,
    NOT_RESOLVED,
    NOT_TESTED,
    SUPPORTED,
    Cell,
    Comparison,
    Divergence,
    Evidence,
    Gain,
    Largest,
    NoBetter,
    claims_table,
)
from fp4sweep.analysis.quality import latest_attempts, trial_gaps
from fp4sweep.analysis.summary import print_summary

BASE_LOSS, INTERCEPT = 3.0, 0.2
# The options' overheads: each axis' first option is its cheapest, the report's reference.
COSTS = {"none": 0.0, "rne": 0.0, "e8m0": 0.0, "ste": 0.0, "rhadamard16": 0.1, "fp32": 0.01,
         "sr": 0.2, "ue5m3": 0.0, "ue4m3": 0.0, "spline": 0.0, "power": 0.0}


def planted(tasks, axes: dict[str, list[str]], gap, noise=0.005, diverged=lambda *_: False, seeds=3):
    """Every combination of ``axes`` on every task, ``seeds`` seeds; a trial's relative gap is
    ``gap(task, options)`` plus Gaussian noise, unless ``diverged(task, seed, options)``."""
    rng = np.random.default_rng(0)
    rows = []
    for task, seed in itertools.product(tasks, range(seeds)):
        rows.append(trial_row(task, seed, "bf16", val_loss=BASE_LOSS, axes=dict.fromkeys(axes)))
        for combination in itertools.product(*axes.values()):
            options = dict(zip(axes, combination))
            label = " ".join(f"{k}={v}" for k, v in options.items())
            overhead = sum(COSTS[v] for v in combination)
            if diverged(task, seed, options):
                rows.append(trial_row(task, seed, label, axes=options, status="diverged",
                                      overhead=overhead))
                continue
            value = INTERCEPT + gap(task, options) + rng.normal(0.0, noise)
            rows.append(trial_row(task, seed, label, axes=options,
                                  val_loss=BASE_LOSS * (1 + value), overhead=overhead))
    return pd.DataFrame(rows)


def evidence(trials: pd.DataFrame, tolerance: float = 0.01) -> Evidence:
    runs, _ = trial_gaps(latest_attempts(trials))
    return Evidence(runs, axis_effects(runs), pd.DataFrame(), tolerance)


def of_tasks(given: Evidence, *tasks: str) -> Evidence:
    runs = given.runs[given.runs["task"].isin(tasks)]
    return Evidence(runs, axis_effects(runs), given.recipes, given.tolerance)


# Store A: the techniques of claims 1-4 crossed on two tasks.
TECHNIQUES = {
    "transform": ["none", "rhadamard16"], "tensor_scale": ["none", "fp32"],
    "rounding@bwd": ["rne", "sr"], "scale": ["e8m0", "ue5m3"],
}


def techniques_gap(task: str, o: dict[str, str]) -> float:
    gap = 0.0
    if o["transform"] != "none" and task == "gpt":  # lowers in gpt, nothing in regression
        gap -= 0.05
    if o["tensor_scale"] == "fp32":  # lowers on average, raises with E8M0 scales
        gap += 0.04 if o["scale"] == "e8m0" else -0.2
    if o["scale"] == "ue5m3":  # SR in the backward: no effect at all
        gap -= 0.3
    return gap


@pytest.fixture(scope="module")
def techniques():
    return analyse(planted(["gpt", "regression"], TECHNIQUES, techniques_gap))


def test_consistent_gain_rule_supported_contradicted_and_unresolved(techniques):
    hadamard, tensor, rounding = techniques.claims[:3]
    # Lowers in gpt, unresolved in regression, raises nowhere: consistent where resolved.
    assert hadamard.verdict == SUPPORTED
    rows = {row["task"]: row for row in hadamard.tests[0].rows}
    assert rows["gpt"]["ci_high"] < 0 and rows["gpt"]["ci_low"] < -0.05 < rows["gpt"]["ci_high"]
    assert rows["regression"]["ci_low"] < 0 < rows["regression"]["ci_high"]
    assert rows["gpt"]["n_trials"] == 48 and rows["gpt"]["key"] == "transform"
    assert "resolved lower in 1 of 2 comparisons (task and option), higher in 0" in hadamard.tests[0].sentence
    # Its average lowers the gap, yet it raises it within scale = e8m0: not consistent.
    assert tensor.verdict == CONTRADICTED
    assert all(row["ci_high"] < 0 for row in tensor.tests[0].rows)
    assert "resolved higher within" in tensor.tests[0].sentence
    assert "tensor_scale = fp32 within scale = e8m0 +0.0" in tensor.tests[0].sentence
    assert rounding.verdict == NOT_RESOLVED
    assert "resolved lower in 0 of 2 comparisons (task and option), higher in 0" in rounding.tests[0].sentence


def test_claims_that_trade_well_say_where_they_sit_on_the_fronts(techniques):
    for claim in techniques.claims[:3]:
        assert "members of the model-overhead front use it" in claim.front
    assert all(not claim.front for claim in techniques.claims[3:])


def test_scale_claim_is_decided_on_the_largest_effect_and_within_the_cells(techniques):
    scale = techniques.claims[3]
    largest, within = scale.tests
    assert (scale.verdict, largest.verdict, within.verdict) == (SUPPORTED,) * 3
    assert {row["task"] for row in largest.rows} == {"gpt", "regression"}
    # Only trials with tensor scaling and SR on the backward: 2 transforms x 2 scales x 3 seeds.
    assert [row["n_trials"] for row in within.rows] == [12, 12]
    for row in within.rows:
        # UE5M3's -0.3, and tensor scaling's -0.2 with it against its +0.04 with E8M0.
        assert row["ci_low"] < -0.54 < row["ci_high"] < 0


def test_a_store_that_does_not_vary_an_axis_says_not_tested(techniques):
    e4m3, ste, scales = techniques.claims[4:]
    assert scales.verdict == NOT_TESTED
    assert e4m3.verdict == ste.verdict == NOT_TESTED
    assert e4m3.tests[0].sentence == (
        "not tested: the store has no finished or diverged scale = ue4m3, tensor_scale = fp32 trials"
    )
    assert ste.tests[1].sentence == (
        "not tested: the store does not vary estimator = spline or power (against ste)"
    )
    fixed = planted(["gpt"], {"scale": ["e8m0", "ue5m3"]}, lambda t, o: 0.0)
    hadamard = analyse(fixed).claims[0]
    assert hadamard.verdict == NOT_TESTED
    assert hadamard.tests[0].sentence == "not tested: the store does not vary transform != none (against none)"


# Store B: scale formats, tensor scaling, backward SR and estimators on three tasks, each task
# planted for another verdict.
FORMATS = {
    "scale": ["e8m0", "ue4m3", "ue5m3"], "tensor_scale": ["none", "fp32"],
    "rounding@bwd": ["rne", "sr"], "estimator": ["ste", "spline", "power"],
}
NOISE = {"gpt": 0.005, "regression": 0.005, "classification": 0.05}


def formats_gap(task: str, o: dict[str, str]) -> float:
    in_cells = o["tensor_scale"] == "fp32" and o["rounding@bwd"] == "sr"
    gap = 0.0
    if o["scale"] == "ue5m3":
        gap += {"gpt": -0.1 if in_cells else -0.05, "regression": 0.05 if in_cells else -0.05,
                "classification": 0.0}[task]
    gap += {"gpt": {"spline": 0.05, "power": 0.03}, "regression": {"spline": -0.05}}.get(
        task, {}).get(o["estimator"], 0.0)
    return gap


def formats_diverged(task: str, seed: int, o: dict[str, str]) -> bool:
    if (o["scale"], o["tensor_scale"]) != ("ue4m3", "fp32"):
        return False
    # gpt: all of them; regression: none; classification: half (those with nearest rounding).
    return {"gpt": True, "regression": False, "classification": o["rounding@bwd"] == "rne"}[task]


@pytest.fixture(scope="module")
def formats():
    frames = [planted([task], FORMATS, formats_gap, noise, formats_diverged)
              for task, noise in NOISE.items()]
    return evidence(pd.concat(frames, ignore_index=True))


WITHIN_CELLS = Gain(Comparison(("scale",), against="e8m0", options=("ue5m3",),
                               cells=(Cell(("tensor_scale",), "fp32"), Cell(("rounding@bwd",), "sr"))))


@pytest.mark.parametrize("task, verdict", [
    ("gpt", SUPPORTED), ("regression", CONTRADICTED), ("classification", NOT_RESOLVED),
])
def test_gain_within_cells(formats, task, verdict):
    result = WITHIN_CELLS.assess(of_tasks(formats, task))
    assert result.verdict == verdict
    (row,) = result.rows
    truth = {"gpt": -0.1, "regression": 0.05, "classification": 0.0}[task]
    assert row["ci_low"] < truth < row["ci_high"]
    assert row["n_trials"] == 2 * 3 * 3  # two scales x three estimators x three seeds


def test_gain_on_every_task_is_contradicted_by_one(formats):
    assert WITHIN_CELLS.assess(formats).verdict == CONTRADICTED
    assert WITHIN_CELLS.assess(of_tasks(formats, "gpt", "classification")).verdict == NOT_RESOLVED


NOT_BETTER = NoBetter(Comparison(("estimator",), against="ste", options=("spline", "power")))


@pytest.mark.parametrize("task, verdict", [
    ("gpt", SUPPORTED), ("regression", CONTRADICTED), ("classification", NOT_RESOLVED),
])
def test_no_better_against_an_option_that_is_not_the_reports_reference(monkeypatch, task, verdict):
    # STE made the costliest estimator: the report's fit measures them against "power" (equally
    # cheap as spline, first by name), so the claim refits against STE.
    monkeypatch.setitem(COSTS, "ste", 0.05)
    subset = evidence(planted([task], FORMATS, formats_gap, NOISE[task], formats_diverged))
    main = subset.effects.main
    assert set(main.loc[main["axis"] == "estimator", "reference"]) == {"power"}
    result = NOT_BETTER.assess(subset)
    assert result.verdict == verdict
    effects = {row["option"]: row["effect"] for row in result.rows}
    truth = {"gpt": {"spline": 0.05, "power": 0.03}, "regression": {"spline": -0.05, "power": 0.0},
             "classification": {"spline": 0.0, "power": 0.0}}[task]
    for option, effect in effects.items():
        assert effect == pytest.approx(truth[option], abs=0.05 if task == "classification" else 0.01)


E4M3 = Divergence((Cell(("scale",), "ue4m3"), Cell(("tensor_scale",), "fp32")), 0.5, above=True)


def test_divergence_share_against_its_threshold(formats):
    result = E4M3.assess(formats)
    assert result.verdict == CONTRADICTED  # regression's E4M3 trials all converge
    rows = {row["task"]: row for row in result.rows}
    assert {task: (row["n_diverged"], row["n_trials"]) for task, row in rows.items()} == {
        "classification": (9, 18), "gpt": (18, 18), "regression": (0, 18),
    }
    assert rows["gpt"]["ci_low"] > 0.5 and rows["regression"]["ci_high"] < 0.5
    assert E4M3.assess(of_tasks(formats, "gpt")).verdict == SUPPORTED
    assert E4M3.assess(of_tasks(formats, "classification")).verdict == NOT_RESOLVED
    assert np.isnan(rows["gpt"]["gap_mean_finished"])
    assert "18 of 18 diverged (100%, 95% CI 81% to 100%)" in result.sentence


def test_stability_is_tested_only_where_the_estimator_varies(formats):
    stable = Divergence((Cell(("estimator",), "ste"),), 0.1, above=False, varying="estimator")
    result = stable.assess(formats)
    rows = {row["task"]: row for row in result.rows}
    assert rows["regression"]["n_diverged"] == 0 and rows["regression"]["ci_high"] < 0.1
    assert rows["gpt"]["n_diverged"] == 6  # its E4M3 trials with tensor scaling
    assert result.verdict == NOT_RESOLVED
    fixed = evidence(planted(["gpt"], {"scale": ["e8m0", "ue5m3"]}, lambda t, o: 0.0))
    assert stable.assess(fixed).verdict == NOT_TESTED


def main_effects(task: str, effects: dict[str, tuple[float, float, float]]) -> Effects:
    """A report's main-effects table: axis -> (effect, ci_low, ci_high) of its one non-reference
    option."""
    rows = [{"task": task, "size": "tiny", "axis": axis, "value": "b", "reference": "a",
             "is_reference": False, "effect": e, "ci_low": lo, "ci_high": hi, "p_value": 0.01,
             "n_trials": 12, "heterogeneous_by": ""} for axis, (e, lo, hi) in effects.items()]
    return Effects(main=pd.DataFrame(rows, columns=EFFECT_COLUMNS))


@pytest.mark.parametrize("effects, verdict", [
    ({"scale": (-0.5, -0.6, -0.4), "block": (0.2, 0.1, 0.3)}, SUPPORTED),
    # In magnitude: scale 0.5 [0.4, 0.6] against block 0.45 [0.3, 0.6]: they overlap.
    ({"scale": (-0.5, -0.6, -0.4), "block": (-0.45, -0.6, -0.3)}, NOT_RESOLVED),
    ({"scale": (0.05, -0.01, 0.11), "block": (-0.4, -0.5, -0.3)}, CONTRADICTED),
    ({"block": (-0.4, -0.5, -0.3), "transform": (0.1, 0.0, 0.2)}, NOT_TESTED),
    ({"scale": (-0.5, -0.6, -0.4)}, NOT_TESTED),  # no other axis to be larger than
])
def test_largest_effect(effects, verdict):
    given = Evidence(pd.DataFrame(), main_effects("gpt", effects), pd.DataFrame(), 0.01)
    result = Largest("scale").assess(given)
    assert result.verdict == verdict
    if verdict == NOT_RESOLVED:
        (row,) = result.rows
        assert (row["near"], row["far"], row["other_near"], row["other_far"]) == pytest.approx(
            (0.4, 0.6, 0.3, 0.6))


def test_largest_effect_needs_every_task():
    both = Effects(main=pd.concat([
        main_effects("gpt", {"scale": (-0.5, -0.6, -0.4), "block": (0.2, 0.1, 0.3)}).main,
        main_effects("mnist", {"scale": (-0.1, -0.2, -0.05), "block": (0.2, 0.1, 0.3)}).main,
    ]))
    result = Largest("scale").assess(Evidence(pd.DataFrame(), both, pd.DataFrame(), 0.01))
    assert result.verdict == NOT_RESOLVED
    assert [row["task_verdict"] for row in result.rows] == [SUPPORTED, NOT_RESOLVED]


def test_the_report_states_the_claims_first_with_their_numbers(techniques, tmp_path):
    trials = planted(["gpt", "regression"], TECHNIQUES, techniques_gap)
    page = build_report(trials, tmp_path)
    text = page.read_text()
    assert text.index("Findings: the paper's claims") < text.index("Main findings")
    assert "arXiv:2509.17791" in text and "<i>consistent gain</i>" in text
    summary = json.loads((tmp_path / "report.json").read_text())
    assert [claim["verdict"] for claim in summary["claims"]] == [
        SUPPORTED, CONTRADICTED, NOT_RESOLVED, SUPPORTED, NOT_TESTED, NOT_TESTED, NOT_TESTED,
    ]
    table = pd.read_csv(tmp_path / "claims.csv")
    assert len(table) == len(claims_table(techniques.claims))
    first = table[(table["claim"] == 1) & (table["task"] == "gpt")].iloc[0]
    assert first["effect"] == pytest.approx(techniques.claims[0].tests[0].rows[0]["effect"])

    terminal = Console(file=io.StringIO(), width=300)
    print_summary(page, terminal)
    printed = terminal.file.getvalue()
    assert printed.index("Findings: the paper's claims") < printed.index("gpt (tiny)")
    assert "contradicted: Tensor scaling gives consistent gains" in printed
    assert "not tested: E4M3 (UE4M3) block scales do not converge" in printed


def test_backward_sr_falls_back_on_the_gradient_key():
    only_dy = planted(["gpt"], {"rounding@dy": ["rne", "sr"]},
                      lambda t, o: -0.05 if o["rounding@dy"] == "sr" else 0.0)
    result = Gain(BACKWARD_SR, consistent=True).assess(evidence(only_dy))
    assert result.verdict == SUPPORTED and result.rows[0]["key"] == "rounding@dy"
