"""Fronts, hypervolumes and cross-task recipes on a store whose answers are known beforehand."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from synthetic_store import trial_row
from scipy import stats

from fp4sweep.analysis import ReferencePoint, analyse, build_report

SEEDS = (0, 1, 2)
SPREAD = 0.01  # seed s has loss gap g + SPREAD * (s - 1): mean g, standard deviation SPREAD

# label: (modelled overhead, loss gap, measured overhead) on "gpt"
GPT = {
    "A": (0.05, 0.30, 0.50),
    "B": (0.10, 0.12, 0.40),
    "C": (0.25, 0.05, 0.10),
    "C2": (0.25, 0.05, 0.10),  # ties C: both are on the front
    "D": (0.60, 0.01, 0.30),
    "Y": (1.50, 0.00, 0.90),  # on the front, beyond the reference point: adds no hypervolume
    "E": (0.12, 0.20, 0.05),
    "F": (0.30, 0.30, 0.60),
}
GPT_FRONT_MODEL = {"A", "B", "C", "C2", "D", "Y"}
# The area the front dominates up to the reference (1, 1): a staircase of width x height.
GPT_HV_MODEL = 0.05 * 0.70 + 0.15 * 0.88 + 0.35 * 0.95 + 0.40 * 0.99
GPT_FRONT_MEASURED = {"E", "C", "C2", "D", "Y"}
GPT_HV_MEASURED = 0.05 * 0.80 + 0.20 * 0.95 + 0.60 * 0.99 + 0.10 * 1.00

# label: (modelled overhead, loss gap) on "mnist"; Y never ran there.
MNIST = {
    "A": (0.05, 0.20),
    "B": (0.10, 0.23),
    "C": (0.25, 0.05),
    "C2": (0.25, 0.058),
    "D": (0.60, 0.015),
    "E": (0.12, 0.25),
    "F": (0.30, 0.30),
}
MNIST_FRONT = {"A", "C", "D"}
# Within 0.01 of both fronts: A, C, D on both; C2 0.008 above mnist's. B is 0.03 above, Y absent.
ROBUST_ORDER = ["A", "C", "D", "C2"]
BASE_STEP_S = 0.2


def known_store() -> pd.DataFrame:
    rows = []
    for seed in SEEDS:
        base_loss, base_acc = 2.0 + 0.5 * seed, 0.9
        rows.append(trial_row("gpt", seed, "bf16", val_loss=base_loss, step_s=BASE_STEP_S))
        rows.append(trial_row("mnist", seed, "bf16", val_loss=base_loss, val_acc=base_acc,
                              step_s=None))
        for label, (overhead, gap, measured) in GPT.items():
            loss = base_loss * (1 + gap + SPREAD * (seed - 1))
            rows.append(trial_row("gpt", seed, label, val_loss=loss, overhead=overhead,
                                  step_s=BASE_STEP_S * (1 + measured)))
        for label, (overhead, gap) in MNIST.items():
            loss = base_loss * (1 + gap + SPREAD * (seed - 1))
            rows.append(trial_row("mnist", seed, label, val_loss=loss, val_acc=base_acc - 2 * gap,
                                  overhead=overhead, step_s=None))
        # The best point of all, but one seed diverged: never on a front.
        for task in ("gpt", "mnist"):
            rows.append(trial_row(task, seed, "X", status="diverged" if seed == 0 else "done",
                                  val_loss=2.0 + 0.5 * seed, overhead=0.01, step_s=None))
    return pd.DataFrame(rows)


def front_labels(analysis, task: str, overhead: str) -> set[str]:
    recipes = analysis.recipes
    on_front = recipes[(recipes["task"] == task) & recipes[f"front.{overhead}"]]
    return set(on_front["recipe_label"])


def hypervolume(analysis, task: str, overhead: str) -> float:
    table = analysis.hypervolumes
    return table[(table["task"] == task) & (table["overhead"] == overhead)]["hypervolume"].item()


def test_finds_exactly_the_constructed_fronts_and_hypervolumes():
    analysis = analyse(known_store(), ReferencePoint(1.0, 1.0, 1.0))

    assert front_labels(analysis, "gpt", "model") == GPT_FRONT_MODEL
    assert hypervolume(analysis, "gpt", "model") == pytest.approx(GPT_HV_MODEL, abs=1e-12)
    assert front_labels(analysis, "gpt", "measured") == GPT_FRONT_MEASURED
    assert hypervolume(analysis, "gpt", "measured") == pytest.approx(GPT_HV_MEASURED, abs=1e-12)
    assert front_labels(analysis, "mnist", "model") == MNIST_FRONT
    # mnist records no step times relative to a timed baseline: no measured front there.
    mnist = analysis.hypervolumes[analysis.hypervolumes["task"] == "mnist"]
    assert mnist["overhead"].tolist() == ["model"]


def test_hypervolume_is_measured_from_the_given_reference_point():
    analysis = analyse(known_store(), ReferencePoint(quality_gap=0.5, model_overhead=0.5))
    # Only A, B and C lie inside (0.5, 0.5).
    expected = 0.05 * 0.20 + 0.15 * 0.38 + 0.25 * 0.45
    assert hypervolume(analysis, "gpt", "model") == pytest.approx(expected, abs=1e-12)


def test_seed_statistics_and_gaps():
    recipes = analyse(known_store()).recipes.set_index(["task", "recipe_label"])
    b = recipes.loc[("gpt", "B")]
    half_width = stats.t.ppf(0.975, 2) * SPREAD / np.sqrt(3)
    assert b["loss_gap_mean"] == pytest.approx(0.12)
    assert b["loss_gap_std"] == pytest.approx(SPREAD)
    interval = (b["loss_gap_ci_low"], b["loss_gap_ci_high"])
    assert interval == pytest.approx((0.12 - half_width, 0.12 + half_width))
    assert b["measured_overhead"] == pytest.approx(0.40)
    assert recipes.loc[("mnist", "C"), "acc_gap_mean"] == pytest.approx(0.10)

    diverging = recipes.loc[("gpt", "X")]
    assert (diverging["n_trials"], diverging["n_diverged"], diverging["n_gaps"]) == (3, 1, 2)
    assert not diverging["eligible"]
    assert not diverging[["front.model", "front.measured"]].any()


def test_recipes_on_or_near_every_front():
    robust = analyse(known_store(), tolerance=0.01).robust
    assert robust["recipe_label"].tolist() == ROBUST_ORDER
    c2 = robust.set_index("recipe_label").loc["C2"]
    assert c2["max_slack"] == pytest.approx(0.008)
    assert c2["slack: mnist (tiny)"] == pytest.approx(0.008)

    strict = analyse(known_store(), tolerance=0.0).robust
    assert strict["recipe_label"].tolist() == ["A", "C", "D"]
    loose = analyse(known_store(), tolerance=0.05).robust
    assert set(loose["recipe_label"]) == {"A", "B", "C", "C2", "D"}  # E: 0.08 above gpt's front


def test_report_files_hold_the_front_and_the_reference(tmp_path):
    reference = ReferencePoint(1.0, 1.0, 2.0)
    page = build_report(known_store(), tmp_path, reference=reference)

    fronts = pd.read_csv(tmp_path / "fronts.csv")
    gpt_model = fronts[(fronts["task"] == "gpt") & (fronts["overhead"] == "model")]
    assert set(gpt_model["recipe_label"]) == GPT_FRONT_MODEL
    summary = json.loads((tmp_path / "report.json").read_text())
    assert summary["reference_point"] == {
        "quality_gap": 1.0, "model_overhead": 1.0, "measured_overhead": 2.0
    }
    hv = {(row["task"], row["overhead"]): row["hypervolume"] for row in summary["hypervolumes"]}
    assert hv[("gpt", "model")] == pytest.approx(GPT_HV_MODEL)
    text = page.read_text()
    assert f"{GPT_HV_MODEL:.6g}" in text


@pytest.mark.parametrize(
    "field, value", [("quality_gap", float("nan")), ("model_overhead", float("inf"))]
)
def test_reference_point_must_be_finite(field, value):
    with pytest.raises(ValueError, match=field):
        ReferencePoint(**{field: value})


def test_tolerance_must_be_non_negative():
    with pytest.raises(ValueError, match="tolerance"):
        analyse(known_store(), tolerance=-0.1)


def test_reference_point_comes_from_the_data_by_default():
    row = analyse(known_store()).hypervolumes.set_index(["task", "overhead"]).loc[("gpt", "model")]
    # Every gpt recipe with a gap counts, X (one diverged seed: its gap is 0) included.
    gaps = [gap for _, gap, _ in GPT.values()] + [0.0]
    costs = [cost for cost, _, _ in GPT.values()] + [0.01]
    ideal, nadir = (min(gaps), min(costs)), (max(gaps), max(costs))
    corner = [nadir[i] + 0.1 * (nadir[i] - ideal[i]) for i in range(2)]
    assert (row["reference_quality_gap"], row["reference_overhead"]) == pytest.approx(corner)
    assert (row["ideal_quality_gap"], row["ideal_overhead"]) == pytest.approx(ideal)
    assert row["reference_from"] == "data"
    # The front A, B, C, D, Y as a staircase (overhead, gap) up to the corner, cheapest first.
    steps = [(0.05, 0.30), (0.10, 0.12), (0.25, 0.05), (0.60, 0.01), (1.50, 0.00)]
    widths = np.diff([cost for cost, _ in steps] + [corner[1]])
    volume = sum(width * (corner[0] - gap) for width, (_, gap) in zip(widths, steps))
    assert row["hypervolume"] == pytest.approx(volume)
    box = (corner[0] - ideal[0]) * (corner[1] - ideal[1])
    assert row["hypervolume_share"] == pytest.approx(volume / box)
    assert 0 < row["hypervolume_share"] < 1


def test_a_given_reference_coordinate_overrides_the_data(tmp_path):
    analysis = analyse(known_store(), ReferencePoint(quality_gap=0.5))
    row = analysis.hypervolumes.set_index(["task", "overhead"]).loc[("gpt", "model")]
    assert row["reference_quality_gap"] == 0.5
    assert row["reference_overhead"] == pytest.approx(1.5 + 0.1 * 1.49)
    assert row["reference_from"] == "given and data"
    build_report(known_store(), tmp_path)
    summary = json.loads((tmp_path / "report.json").read_text())
    assert summary["reference_point"] == dict.fromkeys(
        ["quality_gap", "model_overhead", "measured_overhead"]
    )  # null: derived per task, each front's corner is in its hypervolumes row
    assert all(row["reference_from"] == "data" for row in summary["hypervolumes"])


def test_front_members_closer_to_being_dominated_than_their_interval_are_fragile():
    recipes = analyse(known_store()).recipes
    gpt = recipes[recipes["task"] == "gpt"].set_index("recipe_label")
    margin = gpt["margin.model"]
    assert margin["A"] == np.inf  # the cheapest: nothing costs less
    assert margin["B"] == pytest.approx(0.18)  # A, cheaper, is 0.18 worse
    assert margin["C"] == pytest.approx(0.0)  # C2 ties it
    assert margin["D"] == pytest.approx(0.04)
    assert np.isnan(margin["E"])  # not on the model front
    half_width = stats.t.ppf(0.975, 2) * SPREAD / np.sqrt(3)  # 0.025
    fragile = {label for label in GPT_FRONT_MODEL if margin[label] < half_width}
    assert fragile == {"C", "C2", "Y"}
