"""Adaptive search: an Optuna study proposes recipes, the sweep's runner trains them.

``fp4sweep run +sweep=adaptive task=regression search.n_trials=200`` searches the sweep's axes
(its choices and constraints, as the grid would cross them) for the Pareto front of two objectives,
both minimised: the quality gap, the recipe's mean over the sweep's seeds of the relative
validation-loss gap to the bf16 baseline of the same task and seed, and the modelled overhead
(``overhead.model``). One study trial is one recipe; its trials (one per seed) go through the same
task code, Ray runner and results store as a grid's, with the same trial ids, so a recipe that the
store already holds (from this search, an earlier one or a grid sweep) is read from it, not trained
again. The baselines run first. ``n_trials`` counts distinct recipes; a proposal of a recipe the
study has already evaluated (NSGA-II makes many) is answered with the same result and costs
nothing.

Ask and tell: the runner asks this feed for trials whenever its window of trials in flight has
room; the feed asks the study for recipes until the window is full and tells the study each
recipe's result once all its trials are in the store (the store is flushed first, so the study is
never ahead of the store).

What the study is told, beside the two objectives of a finished recipe:

- a trial that raised (``failed``): ``TrialState.FAIL``. The failure says nothing about the
  recipe, so both samplers leave it out of their models.
- a diverged trial: ``TrialState.PRUNED``, as the training loop stopped it early. TPE ranks
  pruned trials below every finished one (so it learns to stay away from that region), NSGA-II
  never picks them as parents, and neither sees an invented loss that would distort its density
  estimates or crowding distances; the store keeps the truth (``status`` diverged).
- a combination that a constraint of the sweep leaves out: ``PRUNED`` too, without running
  anything, so that TPE learns to avoid it as well.

With a ladder (``ladder.rungs``, ``fp4sweep.sweep.ladder``), a proposed recipe climbs the rungs
before the study hears of it. Optuna's pruners do not support multi-objective studies, so the
study never sees a lower rung: the ladder is a filter in front of it. The recipe runs at the
lowest rung; it goes on to the next only if the ladder's promotion rule passes it among every
recipe that rung holds so far (the rule and budget of a grid's ladder, applied as each recipe
finishes: asynchronous successive halving, as in ASHA); the study is told its result at the top
rung, or PRUNED if it stopped below (as a diverged recipe: TPE learns to avoid the region,
NSGA-II never breeds from it). Every rung's baselines run first.

The study lives in an Optuna journal (``optuna-journal.log`` in the results directory): every ask
and tell is appended and synced as it happens. A search that is killed resumes with the same
command: the trials the study had asked for but not been told of are evaluated then, from the
store where their training finished, by training otherwise. ``resume`` also reruns failed
baselines and failed recipes (each as a new study trial with the recipe's choices).
"""

from __future__ import annotations

import fcntl
import math
import os
import statistics
import sys
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TextIO

import optuna
import pandas as pd
from optuna.distributions import CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState

from fp4sweep.results.quality import diverged, recipe_gap, relative_gap, seed_baseline
from fp4sweep.sweep.config import ConfigTree, RunSettings, SweepError
from fp4sweep.results.ids import content_hash
from fp4sweep.sweep.ladder import decide, rung_plan, rung_settings
from fp4sweep.sweep.plan import Plan, RecipePlan, TaskPlan, Trial, expand
from fp4sweep.sweep.rungs import LadderSettings
from fp4sweep.sweep.runner import RunReport, run_feed
from fp4sweep.sweep.search import SearchSettings
from fp4sweep.results.store import ResultsStore

JOURNAL = "optuna-journal.log"
OBJECTIVES = ("quality gap", "modelled overhead")
VAL_LOSS, OVERHEAD = "metric.val_loss", "overhead.model"


