"""Adaptive search: proposals trained through the runner, the store answering what it holds,
failures told as such, and a search killed mid-way resumed without losing or repeating a trial."""

from __future__ import annotations

import math
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState

from fp4sweep.cli import main
from fp4sweep.sweep.adaptive import JOURNAL, SearchSpace, open_study, recipe_result
from fp4sweep.sweep.config import ConfigTree, RaySettings, SweepError, load_settings
from fp4sweep.sweep.runner import PROJECT_ROOT, start_ray
from fp4sweep.sweep.search import SearchSettings, parse_search, split_search
from fp4sweep.results.store import ResultsStore
from tests.sweep.test_kill import stored_ids

TEST_CONF = str(Path(__file__).parent / "conf")
# Two transforms x two scales x two scale rules, less the fp32 + floor combinations a constraint
# of the full sweep leaves out: 6 recipes, trained in a fraction of a second each.
SPACE = [
    "+sweep=adaptive", "size=tiny", "progress_every=60",
    "quant.transform=[none,hadamard16]", "quant.scale=[e8m0,fp32]", "quant.scale_rule=[floor,nearest]",
    "quant.rounding@bwd=rne", "quant.rounding@dy=rne", "quant.estimator=ste", "quant.tensor_scale=none",
    "quant.block=32", "quant.transform@wgrad=none", "quant.block_2d@w=false",
]  # fmt: skip
RECIPES = 6
REGRESSION = ["task=regression", "task.sizes.tiny.steps=20", "task.sizes.tiny.eval_every=10"]


@pytest.fixture(scope="module")
def module_ray():
    """The tests' two-CPU Ray for this module, stopped at its end unless it was running before:
    a later module checks that `ray.address=auto` finds no Ray running on this machine."""
    import ray

    if ray.is_initialized():
        yield
        return
    start_ray(RaySettings(address=None, num_cpus=2, max_in_flight=None, max_retries=2))
    yield
    ray.shutdown()


def search(*overrides: str, command: str = "run") -> int:
    return main([command, "--conf-dir", TEST_CONF, *SPACE, *overrides])


def load(results: Path, name: str) -> optuna.Study:
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(results / JOURNAL)))
    return optuna.load_study(study_name=name, storage=storage)


def expected_values(results: Path, study: optuna.Study) -> dict[int, list[float]]:
    """What each finished study trial should have been told, recomputed from the store."""
    rows = ResultsStore(results).trials()
    baselines = rows[rows["is_baseline"]].set_index("seed")["metric.val_loss"].to_dict()
    expected = {}
    for trial in study.get_trials(states=[TrialState.COMPLETE]):
        mine = rows[(rows[[f"axis.{axis}" for axis in trial.params]] == list(trial.params.values())).all(axis=1)]
        gaps = [(loss - baselines[seed]) / baselines[seed] for seed, loss in zip(mine["seed"], mine["metric.val_loss"])]
        expected[trial.number] = [statistics.fmean(gaps), mine["overhead.model"].mean()]
    return expected


@pytest.mark.slow
@pytest.mark.usefixtures("module_ray")
def test_search_trains_what_it_proposes_once_and_reads_the_rest_from_the_store(tmp_path, capsys):
    results = tmp_path / "results"
    common = [*REGRESSION, "seeds=[0,1]", f"results_dir={results}", "search.study=first"]
    assert search(*common, "search.n_trials=4") == 0
    out = capsys.readouterr().out
    assert "Study 'first': 4 of 4 recipes evaluated; this run trained 10 trials (10 done)" in out

    attempts = ResultsStore(results).trials(latest=False)
    assert attempts["trial_id"].is_unique and len(attempts) == 2 + 4 * 2  # baselines, then 4 recipes x 2 seeds
    assert attempts["is_baseline"].sum() == 2
    study = load(results, "first")
    told = {t.number: t.values for t in study.get_trials(states=[TrialState.COMPLETE])}
    assert told.keys() == expected_values(results, study).keys()
    for number, values in expected_values(results, study).items():
        assert told[number] == pytest.approx(values, rel=1e-12)
    # Combinations a constraint leaves out are told as pruned and never run.
    for trial in study.get_trials(states=[TrialState.PRUNED]):
        assert trial.params["scale"] == "fp32" and trial.params["scale_rule"] == "floor"

    assert search(*common, command="status") == 0  # what the store holds, not the grid's pending trials
    assert "regression  10    0         0       10" in capsys.readouterr().out

    # A larger budget continues the study: only the 2 recipes it lacks are trained.
    assert search(*common, "search.n_trials=10") == 0
    assert "6 of 6 recipes evaluated; this run trained 4 trials (4 done)" in capsys.readouterr().out
    attempts = ResultsStore(results).trials(latest=False)
    assert attempts["trial_id"].is_unique and len(attempts) == 2 + RECIPES * 2

    # Another study over the same store finds every recipe there: nothing is trained.
    assert search(*common[:-1], "search.study=second", "search.sampler=nsga2", "search.startup=2") == 0
    assert "this run trained 0 trials (none) and read 6 recipes from the store" in capsys.readouterr().out
    assert len(ResultsStore(results).trials(latest=False)) == 2 + RECIPES * 2

    # A proposal of a recipe the study has evaluated (NSGA-II makes them) gets the same answer.
    second = load(results, "second")
    repeated = second.get_trials(states=[TrialState.COMPLETE])[0]
    second.enqueue_trial(repeated.params)
    assert search(*common[:-1], "search.study=second", "search.n_trials=10") == 0
    assert "this run trained 0 trials (none)" in capsys.readouterr().out
    again = load(results, "second").get_trials()[-1]
    assert again.params == repeated.params and again.values == repeated.values


