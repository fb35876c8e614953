"""A sweep's settings expanded into trial specs, all in this process.

The axes a sweep crosses are keys of the axis schema (``fp4sweep.quant.axes``): every axis at
its default unless the sweep lists options for it, plus the scoped keys it names. Each
combination of options is one recipe (``Recipe.from_axes``); combinations that build the same
recipe run once. Presets are axis values too, so every recipe of a plan records an option under
every key the plan knows: the store's ``axis.*`` columns.

Expansion needs the task configs (conf/task/) but not the task modules: those are imported when
trials run.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

from fp4sweep.quant import Recipe
from fp4sweep.quant.axes import canonical, defaults, parse_key, recorded
from fp4sweep.quant.recipe import preset_axes
from fp4sweep.sweep.config import ConfigTree, RunSettings, SweepError
from fp4sweep.results.ids import canonical_json, joined_json, recipe_id, trial_id_of_json
from fp4sweep.results.schema import DEFAULTS_LABEL
from fp4sweep.tasks import default_module

_TASK_KEYS = {"name", "size", "exclude", "resources", "sizes", "module"}
_RESOURCE_KEYS = {"num_cpus", "num_gpus", "memory", "resources"}


@dataclass(frozen=True)
class TaskPlan:
    """One task of a sweep at one size, as its conf/task/ file resolves it."""

    name: str
    size: str
    params: dict[str, Any]
    exclude: list[str] | None
    module: str
    resources: dict[str, dict[str, Any]]  # "cpu" / "gpu" -> Ray resources of one trial
    node: dict[str, Any]  # the whole task config, as a trial config holds it
    # A ladder rung's departure from the size preset (e.g. "50 steps"); "" for a plain sweep.
    fidelity: str = ""

    @property
    def stored_size(self) -> str:
        """The store's ``size`` of this task's trials: the preset, and the rung's fidelity if
        any, so that the report never pools trials of different lengths."""
        return f"{self.size}, {self.fidelity}" if self.fidelity else self.size


@dataclass(frozen=True)
class RecipePlan:
    """A recipe of the sweep: a named preset, or one combination of axis choices."""

    label: str
    recipe: dict[str, Any]  # Recipe.to_dict()
    axes: dict[str, str] | None  # the option under every key of the plan; None for the baseline
    is_baseline: bool = False
    # A named preset that no combination of the crossed axes builds: beside the design, not in it.
    is_preset: bool = False

    @property
    def recipe_id(self) -> str:
        return recipe_id(self.recipe)


@dataclass(frozen=True)
class Trial:
    """One training run: a task, a recipe and a seed. ``spec`` is all a worker needs."""

    trial_id: str
    spec: dict[str, Any]  # task, size, params, exclude, recipe, seed
    task: TaskPlan
    recipe: RecipePlan


@dataclass(frozen=True)
class Plan:
    sweep: str
    trials: list[Trial]
    axes: dict[str, list[str]]  # every key crossed, with its options (one when not swept)
    recipes: list[RecipePlan]
    excluded: dict[str, int]  # constraint reason -> combinations it left out


def expand(tree: ConfigTree, settings: RunSettings) -> Plan:
    """Every trial of the sweep, validated: tasks and sizes, axis options, recipes, seeds."""
    if not settings.has_sweep and not settings.tasks:
        raise SweepError(f"no sweep chosen: add +sweep=NAME; valid: {tree.options('sweep')}")
    if not settings.tasks:
        raise SweepError("tasks: the sweep names no task")
    if not settings.seeds:
        raise SweepError("seeds: the sweep names no seed")
    axes = {name: [option] for name, option in defaults().items()}
    axes.update(settings.axes)
    tasks = [_task_plan(tree, settings, name) for name in settings.tasks]
    named = [settings.baseline] + [name for name in settings.presets if name != settings.baseline]
    preset_values = {name: _preset_axes(name, name == settings.baseline) for name in named}
    # The store's axis columns: every key crossed, then the scoped keys the presets place.
    keys = list(axes) + [k for values in preset_values.values() for k in values if k not in axes]
    keys = list(dict.fromkeys(keys))

    crossed: dict[str, RecipePlan] = {}
    excluded: Counter[str] = Counter()
    for combination in _combinations(axes):
        rule = next((c for c in settings.constraints if c.excludes(combination)), None)
        if rule is not None:
            excluded[rule.reason] += 1
            continue
        recipe = _axes_recipe(combination, keys)
        crossed.setdefault(recipe.recipe_id, recipe)
    recipes: list[RecipePlan] = []
    for name in named:
        preset = _preset(name, preset_values[name], keys, is_baseline=name == settings.baseline)
        twin = next((r.label for r in recipes if r.recipe_id == preset.recipe_id), None)
        if twin is not None:
            raise SweepError(f"presets: {name!r} is the same recipe as {twin!r}; name one of them")
        # A preset that some combination of axes also builds runs once, with its name and the
        # combination's axes, so that the crossed axes stay a full factorial design.
        same = crossed.pop(preset.recipe_id, None)
        recipes.append(preset if same is None else replace(same, label=name, is_baseline=preset.is_baseline))
    recipes += crossed.values()

    trials = []
    task_json = {task.name: _task_json(task) for task in tasks}
    recipe_json = {id(recipe): canonical_json(recipe.recipe) for recipe in recipes}
    for seed, task, recipe in itertools.product(settings.seeds, tasks, recipes):
        spec = {
            "task": task.name,
            "size": task.size,
            "params": task.params,
            "exclude": task.exclude,
            "recipe": recipe.recipe,
            "seed": seed,
        }
        parts = {**task_json[task.name], "recipe": recipe_json[id(recipe)], "seed": canonical_json(seed)}
        trials.append(Trial(trial_id_of_json(joined_json(parts)), spec, task, recipe))
    return Plan(settings.sweep or "", trials, axes, recipes, dict(excluded))


def _task_json(task: TaskPlan) -> dict[str, str]:
    """The canonical JSON of a task's part of a trial spec (see ``Plan.trials``' specs)."""
    values = {"task": task.name, "size": task.size, "params": task.params, "exclude": task.exclude}
    return {key: canonical_json(value) for key, value in values.items()}


def _combinations(axes: dict[str, list[str]]) -> Iterator[dict[str, str]]:
    names = list(axes)
    for choice in itertools.product(*axes.values()):
        yield dict(zip(names, choice))


def _task_plan(tree: ConfigTree, settings: RunSettings, name: str) -> TaskPlan:
    node = settings.task_node
    if node is None or node.get("name") != name:
        node = tree.option_node("task", name).get("task")
    where = f"conf/task/{name}.yaml"
    if not isinstance(node, dict):
        raise SweepError(f"{where}: expected a mapping under `task`, got {node!r}")
    unknown = sorted(set(node) - _TASK_KEYS)
    if unknown:
        raise SweepError(f"{where}: unknown key(s) {unknown}; valid: {sorted(_TASK_KEYS)}")
    size = settings.size or node.get("size")
    sizes = node.get("sizes") or {}
    if size not in sizes:
        raise SweepError(f"{where}: unknown size {size!r}; valid: {sorted(sizes)}")
    resources = node.get("resources") or {}
    for kind in ("cpu", "gpu"):
        given = resources.get(kind)
        if not isinstance(given, dict) or not set(given) <= _RESOURCE_KEYS:
            raise SweepError(
                f"{where}: resources.{kind} must map some of {sorted(_RESOURCE_KEYS)} to amounts, "
                f"got {given!r}"
            )
        # Checked here, before Ray sees them: Ray answers a bad amount with a traceback.
        custom = given.get("resources") or {}
        if not isinstance(custom, dict):
            raise SweepError(f"{where}: resources.{kind}.resources must map resource names to amounts, got {custom!r}")
        amounts = {**{k: v for k, v in given.items() if k != "resources"}, **custom}
        for key, amount in amounts.items():
            if isinstance(amount, bool) or not isinstance(amount, (int, float)) or not amount >= 0:
                raise SweepError(f"{where}: resources.{kind}.{key}: expected a number >= 0, got {amount!r}")
    return TaskPlan(
        name=node.get("name", name),
        size=size,
        params={**sizes[size], **settings.params.get(name, {})},
        exclude=node.get("exclude"),
        module=node.get("module") or default_module(name),
        resources=resources,
        node=node,
    )


def _preset_axes(name: str, is_baseline: bool) -> dict[str, str]:
    try:
        return canonical(preset_axes(name))
    except ValueError as error:
        raise SweepError(f"{'baseline' if is_baseline else 'presets'}: {error}") from None


def _preset(name: str, values: dict[str, str], keys: list[str], is_baseline: bool) -> RecipePlan:
    recipe = Recipe.from_axes(values)
    # The baseline is the reference every recipe is compared to, not a point of the design.
    axes = None if is_baseline else recorded(values, keys)
    return RecipePlan(name, recipe.to_dict(), axes, is_baseline, is_preset=not is_baseline)


def _axes_recipe(combination: dict[str, str], keys: list[str]) -> RecipePlan:
    changed = [f"{key}={option}" for key, option in combination.items()
               if option != parse_key(key).axis.default]
    label = " ".join(changed) or DEFAULTS_LABEL
    try:
        recipe = Recipe.from_axes(combination)
    except ValueError as error:
        raise SweepError(
            f"recipe {label!r}: {error}; leave such combinations out with a constraint in the sweep file"
        ) from None
    return RecipePlan(label, recipe.to_dict(), recorded(combination, keys))