class SearchSpace:
    """The axes a search proposes choices on, and the grid trials each combination stands for."""

    def __init__(self, tree: ConfigTree, settings: RunSettings, grid: Plan | None = None) -> None:
        if len(settings.tasks) != 1:
            raise SweepError(
                f"tasks: an adaptive search covers one task; choose one with task=NAME, of "
                f"{settings.tasks}"
            )
        self._tree = tree
        self._settings = settings
        # The whole grid (a ladder rung's, when given), expanded once: it validates every
        # combination before anything runs, and its trial ids name the search space.
        grid = grid or expand(tree, settings)
        self.task: TaskPlan = grid.trials[0].task
        self.seeds: list[int] = settings.seeds
        self.distributions = {
            axis: CategoricalDistribution(choices) for axis, choices in grid.axes.items() if len(choices) > 1
        }
        self.fixed = {axis: choices[0] for axis, choices in grid.axes.items() if len(choices) == 1}
        self.baselines = [t for t in grid.trials if t.recipe.is_baseline]
        # The recipes a search may propose: combinations of the axes (a preset no combination
        # builds is outside the search space).
        self.recipes = [r for r in grid.recipes if r.axes is not None and not r.is_baseline]
        self.space_id = content_hash(sorted(t.trial_id for t in grid.trials))
        self._trials = _trials_by_recipe(grid)
        self._grid_recipes = {r.recipe_id: r for r in grid.recipes}
        self._recipes: dict[tuple[str, ...], RecipePlan] = {}

    def left_out(self, params: dict[str, Any]) -> bool:
        """Whether a constraint of the sweep leaves this combination of choices out."""
        combination = {**self.fixed, **params}
        return any(c.excludes(combination) for c in self._settings.constraints)

    def recipe(self, params: dict[str, Any]) -> RecipePlan:
        """The recipe a combination of choices builds (not left out by a constraint)."""
        key = tuple(params[axis] for axis in self.distributions)
        if key not in self._recipes:
            # Expanding the one combination builds its recipe exactly as the grid does; two
            # combinations may build the same recipe, which the grid holds once.
            narrowed = {axis: [choice] for axis, choice in {**self.fixed, **params}.items()}
            one = expand(self._tree, replace(self._settings, axes=narrowed, presets=[]))
            built = next(r for r in one.recipes if not r.is_baseline)
            self._recipes[key] = self._grid_recipes[built.recipe_id]  # labelled as in the grid
        return self._recipes[key]

    def trials(self, recipe: RecipePlan) -> list[Trial]:
        """The recipe's trials in the grid, one per seed."""
        return self._trials[recipe.recipe_id]

    def trial_ids(self) -> set[str]:
        """Every trial of the grid, baselines included."""
        return {t.trial_id for trials in self._trials.values() for t in trials}


def laddered_space_id(rungs: Sequence[SearchSpace], keep: Sequence[int | float]) -> str:
    """The id of a search over the rungs' spaces (lowest first): the one space's own id without
    a ladder; with one, another study than a plain one over the same axes."""
    return rungs[0].space_id if len(rungs) == 1 else content_hash([r.space_id for r in rungs] + list(keep))


def _trials_by_recipe(grid: Plan) -> dict[str, list[Trial]]:
    trials: dict[str, list[Trial]] = {}
    for trial in grid.trials:
        trials.setdefault(trial.recipe.recipe_id, []).append(trial)
    return trials


def recipe_result(
    rows: Sequence[dict[str, Any]], baselines: dict[int, float]
) -> tuple[TrialState, list[float] | None]:
    """What the study is told of a recipe, from its trials' store rows (one per seed).

    ``baselines`` maps a seed to the baseline's validation loss. The gap is the report's
    (``fp4sweep.results.quality``): each seed's relative gap to its own seed's baseline, averaged.
    """
    statuses = {row["status"] for row in rows}
    if "failed" in statuses:
        return TrialState.FAIL, None
    losses = [float(row[VAL_LOSS]) for row in rows if row["status"] == "done"]
    if "diverged" in statuses or any(diverged(loss) for loss in losses):
        return TrialState.PRUNED, None
    gap = recipe_gap(
        relative_gap(float(row[VAL_LOSS]), baselines[row["seed"]]) for row in rows
    )
    overhead = statistics.fmean(float(row[OVERHEAD]) for row in rows)  # the same for every seed
    return TrialState.COMPLETE, [gap, overhead]


