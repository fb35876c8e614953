"""The multi-fidelity ladder: its settings, the promotion rule on planted results, rung plans,
and ladders run on a local Ray (a stored rung runs nothing; a killed ladder continues)."""

from __future__ import annotations

import io
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from fp4sweep.cli import main
from fp4sweep.results.store import ResultsStore
from fp4sweep.sweep.config import ConfigTree, SweepError, load_settings
from fp4sweep.sweep.ladder import decide, run_ladder, rung_plan
from fp4sweep.sweep.plan import expand
from fp4sweep.sweep.promotion import DIVERGED, DOMINATED, FRONT, NO_RESULT, OVER_BUDGET, WITHIN, budget, promote
from fp4sweep.sweep.rungs import Rung, parse_ladder, split_ladder
from fp4sweep.sweep.runner import PROJECT_ROOT

TEST_CONF = str(Path(__file__).parent / "conf")


def recipe(name: str, gap: float, half: float, cost: float, diverged: int = 0, eligible: bool = True) -> dict:
    return {"recipe_id": name, "recipe_label": name, "loss_gap_mean": gap, "loss_gap_ci_low": gap - half,
            "loss_gap_ci_high": gap + half, "overhead.model": cost, "n_diverged": diverged, "eligible": eligible}


def decisions(rows: list[dict], keep: int = 100) -> pd.DataFrame:
    return promote(pd.DataFrame(rows), keep).set_index("recipe_id")


# --- the promotion rule, on planted recipes --------------------------------------------------

def test_front_members_and_recipes_within_their_interval_go_on_dominated_ones_stop():
    table = decisions([
        recipe("cheap", 3.0, 0.1, 0.0),
        recipe("best", 1.0, 0.1, 1.0),
        recipe("near", 1.15, 0.1, 1.0),  # its lower bound 1.05 is below best's upper bound 1.1
        recipe("far", 1.5, 0.1, 1.0),  # 1.4 > 1.1: no outcome within the intervals puts it on the front
        recipe("far but cheaper", 2.0, 0.1, 0.5),  # dominated only by cheap's? no: cheap's gap is worse
    ])
    assert table.loc["cheap", "reason"] == FRONT and table.loc["best", "reason"] == FRONT
    assert table.loc["far but cheaper", "reason"] == FRONT
    assert table.loc["near", "reason"] == WITHIN and table.loc["near", "promoted"]
    assert table.loc["far", "reason"] == DOMINATED and not table.loc["far", "promoted"]
    assert table.loc["near", "distance"] == pytest.approx(0.15)
    assert table.loc["best", "distance"] == 0


def test_a_wide_interval_keeps_a_recipe_that_a_narrow_one_would_stop():
    front = recipe("front", 1.0, 0.05, 1.0)
    assert decisions([front, recipe("noisy", 1.5, 0.5, 2.0)]).loc["noisy", "promoted"]
    assert not decisions([front, recipe("sure", 1.5, 0.05, 2.0)]).loc["sure", "promoted"]


def test_diverged_and_unfinished_recipes_stop_even_if_their_gap_would_lead():
    table = decisions([
        recipe("ok", 1.0, 0.1, 1.0),
        recipe("blew up once", 0.1, 0.1, 0.0, diverged=1, eligible=False),
        recipe("never finished", math.nan, math.nan, math.nan, eligible=False),
    ])
    assert table.loc["blew up once", "reason"] == DIVERGED
    assert table.loc["never finished", "reason"] == NO_RESULT
    assert table["promoted"].tolist() == [True, False, False]


def test_a_single_seed_counts_its_mean_as_both_bounds():
    table = decisions([recipe("front", 1.0, math.nan, 1.0), recipe("behind", 1.01, math.nan, 1.0)])
    assert table.loc["behind", "reason"] == DOMINATED