@pytest.mark.slow
@pytest.mark.usefixtures("module_ray")
def test_failed_recipes_are_told_failed_and_resume_reruns_them(tmp_path, capsys):
    results = tmp_path / "results"
    fail_while = tmp_path / "broken"
    fail_while.touch()
    common = ["task=faulty", "seeds=[0,1]", "task.sizes.tiny.fail_seed=1", f"task.sizes.tiny.fail_while={fail_while}",
              f"results_dir={results}", "search.study=faulty", "search.n_trials=2"]  # fmt: skip
    assert search(*common) == 1
    assert "2 failed (`fp4sweep status` lists them); `fp4sweep resume` reruns them." in capsys.readouterr().out
    study = load(results, "faulty")
    failed = study.get_trials(states=[TrialState.FAIL])
    assert len(failed) == 2 and not study.get_trials(states=[TrialState.COMPLETE])

    assert search(*common) == 0  # `run` leaves failures alone
    assert "this run trained 0 trials" in capsys.readouterr().out

    fail_while.unlink()
    assert search(*common, command="resume") == 0
    assert "2 of 2 recipes evaluated; this run trained 2 trials (2 done)" in capsys.readouterr().out
    study = load(results, "faulty")
    rerun = study.get_trials(states=[TrialState.COMPLETE])
    assert sorted(tuple(t.params.values()) for t in rerun) == sorted(tuple(t.params.values()) for t in failed)
    latest = ResultsStore(results).trials()
    assert (latest["status"] == "done").all() and len(latest) == 2 + 2 * 2


@pytest.mark.slow
@pytest.mark.usefixtures("module_ray")
def test_a_diverged_baseline_stops_the_search_before_any_recipe_runs(tmp_path, capsys):
    results = tmp_path / "results"
    code = search(*REGRESSION, "seeds=[0]", "task.sizes.tiny.lr=inf", f"results_dir={results}", "search.study=x")
    assert code == 1
    out = capsys.readouterr().out
    assert "The search cannot go on: the bf16 baseline of regression (tiny) seed 0 diverged: quality gaps" in out
    assert ResultsStore(results).trials()["is_baseline"].tolist() == [True]
    assert not load(results, "x").trials


def test_what_the_study_is_told_of_a_recipe():
    def row(seed: int, status: str, loss: float = math.nan) -> dict:
        return {"seed": seed, "status": status, "metric.val_loss": loss, "overhead.model": 0.25}

    baselines = {0: 1.0, 1: 2.0}
    state, values = recipe_result([row(0, "done", 1.5), row(1, "done", 2.5)], baselines)
    assert state == TrialState.COMPLETE and values == pytest.approx([(0.5 + 0.25) / 2, 0.25])
    assert recipe_result([row(0, "done", 1.5), row(1, "failed")], baselines) == (TrialState.FAIL, None)
    assert recipe_result([row(0, "diverged"), row(1, "done", 2.5)], baselines) == (TrialState.PRUNED, None)
    assert recipe_result([row(0, "done", math.inf), row(1, "done", 2.5)], baselines) == (TrialState.PRUNED, None)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["search.sampler=cmaes"], "search.sampler: unknown sampler 'cmaes'; valid: ['tpe', 'nsga2', 'random']"),
        (["search.n_trials=0"], "search.n_trials: expected an integer >= 1, got 0"),
        (["search.sampler=nsga2", "search.startup=1"], "search.startup: expected an integer >= 2, got 1"),
        (["+search.trials=3"], "search: unknown key(s) ['trials']; valid: ["),
        (["tasks=[regression,faulty]"], "tasks: an adaptive search covers one task; choose one with task=NAME"),
    ],
)
def test_bad_search_settings_are_named(tmp_path, overrides, message, capsys):
    assert search(f"results_dir={tmp_path}", *overrides) == 2
    assert message in capsys.readouterr().err


