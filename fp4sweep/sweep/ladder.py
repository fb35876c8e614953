"""A multi-fidelity ladder: every recipe at the lowest rung, then only those that could still be
on the front at each higher one.

``fp4sweep run +sweep=ladder`` (or any sweep with ``ladder.rungs=[...]``) runs the sweep's grid
rung by rung. A rung is a fidelity (``fp4sweep.sweep.rungs``): its trials are the grid's trials
with the rung's size and parameters in their spec, so they are ordinary trials with ordinary ids.
The first rung runs every recipe; each later rung runs the bf16 baseline and the recipes that the
promotion rule (``fp4sweep.sweep.promotion``) passes from the rung below, within its budget.

Everything is derived from the store: before each rung, the rung below is read back and the
promotion decided from its rows alone, so the same store gives the same rungs on any machine,
trials already stored are not run again (a rung whose trials are all stored runs nothing), and a
killed ladder continues where it stopped with the same command. The rungs are synchronous: a rung
is decided only once the rung below is complete, because promotion compares each recipe with the
front of all of them. A rung with failed trials stops the ladder (``resume`` reruns them and goes
on), so no decision is taken on part of a rung. ``ladder.upto`` stops after the first rungs,
so that the rest can run on another machine against a copy of the store.

The store's ``size`` of a rung's trials names the rung's departure from the size preset (e.g.
``tiny, steps=25``): the report treats each fidelity as a task size of its own, with its own
baseline, and compares the rankings of consecutive fidelities (``fp4sweep.analysis.fidelity``).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from typing import TextIO

import pandas as pd

from fp4sweep.analysis.quality import summarise_recipes, trial_gaps
from fp4sweep.results.store import ResultsStore
from fp4sweep.sweep.config import ConfigTree, RunSettings, SweepError
from fp4sweep.sweep.plan import Plan, Trial, expand
from fp4sweep.sweep.promotion import budget, promote
from fp4sweep.sweep.runner import RunReport, check_tasks, run_trials, start_ray, trials_to_run
from fp4sweep.sweep.rungs import LadderSettings, Rung


@dataclass
class RungReport:
    """What one rung of a ladder ran and decided."""

    index: int
    fidelity: str  # the store's size of its trials, per task
    recipes: int  # recipes this rung runs (the baseline not counted)
    trials: int
    run: RunReport
    # Per recipe and task of this rung: promoted, reason, distance (None for the top rung, or a
    # rung that did not finish).
    decisions: pd.DataFrame | None = None

    @property
    def promoted(self) -> int:
        return 0 if self.decisions is None else int(self.decisions["promoted"].sum())


@dataclass
class LadderReport:
    rungs: list[RungReport]
    stopped: str | None = None  # why the ladder stopped below its top rung

    @property
    def interrupted(self) -> bool:
        return any(rung.run.interrupted for rung in self.rungs)


def rung_settings(tree: ConfigTree, settings: RunSettings, rung: Rung) -> RunSettings:
    """The sweep's settings at a rung's fidelity: its size, and its parameters over the sweep's."""
    for task in rung.params:
        tree.check_choice(f"ladder.rungs: params.{task}", "task", task)
    params = {}
    for task in settings.tasks:
        steps = {} if rung.steps is None else {"steps": rung.steps}
        params[task] = {**settings.params.get(task, {}), **steps, **rung.params.get(task, {})}
    return replace(settings, size=rung.size or settings.size, params={**settings.params, **params})


def rung_plan(
    tree: ConfigTree, settings: RunSettings, rung: Rung, promoted: dict[str, set[str]] | None
) -> Plan:
    """The rung's trials: the baseline's, and those of the recipes promoted on each task (every
    recipe when ``promoted`` is None), their task labelled with the rung's fidelity."""
    plan = expand(tree, rung_settings(tree, settings, rung))
    tasks = {}
    for trial in plan.trials:
        task = trial.task
        if task.name not in tasks:
            # What the sweep itself would run at this size: the preset under the sweep's params.
            base = {**task.node["sizes"][task.size], **settings.params.get(task.name, {})}
            changed = [f"{key}={value}" for key, value in task.params.items() if base.get(key) != value]
            tasks[task.name] = replace(task, fidelity=", ".join(changed))
    trials = [
        Trial(t.trial_id, t.spec, tasks[t.task.name], t.recipe)
        for t in plan.trials
        if promoted is None or t.recipe.is_baseline or t.recipe.recipe_id in promoted.get(t.task.name, set())
    ]
    kept = {t.recipe.recipe_id for t in trials}
    return replace(plan, trials=trials, recipes=[r for r in plan.recipes if r.recipe_id in kept])


def decide(rows: pd.DataFrame, keep: int | float) -> pd.DataFrame:
    """Promotion decisions from a rung's stored rows: one row per (task, recipe)."""
    runs, _ = trial_gaps(rows)
    summary = summarise_recipes(runs)
    tables = []
    for _, group in summary.groupby("task", sort=True):
        tables.append(promote(group, budget(keep, len(group))))
    return pd.concat(tables, ignore_index=True)


def run_ladder(
    tree: ConfigTree,
    settings: RunSettings,
    ladder: LadderSettings,
    rerun_failed: bool = False,
    stream: TextIO | None = None,
) -> LadderReport:
    """Run (or continue) the sweep's ladder, rung by rung, from what the store holds."""
    stream = stream or sys.stderr
    import ray

    climbed = ladder.rungs[: ladder.upto]
    # Every rung's task settings (a `steps` that a task does not take, an unknown size) are
    # checked before anything runs, not when the ladder reaches them.
    for rung in climbed:
        check_tasks(rung_plan(tree, settings, rung, None).trials, data=settings.ray.address is None)
    report = LadderReport([])
    started_ray = False
    promoted: dict[str, set[str]] | None = None
    try:
        for index, rung in enumerate(climbed):
            plan = rung_plan(tree, settings, rung, promoted)
            store = ResultsStore(settings.results_dir)
            # One Ray for every rung that runs something, rather than a start per rung.
            if trials_to_run(plan, store.statuses(), rerun_failed) and not ray.is_initialized():
                start_ray(settings.ray)
                started_ray = True
            print(f"rung {index + 1} of {len(ladder.rungs)} ({_fidelities(plan)}): "
                  f"{len(plan.recipes) - 1} recipes and the baseline", file=stream)
            run = run_trials(plan, settings, rerun_failed=rerun_failed, stream=stream)
            rung_report = RungReport(index, _fidelities(plan), len(plan.recipes) - 1, len(plan.trials), run)
            report.rungs.append(rung_report)
            if run.interrupted:
                return report
            ids = {t.trial_id for t in plan.trials}
            latest = ResultsStore(settings.results_dir).trials()
            rows = latest[latest["trial_id"].isin(ids)]
            failed = int(rows["status"].eq("failed").sum())
            if failed:
                report.stopped = (f"{failed} trials of rung {index + 1} failed; `fp4sweep resume` reruns "
                                  "them and goes on")
                return report
            if len(rows) < len(ids):
                raise SweepError(f"rung {index + 1}: {len(ids) - len(rows)} of its trials are not in the store")
            if index + 1 < len(ladder.rungs):
                rung_report.decisions = decide(rows, ladder.keep[index])
                chosen = rung_report.decisions[rung_report.decisions["promoted"]]
                promoted = {task: set(group["recipe_id"]) for task, group in chosen.groupby("task")}
    finally:
        if started_ray:
            ray.shutdown()
    return report


def _fidelities(plan: Plan) -> str:
    return "; ".join(sorted({f"{t.task.name} {t.task.stored_size}" for t in plan.trials}))
