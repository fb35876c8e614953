"""Sweep expansion: merged configs equal Hydra's, ids, counts, narrowing and clear errors."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest

from fp4sweep.quant import Recipe
from fp4sweep.sweep.config import ConfigTree, SweepError, load_settings
from fp4sweep.sweep.plan import expand

TEST_CONF = Path(__file__).parent / "conf"


@pytest.fixture(scope="module")
def tree() -> ConfigTree:
    return ConfigTree([TEST_CONF])


def plan_of(tree: ConfigTree, *overrides: str):
    return expand(tree, load_settings(tree, list(overrides)))


def assert_merged_equals_composed(tree: ConfigTree, trials) -> None:
    for trial in trials:
        composed = tree.compose_trial({"task": trial.task.name, **trial.recipe.axes}, trial.spec["seed"])
        assert trial.config == composed
        # The spec is what the config says, resolved.
        assert trial.spec["params"] == composed["task"]["sizes"][trial.spec["size"]]
        assert trial.spec["recipe"] == Recipe.from_axes(**composed["quant"]).to_dict()


def test_smoke_merged_configs_equal_composed(tree):
    plan = plan_of(tree, "+sweep=smoke")
    axis_trials = [t for t in plan.trials if t.recipe.axes is not None]
    assert len(axis_trials) == 2 * 2 * 2 * 2  # scale x transform x rounding_bwd x seeds
    assert_merged_equals_composed(tree, axis_trials)


def test_random_bits_of_stochastic_rounding_are_an_axis(tree):
    plan = plan_of(tree, "+sweep=smoke", "+axes.sr_bits=[8,24]", "axes.rounding@bwd=[sr]")
    crossed = [t for t in plan.trials if t.recipe.axes is not None]
    assert_merged_equals_composed(tree, crossed)
    by_bits = {t.recipe.axes["sr_bits"]: Recipe.from_dict(t.spec["recipe"]) for t in crossed}
    assert by_bits["8"].dgrad_dy.sr_bits == 8 and by_bits["24"].dgrad_dy.sr_bits == 24
    # Choosing 24 gives the same trials (ids included) as leaving the axis uncrossed.
    default = plan_of(tree, "+sweep=smoke", "axes.rounding@bwd=[sr]")
    assert {t.trial_id for t in default.trials} <= {t.trial_id for t in plan.trials}


def test_full_sweep_size_and_merged_configs(tree):
    plan = plan_of(tree, "+sweep=full")
    crossed = math.prod(len(choices) for choices in plan.axes.values())
    assert plan.excluded == {
        "a Hadamard transform longer than the block spreads an outlier over blocks scaled apart": 384,
        "with fp32 scales floor repeats e8m0 and ceil has nothing to round; nearest is the ideal": 448,
    }
    # The baseline and three presets, of which mxfp4 and paper_best are also combinations of axes.
    assert [(r.label, r.axes is not None) for r in plan.recipes[:4]] == [
        ("bf16", False), ("mxfp4", True), ("nvfp4", False), ("paper_best", True)
    ]
    recipes = crossed - sum(plan.excluded.values()) + 2
    assert len(plan.recipes) == recipes == 2242
    assert len(plan.trials) == recipes * 4 * 3 == 26904  # 4 tasks, 3 seeds
    assert len({t.trial_id for t in plan.trials}) == len(plan.trials)
    sample = random.Random(0).sample([t for t in plan.trials if t.recipe.axes], 20)
    assert_merged_equals_composed(tree, sample)


def test_ids_are_content_hashes(tree):
    first = plan_of(tree, "+sweep=smoke")
    again = plan_of(tree, "+sweep=smoke")
    assert [t.trial_id for t in first.trials] == [t.trial_id for t in again.trials]
    by_recipe: dict[str, set[str]] = {}
    for trial in first.trials:
        by_recipe.setdefault(trial.recipe.recipe_id, set()).add(trial.trial_id)
    # A recipe keeps its id across seeds; each seed is its own trial.
    assert len(by_recipe) == len(first.recipes) == 10
    assert all(len(ids) == 2 for ids in by_recipe.values())
    longer = plan_of(tree, "+sweep=smoke", "task=regression", "task.sizes.tiny.steps=300")
    assert not {t.trial_id for t in longer.trials} & {t.trial_id for t in first.trials}


def test_overrides_narrow_the_sweep(tree):
    plan = plan_of(tree, "+sweep=full", "task=regression", "quant.block=16", "seeds=[0]")
    assert {t.spec["task"] for t in plan.trials} == {"regression"}
    assert {t.spec["seed"] for t in plan.trials} == {0}
    assert plan.axes["block"] == ["16"]
    assert {t.recipe.axes["block"] for t in plan.trials if t.recipe.axes} == {"16"}


def test_baseline_and_presets_come_first(tree):
    plan = plan_of(tree, "+sweep=smoke")
    assert [r.label for r in plan.recipes[:2]] == ["bf16", "nvfp4"]
    assert plan.recipes[0].is_baseline and not any(r.is_baseline for r in plan.recipes[1:])
    assert plan.recipes[0].axes is None


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["+sweep=smoke", "axes.scale=[ue9m9]"], "axes.scale: unknown scale 'ue9m9'; valid: ['e8m0', 'fp32', 'ue4m3', 'ue5m3']"),
        (["+sweep=smoke", "quant.block=17"], "quant.block: unknown block 17; valid: ['128', '16', '32', '64', '8']"),
        (["+sweep=smoke", "+axes.sclae=[e8m0]"], "axes: unknown key(s) ['sclae']; valid: ['block', 'elem'"),
        (["+sweep=smoke", "tasks=[regresion]"], "tasks: unknown task 'regresion'; valid: ["),
        (["+sweep=smok"], "Could not find 'sweep/smok'"),
        (["+sweep=typo"], "sweep 'typo': unknown key(s) ['sedes']; valid: ['axes', 'baseline'"),
        (["+sweep=smoke", "presets=[nvfp5]"], "presets:"),
        (["+sweep=smoke", "size=huge"], "conf/task/regression.yaml: unknown size 'huge'; valid: ['paper', 'small', 'tiny']"),
        (["+sweep=smoke", "seeds=[-1]"], "seeds: expected an integer >= 0, got -1"),
        (["+sweep=smoke", "device=tpu"], "device: unknown device 'tpu'; valid: ['auto', 'cpu', 'cuda']"),
        (["+sweep=smoke", "+constraints=[{reason: x, scale: [e9m0]}]"], "constraints[0].scale: unknown scale 'e9m0'"),
        (["tasks=[regression]"], "seeds: the sweep names no seed"),
        ([], "no sweep chosen: add +sweep=NAME; valid: ['adaptive', 'full', 'gpu_smoke', 'mini', 'smoke', 'typo']"),
    ],
)
def test_bad_input_is_named(tree, overrides, message):
    with pytest.raises(SweepError) as error:
        plan_of(tree, *overrides)
    assert message in str(error.value)


def test_an_invalid_combination_asks_for_a_constraint(tree):
    # The NVFP4 scale rule is defined for narrow scale formats only.
    with pytest.raises(SweepError, match="leave such combinations out with a constraint"):
        plan_of(tree, "+sweep=smoke", "quant.scale_rule=nvfp4", "quant.scale=e8m0")