def test_plan_of_a_search_shows_its_grid_and_budget(tmp_path, capsys):
    assert search(*REGRESSION, "seeds=[0]", "search.n_trials=4", f"results_dir={tmp_path}", command="plan") == 0
    out = capsys.readouterr().out
    assert "sweep adaptive: 7 trials (7 recipes x 1 seeds x 1 tasks)" in out  # the baseline and 6 recipes
    assert "an adaptive search of these recipes: it evaluates 4 recipes, tpe sampler (10 at random first)" in out


def space_of(*overrides: str) -> tuple[SearchSettings, SearchSpace]:
    tree = ConfigTree([TEST_CONF])
    found, rest = split_search(tree, [*SPACE, "task=regression", *overrides])
    return found, SearchSpace(tree, load_settings(tree, rest))


def test_a_study_of_another_search_space_is_refused(tmp_path):
    settings, one_seed = space_of("seeds=[0]")
    _, two_seeds = space_of("seeds=[0,1]")
    open_study(tmp_path, "mine", one_seed.space_id, settings)
    with pytest.raises(SweepError, match="search.study: study 'mine' in .* searched other axes, seeds or task"):
        open_study(tmp_path, "mine", two_seeds.space_id, settings)


def test_a_torn_journal_record_is_dropped(tmp_path):
    node = {"n_trials": 1, "sampler": "random", "startup": 0, "seed": 0, "study": None, "stall_limit": 1}
    settings = parse_search(node)
    study = open_study(tmp_path, "torn", "space", settings)
    study.enqueue_trial({"x": 1})
    with open(tmp_path / JOURNAL, "ab") as journal:
        journal.write(b'{"op_code": 5, "worker_id": "cut sh')  # a write that never finished
    study = open_study(tmp_path, "torn", "space", settings)
    study.enqueue_trial({"x": 2})
    assert [t.system_attrs["fixed_params"] for t in load(tmp_path, "torn").trials] == [{"x": 1}, {"x": 2}]


@pytest.mark.slow
@pytest.mark.usefixtures("module_ray")
def test_a_killed_search_resumes_without_losing_or_repeating_a_trial(tmp_path):
    results = tmp_path / "results"
    arguments = ["--conf-dir", TEST_CONF, *SPACE, *REGRESSION, "task.sizes.tiny.steps=200", "seeds=[0]",
                 "search.n_trials=6", "search.study=killed", "ray.num_cpus=2", f"results_dir={results}"]  # fmt: skip
    process = subprocess.Popen(
        [sys.executable, "-m", "fp4sweep", "run", *arguments], env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
        start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while not (results / "trials").is_dir() or len(stored_ids(results)) < 3:  # the baseline and 2 recipes
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)  # Ray's processes go with the driver's session
        except ProcessLookupError:
            pass
    before = {t.number: t for t in load(results, "killed").trials}
    stored_before = set(stored_ids(results))
    assert 3 <= len(stored_before) < 7
    assert any(t.state == TrialState.RUNNING for t in before.values())  # asked, not yet told

    assert main(["run", *arguments]) == 0
    study = load(results, "killed")
    after = {t.number: t for t in study.trials}
    assert not [t for t in after.values() if t.state == TrialState.RUNNING]
    n_axes = max(len(t.params) for t in after.values())
    for number, trial in before.items():  # the study went on from where it was
        assert after[number].params == trial.params
        if trial.state == TrialState.RUNNING:
            # Asked before the kill: evaluated now, unless the kill came while its choices were
            # being drawn (then it never ran, and is told as failed).
            drawn = len(trial.params) == n_axes
            assert after[number].state == (TrialState.COMPLETE if drawn else TrialState.FAIL)
        else:
            assert after[number].state == trial.state and after[number].values == trial.values
    attempts = ResultsStore(results).trials(latest=False)
    assert attempts["trial_id"].is_unique and len(attempts) == 1 + 6  # nothing ran twice
    assert stored_before <= set(attempts["trial_id"])
    complete = study.get_trials(states=[TrialState.COMPLETE])
    assert len({tuple(t.params.values()) for t in complete}) == 6  # every trained recipe was told
    for trial in complete:
        assert trial.values == pytest.approx(expected_values(results, study)[trial.number], rel=1e-12)