def test_over_budget_the_nearest_to_the_front_go_first():
    table = decisions([
        recipe("front", 1.0, 0.5, 1.0),
        recipe("a", 1.4, 0.5, 1.0),
        recipe("b", 1.2, 0.5, 2.0),
        recipe("c", 1.3, 0.5, 1.5),
    ], keep=2)
    assert table.index[table["promoted"]].tolist() == ["front", "b"]
    assert table.loc["a", "reason"] == table.loc["c", "reason"] == OVER_BUDGET


def test_a_front_larger_than_the_budget_is_kept_spread_along_it_with_both_ends():
    front = [recipe(f"f{i}", 5.0 - i, 0.0, float(i)) for i in range(5)]
    table = decisions(front, keep=3)
    assert table.index[table["promoted"]].tolist() == ["f0", "f2", "f4"]


def test_budgets_are_counts_or_shares_of_the_rung_below():
    assert budget(15, 145) == 15
    assert budget(0.25, 145) == 37
    assert budget(0.01, 10) == 1
    with pytest.raises(ValueError, match="keep must be at least 1"):
        promote(pd.DataFrame([recipe("a", 1, 0, 1)]), 0)


def store_row(seed: int, label: str, loss: float, cost: float, status: str = "done") -> dict:
    return {"trial_id": f"{label}/{seed}", "task": "regression", "size": "tiny, steps=25", "seed": seed,
            "recipe_id": label, "recipe_label": label, "is_baseline": label == "bf16", "status": status,
            "metric.val_loss": loss, "overhead.model": cost}


def test_decisions_from_a_planted_rung_of_store_rows():
    rows = [store_row(seed, "bf16", 1.0, 0.0) for seed in (0, 1, 2)]
    planted = {"cheap": ([1.50, 1.52, 1.48], 0.0), "good": ([1.20, 1.25, 1.15], 1.0),
               "close": ([1.24, 1.30, 1.18], 1.5), "behind": ([1.60, 1.61, 1.59], 1.0)}
    for label, (losses, cost) in planted.items():
        rows += [store_row(seed, label, loss, cost) for seed, loss in enumerate(losses)]
    rows += [store_row(0, "blew up", 1.1, 0.5), store_row(1, "blew up", float("nan"), 0.5, "diverged"),
             store_row(2, "blew up", 1.1, 0.5)]
    table = decide(pd.DataFrame(rows), keep=3).set_index("recipe_label")
    assert table.loc[["cheap", "good"], "reason"].tolist() == [FRONT, FRONT]
    assert table.loc["close", "reason"] == WITHIN  # 0.24 +- 0.15 against good's 0.20 +- 0.12 (t intervals)
    assert table.loc["behind", "reason"] == DOMINATED
    assert table.loc["blew up", "reason"] == DIVERGED
    assert sorted(table.index[table["promoted"]]) == ["cheap", "close", "good"]
    assert decide(pd.DataFrame(rows), keep=0.5)["promoted"].sum() == 3  # half of 5, rounded up


# --- settings ---------------------------------------------------------------------------------

def test_ladder_settings_parse_rungs_and_budgets():
    ladder = parse_ladder({"rungs": [{"steps": 25}, {"size": "small", "steps": 100}, {"size": "small"}],
                           "keep": [0.25, 4]})
    assert ladder.rungs == [Rung(steps=25), Rung(size="small", steps=100), Rung(size="small")]
    assert ladder.keep == [0.25, 4] and ladder.upto is None
    assert "25 steps -> size small, 100 steps (at most 25% of the recipes below)" in ladder.describe()
    assert parse_ladder({"rungs": [], "keep": 3}) is None