class _FlockLock:
    """The journal's lock for Optuna's JournalFileBackend: an flock, which the system releases
    when its holder dies, so that a killed search leaves no stale lock file behind (Optuna's own
    file locks make the next process wait out a grace period for one)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._file: Any = None

    def acquire(self) -> bool:
        self._file = open(self._path, "a")  # noqa: SIM115 - held until release
        fcntl.flock(self._file, fcntl.LOCK_EX)
        return True

    def release(self) -> None:
        self._file.close()
        self._file = None


def _drop_torn_record(path: Path) -> None:
    """Cut a last journal record that lacks its newline (a write cut short by a power loss or a
    full disk): it was never acknowledged, and Optuna would append the next record onto it."""
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        os.truncate(path, data.rfind(b"\n") + 1)


def make_sampler(search: SearchSettings, asked: int = 0) -> optuna.samplers.BaseSampler:
    """The search's sampler, for a study whose journal already holds ``asked`` trials.

    A sampler's random stream starts from its seed: a restarted search would propose what the
    first run proposed first (answered from the store, but counted against the budget). So the
    seed of a continued study is derived from the search's seed and how far the study got,
    which keeps the whole search reproducible from the seed and the journal.
    """
    seed = search.seed
    if seed is not None and asked:
        seed = int(content_hash([seed, asked]), 16) % 2**32
    if search.sampler == "tpe":
        # Multivariate: the axes interact (a scale format's worth depends on the block size).
        return optuna.samplers.TPESampler(
            n_startup_trials=search.startup, seed=seed, multivariate=True, constant_liar=True
        )
    if search.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(population_size=search.startup, seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)


def open_study(results_dir: Path, name: str, space_id: str, search: SearchSettings) -> optuna.Study:
    """Create the study in the results directory's journal, or load it to continue."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # a line per tell would break the progress line
    journal = results_dir / JOURNAL
    _drop_torn_record(journal)
    lock = _FlockLock(journal.with_suffix(".lock"))
    backend = optuna.storages.journal.JournalFileBackend(str(journal), lock_obj=lock)
    study = optuna.create_study(
        storage=optuna.storages.JournalStorage(backend),
        study_name=name,
        directions=["minimize", "minimize"],
        sampler=make_sampler(search),
        load_if_exists=True,
    )
    asked = len(study.get_trials(deepcopy=False))
    if asked:
        study.sampler = make_sampler(search, asked)
    if "search_space" not in study.user_attrs:
        study.set_user_attr("search_space", space_id)
        study.set_user_attr("objectives", list(OBJECTIVES))
    elif study.user_attrs["search_space"] != space_id:
        raise SweepError(
            f"search.study: study {name!r} in {journal} searched other axes, seeds or task settings; "
            "choose another search.study or results_dir"
        )
    return study


