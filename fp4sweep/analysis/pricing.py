"""Overhead priced on a target workload and machine, for trials already in a store.

A trial's quality is measured on its task; its overhead is analytic, so any stored trial can be
priced on any target (``conf/target/``) and machine (``conf/hardware/``) from the recipe in its
``spec`` column, without running it again. The store keeps the figure its trial computed (the
task's own shapes on the default machine); ``price_trials`` replaces the ``overhead.*`` columns
of a frame of trial rows for one report.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import pandas as pd
import yaml

from fp4sweep.quant import GemmShape, Recipe, load_hardware, overhead
from fp4sweep.quant.cost import DEFAULT_MODEL, MODELS
from fp4sweep.quant.hardware import DEFAULT_HARDWARE
from fp4sweep.quant.targets import TASK_TARGET, load_target
from fp4sweep.sweep.config import CONF_DIR
from fp4sweep.sweep.trial import task_config
from fp4sweep.tasks import default_module, load_task

OVERHEAD = "overhead."


class PricingError(ValueError):
    """A trial that cannot be priced on the target (e.g. its task's shapes cannot be built)."""


@dataclass(frozen=True)
class Pricing:
    """Where a report prices overhead: a target, a machine and a model; names are checked."""

    target: str = TASK_TARGET
    hardware: str = DEFAULT_HARDWARE
    model: str = DEFAULT_MODEL

    def __post_init__(self) -> None:
        load_target(self.target)
        load_hardware(self.hardware)
        if self.model not in MODELS:
            raise ValueError(f"unknown overhead model {self.model!r}; valid: {list(MODELS)}")

    @property
    def label(self) -> str:
        return f"target {self.target}, hardware {self.hardware}, {self.model} model"

    def __call__(self, trials: pd.DataFrame) -> pd.DataFrame:
        return price_trials(trials, self.target, self.hardware, self.model)


def price_trials(
    trials: pd.DataFrame,
    target: str = TASK_TARGET,
    hardware: str = DEFAULT_HARDWARE,
    model: str = DEFAULT_MODEL,
) -> pd.DataFrame:
    """``trials`` with its ``overhead.*`` columns priced on ``target`` and ``hardware``.

    Target ``task`` prices each trial on its own task's shapes, as the trial itself did. Raises
    ValueError naming the valid choices for an unknown target, machine or model.
    """
    Pricing(target, hardware, model)  # names checked before any trial is priced
    workload = load_target(target)
    machine = load_hardware(hardware)

    @lru_cache(maxsize=None)
    def price(spec_json: str) -> tuple[tuple[str, float], ...]:
        spec = json.loads(spec_json)
        try:
            recipe = Recipe.from_dict(spec["recipe"])
        except ValueError as error:
            raise PricingError(f"a stored recipe is not valid here: {error}") from None
        shapes = list(workload.shapes) if not workload.from_task else task_shapes(spec, recipe.high_precision)
        return tuple(overhead(recipe, shapes, machine, model).as_dict().items())

    # One pricing per distinct recipe and task: the seeds of a recipe share it.
    keys = [
        _pricing_key(trial, spec, workload.from_task)
        for trial, spec in zip(trials["trial_id"], trials["spec"])
    ]
    priced = pd.DataFrame([dict(price(key)) for key in keys], index=trials.index).add_prefix(OVERHEAD)
    kept = trials.drop(columns=[c for c in trials.columns if c.startswith(OVERHEAD)])
    return pd.concat([kept, priced], axis=1)


def _pricing_key(trial_id: str, spec_json: str, from_task: bool) -> str:
    """What a trial's price depends on: its recipe, and its task when priced on the task."""
    keys = ("recipe", "task", "size", "params", "exclude") if from_task else ("recipe",)
    try:
        spec = json.loads(spec_json)
        return json.dumps({k: spec[k] for k in keys}, sort_keys=True)
    except (TypeError, ValueError, KeyError):
        raise PricingError(
            f"trial {trial_id}: its spec column holds no {'/'.join(keys)} to price it by"
        ) from None


def task_shapes(spec: dict[str, Any], policy: str) -> list[GemmShape]:
    """The GEMM shapes of one training step of a spec's task, as its trial priced them: those
    the recipe's layer ``policy`` keeps in bf16 marked."""
    try:
        task = load_task(_task_module(spec["task"]))
        return task.gemm_shapes(task_config(spec, task.Config), policy)
    except Exception as error:  # noqa: BLE001 - any failure names the task it came from
        raise PricingError(f"cannot price on the shapes of task {spec['task']!r}: {error}") from error


def _task_module(name: str) -> str:
    """The module that ``conf/task/NAME.yaml`` names, or the default one for that task."""
    path = CONF_DIR / "task" / f"{name}.yaml"
    node = yaml.safe_load(path.read_text()) if path.is_file() else None
    module = node.get("module") if isinstance(node, dict) else None
    return module or default_module(name)