@pytest.mark.parametrize("node, message", [
    ({"rungs": [{"steps": 25}], "keep": 2}, "at least two rungs"),
    ({"rungs": [{"steps": 25}, {"epochs": 2}], "keep": 2}, r"ladder.rungs\[1\]: unknown key\(s\) \['epochs'\]"),
    ({"rungs": [{"steps": 25}, {"steps": 0}], "keep": 2}, r"ladder.rungs\[1\].steps: expected an integer >= 1"),
    ({"rungs": [{"steps": 25}, {"steps": 25}], "keep": 2}, "the same fidelity as rung 0"),
    ({"rungs": [{"steps": 25}, {"steps": 50}], "keep": 1.5}, r"ladder.keep\[0\]: expected a number"),
    ({"rungs": [{"steps": 25}, {"steps": 50}], "keep": [2, 2]}, "2 budgets for 1 rungs"),
    ({"rungs": [{"steps": 25}, {}], "keep": 2}, r"ladder.rungs\[1\]: expected a mapping"),
    ({"rungs": [{"steps": 2}, {"steps": 5}], "typo": 1}, r"ladder: unknown key\(s\) \['typo'\]"),
    ({"rungs": [{"steps": 2}, {"steps": 5}], "keep": 2, "upto": 3}, "ladder.upto: 3 rungs to climb, but the ladder has 2"),
    ({"rungs": [{"steps": 2}, {"steps": 5}], "keep": 2, "upto": 0}, "ladder.upto: expected an integer >= 1"),
])
def test_bad_ladder_settings_name_the_key(node, message):
    with pytest.raises(SweepError, match=message):
        parse_ladder(node)