class SearchFeed:
    """The runner's trial feed for one study: baselines first, then recipes the study proposes."""

    def __init__(
        self,
        space: SearchSpace,
        search: SearchSettings,
        study_name: str,
        results_dir: Path,
        rerun_failed: bool,
        lower: Sequence[SearchSpace] = (),
        keep: Sequence[int | float] = (),
    ) -> None:
        self.space = space
        self.search = search
        self.study_name = study_name
        # A laddered search's rungs, lowest first; the study hears the top rung's results.
        self.rungs = [*lower, space]
        self._keep = list(keep)
        self.space_id = laddered_space_id(self.rungs, self._keep)
        self.task_trials = [trial for rung in self.rungs for trial in rung.baselines]
        self._results_dir = results_dir
        self._rerun_failed = rerun_failed
        self.study: optuna.Study | None = None
        self.stopped: str | None = None  # why the sampler's proposals ended before the budget
        self.blocked: str | None = None  # why the search could not go on (a baseline's result)
        self.from_store = 0  # recipes this run answered from the store without training
        self.proposals = 0  # study trials this run asked for
        self._rows: dict[str, dict[str, Any]] = {}  # trial id -> store row, of this task's trials
        self._counted: set[str] = set()  # recipe ids the study has evaluated or is evaluating
        self._waiting: dict[str, list[int]] = {}  # recipe id -> study trials awaiting its result
        self._outstanding: dict[str, set[str]] = {}  # recipe id -> its trial ids not finished yet
        self._rung: dict[str, int] = {}  # recipe id -> the rung its outstanding trials are of
        self._dropped: set[str] = set()  # recipe ids whose failed rows `resume` left out
        self._queue: deque[Trial] = deque()
        self._resumed: list[FrozenTrial] = []  # asked by an earlier run, never told
        self._retries: list[dict[str, Any]] = []  # failed recipes' choices, for `resume` to rerun
        self._enqueued = 0  # retries in the study's queue (enqueued by an earlier run, not yet asked)
        self._baselines: list[dict[int, float]] | None = None  # per rung: seed -> baseline loss
        self._baselines_queued = False
        self._stalls = 0

    def open(self, store: ResultsStore) -> SearchFeed:
        """Load the study and the store's results of this task (called with the store locked)."""
        self.study = open_study(self._results_dir, self.study_name, self.space_id, self.search)
        latest = store.trials()
        ids = set().union(*(rung.trial_ids() for rung in self.rungs))
        for row in latest[latest["trial_id"].isin(ids)].to_dict("records"):
            if self._rerun_failed and row["status"] == "failed":
                self._dropped.add(row["recipe_id"])
            else:
                self._rows[row["trial_id"]] = row
        retries: dict[str, dict[str, Any]] = {}
        for trial in self.study.get_trials(deepcopy=False):
            if trial.state == TrialState.RUNNING:
                self._resumed.append(trial)
            elif trial.state == TrialState.WAITING:
                self._enqueued += 1
            elif self._complete_params(trial.params) and not self.space.left_out(trial.params):
                recipe = self.space.recipe(trial.params)
                self._counted.add(recipe.recipe_id)
                # With `resume`, the failed rows were left out above: such a recipe runs again.
                if trial.state == TrialState.FAIL and recipe.recipe_id in self._dropped:
                    retries[recipe.recipe_id] = trial.params
        self._retries = list(retries.values())
        return self

    @property
    def budget(self) -> int:
        return min(self.search.n_trials, len(self.space.recipes))

    @property
    def evaluated(self) -> int:
        """Distinct recipes the study has evaluated or is evaluating."""
        return len(self._counted)

    def remaining(self) -> int:
        baselines = 0 if self._baselines_queued else len(self._missing(self.task_trials))
        ended = self.stopped is not None or self.blocked is not None
        unproposed = 0 if ended else max(0, self.budget - len(self._counted))
        recipes = len(self._resumed) + len(self._retries) + self._enqueued + unproposed
        # At most: a laddered recipe may climb every rung.
        return len(self._queue) + baselines + recipes * len(self.space.seeds) * len(self.rungs)

    def take(self, room: int) -> list[Trial]:
        if self._baselines is None:
            if not self._baselines_queued:
                self._queue.extend(self._missing(self.task_trials))
                self._baselines_queued = True
            if not self._queue and not self._missing(self.task_trials):
                self._baselines = self._baseline_losses()
        if self._baselines is not None:
            while self._resumed:
                trial = self._resumed.pop()
                if self._complete_params(trial.params):
                    self._queue.extend(self._evaluate(trial.number, trial.params))
                else:  # killed while its choices were being drawn: it never ran
                    self.study.tell(trial.number, state=TrialState.FAIL)
            # A recipe to rerun goes through the study's queue, as a new trial with its choices.
            for params in self._retries:
                self.study.enqueue_trial(params)
            self._enqueued += len(self._retries)
            self._retries = []
            while self._enqueued:
                self._enqueued -= 1
                self._propose()
            while len(self._queue) < room and self._may_propose():
                self._propose()
        return [self._queue.popleft() for _ in range(min(room, len(self._queue)))]

    def finished(self, trial: Trial, row: dict[str, Any]) -> None:
        self._rows[trial.trial_id] = row
        recipe_id = trial.recipe.recipe_id
        outstanding = self._outstanding.get(recipe_id)
        if outstanding is None:
            return  # a baseline: take() looks at the baselines once all are in
        outstanding.discard(trial.trial_id)
        if not outstanding:
            del self._outstanding[recipe_id]
            self._queue.extend(self._advance(trial.recipe, self._rung.pop(recipe_id)))

    def front(self) -> list[FrozenTrial]:
        """The study's Pareto-optimal trials, one per recipe."""
        unique = {self.space.recipe(t.params).recipe_id: t for t in self.study.best_trials}
        return sorted(unique.values(), key=lambda t: t.values)

    def _propose(self) -> None:
        trial = self.study.ask(self.space.distributions)  # an enqueued trial first, if any
        self.proposals += 1
        self._queue.extend(self._evaluate(trial.number, trial.params))

    def _may_propose(self) -> bool:
        if len(self._counted) >= self.budget:
            return False
        if self._stalls >= self.search.stall_limit:
            self.stopped = (
                f"the sampler proposed {self._stalls} recipes in a row that the study had already "
                "evaluated or that constraints leave out (search.stall_limit)"
            )
            return False
        return True

    def _evaluate(self, number: int, params: dict[str, Any]) -> list[Trial]:
        """Answer study trial ``number`` now if possible; otherwise the trials to run for it."""
        if self.space.left_out(params):
            self._stalls += 1
            self.study.tell(number, state=TrialState.PRUNED)
            return []
        recipe = self.space.recipe(params)
        new = recipe.recipe_id not in self._counted
        self._stalls = 0 if new else self._stalls + 1
        self._counted.add(recipe.recipe_id)
        if recipe.recipe_id in self._waiting:  # being trained for another study trial
            self._waiting[recipe.recipe_id].append(number)
            return []
        self._waiting[recipe.recipe_id] = [number]
        missing = self._advance(recipe, 0)
        if recipe.recipe_id not in self._waiting:  # answered from the store
            self.from_store += new
        return missing

    def _advance(self, recipe: RecipePlan, start: int) -> list[Trial]:
        """Climb the recipe up the rungs from ``start`` as far as the store's results allow: the
        trials of the first rung it lacks, or none once it is answered (at the top rung, or
        stopped below it)."""
        for index in range(start, len(self.rungs)):
            missing = self._missing(self.rungs[index].trials(recipe))
            if missing:
                self._outstanding[recipe.recipe_id] = {t.trial_id for t in missing}
                self._rung[recipe.recipe_id] = index
                return missing
            if index + 1 < len(self.rungs) and not self._promoted(index, recipe):
                break
        for number in self._waiting.pop(recipe.recipe_id):
            self._tell(number, recipe, index)
        return []

    def _promoted(self, index: int, recipe: RecipePlan) -> bool:
        """Whether a recipe that finished rung ``index`` goes on: it finished well and the
        ladder's promotion rule passes it among every recipe the rung holds so far."""
        state, _ = recipe_result(self._result_rows(index, recipe), self._baselines[index])
        if state != TrialState.COMPLETE:
            return False
        rung = self.rungs[index]
        rows = [self._rows[t.trial_id] for t in rung.baselines]
        for other in rung.recipes:
            rows += self._result_rows(index, other) or []
        decisions = decide(pd.DataFrame(rows), self._keep[index]).set_index("recipe_id")
        return bool(decisions.loc[recipe.recipe_id, "promoted"])

    def _result_rows(self, index: int, recipe: RecipePlan) -> list[dict[str, Any]] | None:
        """The recipe's rows at a rung, one per seed; None until all are in."""
        trials = self.rungs[index].trials(recipe)
        return None if self._missing(trials) else [self._rows[t.trial_id] for t in trials]

    def _tell(self, number: int, recipe: RecipePlan, index: int) -> None:
        """Tell the study of a recipe's result at rung ``index``: its values at the top rung; a
        recipe stopped below it is pruned (or failed, if a trial raised)."""
        state, values = recipe_result(self._result_rows(index, recipe), self._baselines[index])
        if index + 1 < len(self.rungs) and state == TrialState.COMPLETE:
            state, values = TrialState.PRUNED, None
        self.study.tell(number, values, state=state)

    def _missing(self, trials: list[Trial]) -> list[Trial]:
        return [t for t in trials if t.trial_id not in self._rows]

    def _complete_params(self, params: dict[str, Any]) -> bool:
        return params.keys() == self.space.distributions.keys()

    def _baseline_losses(self) -> list[dict[int, float]] | None:
        """Per rung, each seed's baseline validation loss; None (and the search stopped) if one
        lacks it."""
        per_rung = [self._rung_baselines(rung) for rung in self.rungs]
        return None if any(losses is None for losses in per_rung) else per_rung

    def _rung_baselines(self, rung: SearchSpace) -> dict[int, float] | None:
        losses: dict[int, list[float]] = {}
        for trial in rung.baselines:
            row = self._rows[trial.trial_id]
            loss = float(row.get(VAL_LOSS, math.nan))
            if row["status"] != "done" or diverged(loss):
                failed = row["status"] == "failed"
                self.blocked = (
                    f"the {trial.recipe.label} baseline of {trial.task.name} ({trial.task.stored_size}) seed "
                    f"{trial.spec['seed']} {row['status']}"
                    + (f" ({row['error.type']}: {row['error.message']})" if failed else "")
                    + ": quality gaps need it"
                    + ("; `fp4sweep resume` reruns it" if failed else "")
                )
                return None
            losses.setdefault(trial.spec["seed"], []).append(loss)
        return {seed: seed_baseline(runs) for seed, runs in losses.items()}


