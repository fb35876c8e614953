"""A sweep's settings expanded into trial specs, all in this process.

Each option of each config group is composed once (``ConfigTree.option_node``); a trial's config
is the merge of its task's node, one node per axis and its seed, exactly what Hydra composes from
conf/trial.yaml with the same choices (tests/sweep/test_plan.py checks it). On a 2-core machine,
composing per trial costs 0.05 to 0.1 s each, ``OmegaConf.merge`` of the option nodes about
1.5 ms; merging the already resolved plain dicts costs microseconds, which keeps ``plan`` on
tens of thousands of trials within seconds (scripts/bench_expand.py).

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
from fp4sweep.sweep.config import ConfigTree, RunSettings, SweepError
from fp4sweep.results.ids import recipe_id, trial_id
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


@dataclass(frozen=True)
class RecipePlan:
    """A recipe of the sweep: a named preset, or one combination of axis choices."""

    label: str
    recipe: dict[str, Any]  # Recipe.to_dict()
    axes: dict[str, str] | None  # the option chosen on each axis; None for a preset
    quant: dict[str, Any] | None  # the merged `quant` node the recipe was built from
    is_baseline: bool = False

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

    @property
    def config(self) -> dict[str, Any] | None:
        """The trial's config as conf/trial.yaml composes it (None for preset recipes)."""
        if self.recipe.quant is None:
            return None
        return merge({"task": self.task.node}, {"quant": self.recipe.quant}, {"seed": self.spec["seed"]})


@dataclass(frozen=True)
class Plan:
    sweep: str
    trials: list[Trial]
    axes: dict[str, list[str]]  # every axis with the choices crossed (one when not swept)
    recipes: list[RecipePlan]
    excluded: dict[str, int]  # constraint reason -> combinations it left out


def merge(*configs: dict[str, Any]) -> dict[str, Any]:
    """Merge resolved configs as OmegaConf.merge does: mappings key by key, anything else replaced."""
    merged: dict[str, Any] = {}
    for config in configs:
        for key, value in config.items():
            if isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key] = merge(merged[key], value)
            else:
                merged[key] = value
    return merged


def expand(tree: ConfigTree, settings: RunSettings) -> Plan:
    """Every trial of the sweep, validated: tasks and sizes, axis choices, recipes, seeds."""
    if not settings.has_sweep and not settings.tasks:
        raise SweepError(f"no sweep chosen: add +sweep=NAME; valid: {tree.options('sweep')}")
    if not settings.tasks:
        raise SweepError("tasks: the sweep names no task")
    if not settings.seeds:
        raise SweepError("seeds: the sweep names no seed")
    defaults = tree.trial_defaults()
    defaults.pop("task")
    axes = {axis: settings.axes.get(axis, [option]) for axis, option in defaults.items()}
    tasks = [_task_plan(tree, settings, name) for name in settings.tasks]

    crossed: dict[str, RecipePlan] = {}
    excluded: Counter[str] = Counter()
    for combination in _combinations(axes):
        rule = next((c for c in settings.constraints if c.excludes(combination)), None)
        if rule is not None:
            excluded[rule.reason] += 1
            continue
        recipe = _axes_recipe(tree, combination, defaults)
        crossed.setdefault(recipe.recipe_id, recipe)
    recipes = []
    named = [settings.baseline] + [name for name in settings.presets if name != settings.baseline]
    for name in named:
        preset = _preset(name, is_baseline=name == settings.baseline)
        # A preset that some combination of axes also builds runs once, with both its name and its
        # axes, so that the crossed axes stay a full factorial design.
        same = crossed.pop(preset.recipe_id, None)
        recipes.append(preset if same is None else replace(same, label=name, is_baseline=preset.is_baseline))
    recipes += crossed.values()

    trials = []
    for seed, task, recipe in itertools.product(settings.seeds, tasks, recipes):
        spec = {
            "task": task.name,
            "size": task.size,
            "params": task.params,
            "exclude": task.exclude,
            "recipe": recipe.recipe,
            "seed": seed,
        }
        trials.append(Trial(trial_id(spec), spec, task, recipe))
    return Plan(settings.sweep or "", trials, axes, recipes, dict(excluded))


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
    return TaskPlan(
        name=node.get("name", name),
        size=size,
        params={**sizes[size], **settings.params.get(name, {})},
        exclude=node.get("exclude"),
        module=node.get("module") or default_module(name),
        resources=resources,
        node=node,
    )


def _preset(name: str, is_baseline: bool = False) -> RecipePlan:
    try:
        recipe = Recipe.preset(name)
    except ValueError as error:
        raise SweepError(f"{'baseline' if is_baseline else 'presets'}: {error}") from None
    return RecipePlan(name, recipe.to_dict(), None, None, is_baseline)


def _axes_recipe(tree: ConfigTree, combination: dict[str, str], defaults: dict[str, str]) -> RecipePlan:
    quant = merge(*(tree.option_node(axis, choice) for axis, choice in combination.items()))["quant"]
    changed = [f"{axis}={choice}" for axis, choice in combination.items() if choice != defaults[axis]]
    label = " ".join(changed) or "trial defaults"
    try:
        recipe = Recipe.from_axes(**quant)
    except (TypeError, ValueError) as error:
        raise SweepError(
            f"recipe {label!r}: {error}; leave such combinations out with a constraint in the sweep file"
        ) from None
    return RecipePlan(label, recipe.to_dict(), combination, quant)

