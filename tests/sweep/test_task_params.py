"""A sweep's `params`: parameters of one task family set over its size preset."""

from __future__ import annotations

import pytest

from fp4sweep.sweep.config import ConfigTree, SweepError, load_settings
from fp4sweep.sweep.plan import expand
from fp4sweep.sweep.runner import check_tasks


@pytest.fixture(scope="module")
def tree() -> ConfigTree:
    return ConfigTree()


def plan_of(tree: ConfigTree, *overrides: str):
    return expand(tree, load_settings(tree, list(overrides)))


def test_params_replace_the_size_preset_of_their_task_only(tree):
    plan = plan_of(tree, "+sweep=gpu_smoke")
    by_task = {t.task.name: t.spec["params"] for t in plan.trials}
    assert by_task["classification"]["dataset"] == "mnist"
    assert by_task["classification"]["epochs"] == 5  # the rest is conf/task's `small`
    assert by_task["gpt"]["steps"] == 60 and by_task["gpt"]["n_layer"] == 6
    assert by_task["regression"]["steps"] == 2000  # no params for it: its preset as it is
    check_tasks(plan.trials, data=False)  # every task builds its Config from them


def test_params_change_the_trial_ids(tree):
    shorter = plan_of(tree, "+sweep=gpu_smoke", "task=gpt")
    longer = plan_of(tree, "+sweep=gpu_smoke", "task=gpt", "params.gpt.steps=300")
    assert [t.recipe.recipe_id for t in shorter.trials] == [t.recipe.recipe_id for t in longer.trials]
    assert not {t.trial_id for t in shorter.trials} & {t.trial_id for t in longer.trials}


def test_narrowing_to_one_task_keeps_its_params(tree):
    plan = plan_of(tree, "+sweep=gpu_smoke", "task=diffusion", "params.diffusion.steps=30")
    assert {t.spec["params"]["steps"] for t in plan.trials} == {30}
    assert {t.spec["params"]["dataset"] for t in plan.trials} == {"mnist"}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("+params.gtp={steps: 1}", "params: unknown key(s) ['gtp']; valid: ['classification', 'diffusion'"),
        ("params.gpt=200", "params.gpt: expected a mapping of gpt's parameters, got 200"),
    ],
)
def test_bad_params_are_named(tree, override, message):
    with pytest.raises(SweepError) as error:
        plan_of(tree, "+sweep=gpu_smoke", override)
    assert message in str(error.value)


def test_an_unknown_parameter_is_named_before_anything_runs(tree):
    plan = plan_of(tree, "+sweep=gpu_smoke", "task=gpt", "+params.gpt.stpes=1")
    with pytest.raises(SweepError, match="task 'gpt' \\(size 'small'\\): .*stpes"):
        check_tasks(plan.trials, data=False)