@dataclass
class SearchReport:
    run: RunReport
    study: str
    journal: Path
    budget: int
    evaluated: int
    from_store: int
    proposals: int
    front: list[tuple[str, list[float]]]  # (recipe label, objective values) on the study's front
    stopped: str | None  # why the sampler's proposals ended before the budget
    blocked: str | None  # why the search could not go on


def study_name(settings: RunSettings, task: TaskPlan, search: SearchSettings, space_id: str) -> str:
    """The study's name: given, or the sweep, task and size with the search space's id."""
    return search.study or f"{settings.sweep or 'search'}-{task.name}-{task.size}-{space_id[:8]}"


def run_search(
    tree: ConfigTree,
    settings: RunSettings,
    search: SearchSettings,
    rerun_failed: bool = False,
    stream: TextIO | None = None,
    ladder: LadderSettings | None = None,
) -> SearchReport:
    """Run (or continue) the adaptive search that ``search`` describes over the sweep's axes;
    with a ``ladder``, each proposal climbs its rungs and the study hears the top rung's result."""
    if ladder is not None and ladder.upto is not None:
        raise SweepError("ladder.upto: an adaptive search climbs every rung for each recipe it proposes")
    if ladder is None:
        spaces = [SearchSpace(tree, settings)]
    else:
        spaces = [SearchSpace(tree, rung_settings(tree, settings, rung), rung_plan(tree, settings, rung, None))
                  for rung in ladder.rungs]
    keep = ladder.keep if ladder else []
    space = spaces[-1]
    name = study_name(settings, space.task, search, laddered_space_id(spaces, keep))
    feed = SearchFeed(space, search, name, settings.results_dir, rerun_failed, lower=spaces[:-1], keep=keep)
    # Each result is written before the study hears of it: flush at once.
    flushing = replace(settings, flush_seconds=0.0)
    run = run_feed(feed.open, settings.sweep or "", flushing, stream or sys.stderr)
    return SearchReport(
        run=run,
        study=name,
        journal=settings.results_dir / JOURNAL,
        budget=feed.budget,
        evaluated=feed.evaluated,
        from_store=feed.from_store,
        proposals=feed.proposals,
        front=[(space.recipe(t.params).label, list(t.values)) for t in feed.front()],
        stopped=feed.stopped,
        blocked=feed.blocked,
    )