@pytest.mark.parametrize("sampler", ["random", "tpe", "nsga2"])
def test_a_restarted_search_does_not_repeat_its_first_proposals(tmp_path, sampler):
    node = {"n_trials": 1, "sampler": sampler, "startup": 4, "seed": 0, "study": None, "stall_limit": 1}
    settings = parse_search(node)
    choices = {f"axis{i}": CategoricalDistribution([str(c) for c in range(10)]) for i in range(3)}

    def proposals(study: optuna.Study) -> list[dict]:
        asked = []
        for _ in range(3):
            trial = study.ask(choices)
            asked.append(trial.params)
            study.tell(trial.number, [0.0, 0.0])
        return asked

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = proposals(open_study(tmp_path / "a", "restart", "space", settings))
    after_restart = proposals(open_study(tmp_path / "a", "restart", "space", settings))
    assert not set(map(str, first)) & set(map(str, after_restart))
    # Still reproducible: the same seed and journal give the same proposals.
    assert proposals(open_study(tmp_path / "b", "restart", "space", settings)) == first
    assert proposals(open_study(tmp_path / "b", "restart", "space", settings)) == after_restart


@pytest.mark.slow
@pytest.mark.usefixtures("module_ray")
def test_a_laddered_search_tells_the_study_top_rung_results_and_prunes_what_stopped_below(tmp_path, capsys):
    results = tmp_path / "results"
    laddered = ["task=regression", "task.sizes.tiny.eval_every=10", "seeds=[0,1]", f"results_dir={results}",
                "search.study=climb", "search.sampler=random", f"search.n_trials={RECIPES}",
                "ladder.rungs=[{steps:10},{steps:30}]", "ladder.keep=0.5"]
    assert search(*laddered) == 0
    rows = ResultsStore(results).trials()
    recipes = rows[~rows["is_baseline"]].groupby("size")["recipe_id"].apply(set).to_dict()
    assert len(recipes["tiny, steps=10"]) == RECIPES  # every proposal ran the first rung
    assert 0 < len(recipes["tiny, steps=30"]) < RECIPES  # only the promoted ones the second
    assert recipes["tiny, steps=30"] <= recipes["tiny, steps=10"]
    assert rows[rows["is_baseline"]].groupby("size").size().to_dict() == {"tiny, steps=10": 2, "tiny, steps=30": 2}

    study = load(results, "climb")
    for trial in study.get_trials():
        mine = rows[(rows[[f"axis.{a}" for a in trial.params]] == list(trial.params.values())).all(axis=1)]
        climbed = set(mine["recipe_id"]) <= recipes["tiny, steps=30"]
        # A combination a constraint leaves out has no rows, and is pruned too.
        assert trial.state == (TrialState.COMPLETE if len(mine) and climbed else TrialState.PRUNED)
    # The study's values are the top rung's gaps.
    top = rows[rows["size"].eq("tiny, steps=30")]
    baselines = top[top["is_baseline"]].set_index("seed")["metric.val_loss"].to_dict()
    for trial in study.get_trials(states=[TrialState.COMPLETE]):
        mine = top[(top[[f"axis.{a}" for a in trial.params]] == list(trial.params.values())).all(axis=1)]
        gaps = [(loss - baselines[s]) / baselines[s] for s, loss in zip(mine["seed"], mine["metric.val_loss"])]
        assert trial.values[0] == pytest.approx(statistics.fmean(gaps))

    # The same command again: every recipe is evaluated, nothing trains.
    capsys.readouterr()
    assert search(*laddered) == 0
    assert "this run trained 0 trials" in capsys.readouterr().out
    assert len(ResultsStore(results).trials(latest=False)) == len(rows)
