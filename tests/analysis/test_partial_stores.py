"""Stores with corrupt parts, missing baselines or unfinished sweeps still report what is wrong."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
from synthetic_store import trial_row

from fp4sweep.analysis import analyse, report_from_store
from fp4sweep.analysis.load import read_trials

E8M0 = {"scale": "e8m0"}


def small_sweep(tasks=("gpt", "mnist"), seeds=(0, 1), baselines=True) -> list[dict]:
    rows = []
    for task in tasks:
        for seed in seeds:
            if baselines:
                rows.append(trial_row(task, seed, "bf16", val_loss=2.0, axes={"scale": None}))
            for label, overhead, gap in (("e8m0", 0.1, 0.2), ("ue5m3", 0.2, 0.1)):
                rows.append(trial_row(task, seed, label, axes={"scale": label},
                                      val_loss=2.0 * (1 + gap), overhead=overhead))
    return rows


def report(results_dir) -> tuple[dict, str]:
    page = report_from_store(results_dir)
    return json.loads((page.parent / "report.json").read_text()), page.read_text()


def test_corrupt_file_is_named_and_the_rest_reported(rows_to_store):
    store = rows_to_store(small_sweep(), parts=2)
    (store / "trials" / "part-000099.parquet").write_bytes(b"PAR1 truncated by a crash")
    (store / "trials" / ".part-000002.parquet").write_bytes(b"being written")

    summary, page = report(store)
    corrupt = [p for p in summary["problems"] if "corrupt" in p]
    assert len(corrupt) == 1 and "trials/part-000099.parquet" in corrupt[0]
    assert "trials/part-000099.parquet" in page
    assert {(h["task"], h["overhead"]) for h in summary["hypervolumes"]} == {
        ("gpt", "model"), ("gpt", "measured"), ("mnist", "model"), ("mnist", "measured"),
    }


def test_files_the_sweep_set_aside_are_named(rows_to_store):
    store = rows_to_store(small_sweep())
    (store / "quarantine").mkdir()
    (store / "quarantine" / "trials-part-000003.parquet").write_bytes(b"torn")
    summary, page = report(store)
    assert summary["problems"] == [
        "unreadable file quarantine/trials-part-000003.parquet was set aside by the sweep; "
        "the trials it held count as not run"
    ]
    assert "quarantine/trials-part-000003.parquet" in page


def test_missing_baselines_are_named(rows_to_store):
    rows = [r for r in small_sweep() if not (r["task"] == "mnist" and r["is_baseline"])]
    rows = [r for r in rows if not (r["task"] == "gpt" and r["is_baseline"] and r["seed"] == 1)]
    store = rows_to_store(rows)
    summary, page = report(store)

    problems = summary["problems"]
    assert any(p.startswith("mnist (tiny): no bf16 baseline trial") for p in problems)
    seed_1 = "gpt (tiny): no finished bf16 baseline for seed(s) [1]"
    assert any(p.startswith(seed_1) for p in problems)
    assert "mnist (tiny): no bf16 baseline trial" in page
    # gpt still has its front from seed 0; mnist has none.
    fronts = {(h["task"], h["overhead"]) for h in summary["hypervolumes"]}
    assert fronts == {("gpt", "model"), ("gpt", "measured")}
    recipes = pd.read_csv(store / "report" / "recipes.csv")
    assert recipes[recipes["task"] == "gpt"]["n_gaps"].eq(1).all()


def test_an_unfinished_sweep_says_what_is_missing(rows_to_store):
    rows = small_sweep(seeds=(0, 1, 2))
    rows = [r for r in rows if not (r["seed"] == 2 and r["recipe_label"] == "ue5m3")]
    summary, _ = report(rows_to_store(rows))
    unfinished = "gpt (tiny): 1 of 2 recipes have trials for fewer than the task's 3 seeds"
    assert unfinished in " ".join(summary["problems"])


def test_latest_attempt_of_a_trial_counts(rows_to_store):
    rows = small_sweep(tasks=("gpt",))
    retried = trial_row("gpt", 0, "e8m0", axes={"scale": "e8m0"}, status="failed", overhead=0.1)
    rows.insert(0, retried)  # the first attempt failed; the rerun in small_sweep finished later
    summary, page = report(rows_to_store(rows))
    assert summary["trials"] == [
        {"task": "gpt", "size": "tiny", "baseline": 2, "done": 4, "diverged": 0, "failed": 0}
    ]
    assert "Failed trials" not in page


def test_failed_trials_are_listed_with_their_error(rows_to_store):
    rows = small_sweep(tasks=("gpt",))
    rows.append(trial_row("gpt", 0, "int4", axes={"scale": "e8m0"}, status="failed"))
    summary, page = report(rows_to_store(rows))
    assert "1 trial(s) failed with an error" in " ".join(summary["problems"])
    assert "CUDA error in int4" in page


def test_a_key_the_schema_cannot_give_earlier_parts_is_unset_there(rows_to_store):
    # "rounding_bwd" is no key of the axis schema (rounding@bwd is): nothing can fill it in
    rows = small_sweep(tasks=("gpt",), seeds=(0,))
    new_axes = {"scale": "e8m0", "rounding_bwd": "sr"}
    rows.append(trial_row("gpt", 1, "bf16", val_loss=2.0, axes=dict.fromkeys(new_axes)))
    rows.append(trial_row("gpt", 1, "e8m0+sr", axes=new_axes, val_loss=2.1))
    store = rows_to_store(rows, parts=2)
    first_part = pd.read_parquet(store / "trials" / "part-000000.parquet")
    assert "axis.rounding_bwd" not in first_part.columns

    summary, _ = report(store)
    recipes = pd.read_csv(store / "report" / "recipes.csv")
    assert recipes.set_index("recipe_label").loc["e8m0", "axis.rounding_bwd"] == "(unset)"
    assert not recipes["is_preset"].any()  # an unset axis is not a preset's
    assert "gpt (tiny): 2 finished trials record no option under an axis key" in " ".join(
        summary["problems"]
    )


def test_an_empty_store_reports_that_nothing_finished(tmp_path):
    (tmp_path / "results").mkdir()
    summary, page = report(tmp_path / "results")
    assert summary["problems"] == ["the store holds no trial rows yet"]
    assert "the store holds no trial rows yet" in page


def test_a_missing_store_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no results store"):
        report_from_store(tmp_path / "nowhere")


def test_rows_without_a_required_column_are_refused():
    trials = pd.DataFrame(small_sweep()).drop(columns="overhead.model")
    with pytest.raises(ValueError, match=r"lack column\(s\) \['overhead.model'\]"):
        analyse(trials)


def test_an_unknown_status_is_refused():
    trials = pd.DataFrame(small_sweep())
    trials.loc[3, "status"] = "running"
    valid = r"valid: \['done', 'diverged', 'failed'\]"
    with pytest.raises(ValueError, match=r"unknown trial status\(es\) \['running'\]; " + valid):
        analyse(trials)


@pytest.mark.parametrize(
    "rows, unfinished",
    [
        ([trial_row("gpt", 0, "bf16"), trial_row("gpt", 1, "bf16")], 0),
        ([trial_row("gpt", 0, "e8m0", axes=E8M0, status="failed")], 1),
        ([trial_row("gpt", 0, "bf16"), trial_row("gpt", 0, "e8m0", axes=E8M0, status="diverged")], 1),
        ([trial_row("gpt", 0, "bf16"), trial_row("gpt", 0, "e8m0", axes=E8M0, val_loss=math.nan)], 1),
    ],
    ids=["only baselines", "only failures", "only divergence", "non-finite loss"],
)
def test_stores_without_any_quality_gap_still_report(rows, unfinished, rows_to_store):
    summary, page = report(rows_to_store(rows, parts=1))
    assert summary["hypervolumes"] == []
    assert "<h2>gpt (tiny)</h2>" in page
    assert sum(t["failed"] + t["diverged"] for t in summary["trials"]) == unfinished


def test_trials_stored_before_an_axis_existed_take_its_default(rows_to_store):
    # The first sweep knew no `amax` axis: its rows lack the column. A later one crossed it.
    rows = small_sweep(tasks=("gpt",), seeds=(0, 1, 2))
    gaps = {("ue5m3", "hold50"): 0.3, ("e8m0", "hold50"): 0.4}
    for seed in (0, 1, 2):
        for (scale, amax), gap in gaps.items():
            rows.append(trial_row("gpt", seed, f"{scale} amax={amax}", axes={"scale": scale, "amax": amax},
                                  val_loss=2.0 * (1 + gap + 0.01 * seed), overhead=0.1))
    store = rows_to_store(rows)
    trials, _ = read_trials(store)
    old = trials[trials["recipe_label"].isin(["e8m0", "ue5m3"])]
    assert set(old["axis.amax"]) == {"current"}  # the default: how they ran
    assert trials.loc[trials["is_baseline"], "axis.amax"].isna().all()  # a baseline records no axis
    effects = analyse(trials).effects
    assert not any("before one of the axes joined" in p for p in effects.problems)
    # the held amax adds 0.2 (+0.01 a seed) to the gap of both scales: fitted on all 12 trials
    amax = effects.main[(effects.main["axis"] == "amax") & ~effects.main["is_reference"]].iloc[0]
    assert (amax["value"], amax["reference"], amax["n_trials"]) == ("current", "hold50", 6)
    assert amax["effect"] == pytest.approx(-0.21)