def test_a_bad_ladder_on_the_command_line_exits_2_with_one_line(capsys):
    assert main(["plan", "+sweep=smoke", "ladder.rungs=[{steps:25},{steps:0}]"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "fp4sweep: error: ladder.rungs[1].steps: expected an integer >= 1, got 0"
    ]


def test_a_rung_parameter_the_task_does_not_take_stops_the_ladder_before_anything_runs(tmp_path, capsys):
    results = tmp_path / "results"
    args = ["run", "--conf-dir", TEST_CONF, "+sweep=mini", "task=regression", f"results_dir={results}",
            "ladder.rungs=[{steps:10},{params:{regression:{width:3}}}]"]
    assert main(args) == 2
    assert "task 'regression' (size 'tiny'): unknown Config parameter(s) ['width']" in capsys.readouterr().err
    assert not (results / "trials").exists() or ResultsStore(results).trials().empty


# --- rung plans -------------------------------------------------------------------------------

def mini_settings(*overrides: str):
    tree = ConfigTree([TEST_CONF])
    ladder, rest = split_ladder(tree, ["+sweep=mini", "task=regression", *overrides])
    return tree, load_settings(tree, rest), ladder


def test_the_top_rung_at_the_sweeps_own_fidelity_has_the_grids_trial_ids():
    tree, settings, ladder = mini_settings("ladder.rungs=[{steps:20},{steps:200}]")
    grid = expand(tree, settings)
    top = rung_plan(tree, settings, ladder.rungs[-1], promoted=None)
    assert [t.trial_id for t in top.trials] == [t.trial_id for t in grid.trials]
    assert {t.task.stored_size for t in top.trials} == {"tiny"}
    low = rung_plan(tree, settings, ladder.rungs[0], promoted=None)
    assert {t.task.stored_size for t in low.trials} == {"tiny, steps=20"}
    assert {t.spec["params"]["steps"] for t in low.trials} == {20}
    assert not {t.trial_id for t in low.trials} & {t.trial_id for t in grid.trials}


def test_a_higher_rung_runs_the_baseline_and_the_promoted_recipes_only():
    tree, settings, ladder = mini_settings("ladder.rungs=[{steps:20},{steps:200}]")
    top = rung_plan(tree, settings, ladder.rungs[-1], promoted={"regression": set()})
    assert {t.recipe.label for t in top.trials} == {"bf16"}
    assert len(top.trials) == 3 and len(top.recipes) == 1


def test_a_rungs_unknown_size_or_task_is_a_sweep_error():
    tree, settings, _ = mini_settings()
    with pytest.raises(SweepError, match="unknown size 'huge'"):
        rung_plan(tree, settings, Rung(size="huge"), promoted=None)
    with pytest.raises(SweepError, match="unknown task 'nope'"):
        rung_plan(tree, settings, Rung(params={"nope": {"steps": 3}}), promoted=None)


# --- ladders run on a local Ray ---------------------------------------------------------------

def ladder_args(results: Path, top: int = 60) -> list[str]:
    # Two recipes (the mini sweep's one and nvfp4) and the baseline, three seeds: rung 1 at 10
    # steps, rung 2 at ``top`` with one recipe promoted.
    return ["--conf-dir", TEST_CONF, "+sweep=mini", "task=regression", "presets=[nvfp4]",
            f"ladder.rungs=[{{steps:10}},{{steps:{top}}}]", "ladder.keep=1", "flush_seconds=0",
            "ray.num_cpus=2", f"results_dir={results}"]


@pytest.mark.usefixtures("local_ray")
def test_a_ladder_promotes_from_the_store_and_a_stored_rung_runs_nothing(tmp_path, capsys):
    results = tmp_path / "results"
    assert main(["run", *ladder_args(results), "ladder.upto=1"]) == 0  # the first rung only
    assert "Climbed 1 of 2 rungs (ladder.upto)" in capsys.readouterr().out
    assert ResultsStore(results).trials()["size"].value_counts().to_dict() == {"tiny, steps=10": 9}
    assert main(["run", *ladder_args(results)]) == 0  # goes on from the store
    stored = ResultsStore(results).trials()
    sizes = stored.groupby("size")["recipe_label"].apply(set).to_dict()
    assert sizes["tiny, steps=10"] == {"bf16", "scale=ue5m3", "nvfp4"}
    assert len(sizes["tiny, steps=60"]) == 2 and "bf16" in sizes["tiny, steps=60"]
    assert stored.groupby("size").size().to_dict() == {"tiny, steps=10": 9, "tiny, steps=60": 6}

    # Every rung stored: the same ladder runs nothing, and promotes the same recipe.
    tree = ConfigTree([TEST_CONF])
    ladder, rest = split_ladder(tree, ladder_args(results)[2:])
    again = run_ladder(tree, load_settings(tree, rest), ladder, stream=io.StringIO())
    assert [rung.run.to_run for rung in again.rungs] == [0, 0]
    assert [rung.trials for rung in again.rungs] == [9, 6]
    assert len(ResultsStore(results).trials(latest=False)) == 15

    # The top rung's trials are a plain sweep's at that fidelity: the grid finds them stored.
    capsys.readouterr()
    args = [a for a in ladder_args(results) if not a.startswith("ladder.")]
    assert main(["status", *args, "task.sizes.tiny.steps=60"]) == 0
    assert "regression  6     0         0       3" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.usefixtures("local_ray")
def test_a_ladder_killed_in_its_second_rung_continues_with_the_same_promotion(tmp_path):
    reference = tmp_path / "reference"
    assert main(["run", *ladder_args(reference, top=400)]) == 0
    expected = ResultsStore(reference).trials().set_index("trial_id")["metric.val_loss"].sort_index()

    results = tmp_path / "results"
    process = subprocess.Popen(
        [sys.executable, "-m", "fp4sweep", "run", *ladder_args(results, top=400)],
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}, start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        # Killed once the second rung has stored a trial: rung 1 whole, rung 2 in part.
        while not _stored_at(results, "tiny, steps=400"):
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate(timeout=60)
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert 0 < _stored_at(results, "tiny, steps=400") < 6

    assert main(["run", *ladder_args(results, top=400)]) == 0
    attempts = ResultsStore(results).trials(latest=False)
    assert sorted(attempts["trial_id"]) == sorted(expected.index)  # each trial once, the same ones
    assert attempts.set_index("trial_id")["metric.val_loss"].sort_index().equals(expected)


def _stored_at(results: Path, size: str) -> int:
    if not (results / "trials").is_dir():
        return 0
    try:
        rows = ResultsStore(results).trials()
    except FileNotFoundError:  # compacted between listing and reading
        return 0
    return int(rows["size"].eq(size).sum()) if len(rows) else 0
