"""Sweep expansion: merged configs equal Hydra's, ids, counts, narrowing and clear errors."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from fp4sweep.quant import Recipe
from fp4sweep.quant.recipe import PRESETS
from fp4sweep.sweep.config import ConfigTree, SweepError, load_settings
from fp4sweep.results.ids import trial_id
from fp4sweep.sweep.plan import expand

TEST_CONF = Path(__file__).parent / "conf"


@pytest.fixture(scope="module")
def tree() -> ConfigTree:
    return ConfigTree([TEST_CONF])


def plan_of(tree: ConfigTree, *overrides: str):
    return expand(tree, load_settings(tree, list(overrides)))


def test_smoke_crosses_its_axes_and_records_the_preset_with_axes(tree):
    plan = plan_of(tree, "+sweep=smoke")
    crossed = [r for r in plan.recipes if r.label not in ("bf16", "nvfp4")]
    assert len(crossed) == 2 * 2 * 2 * 2 * 2  # scale x block x tensor_scale x transform x rounding@bwd
    for recipe in crossed:
        assert recipe.recipe == Recipe.from_axes({k: v for k, v in recipe.axes.items()}).to_dict()
    # nvfp4 places its techniques on scopes: it runs with those keys, none of them unset.
    nvfp4 = next(r for r in plan.recipes if r.label == "nvfp4")
    assert nvfp4.axes["block_2d@w"] == "true" and nvfp4.axes["transform@wgrad"] == "rhadamard16"
    assert nvfp4.axes["rounding@dy"] == "sr" and nvfp4.axes["scale"] == "ue4m3"
    assert nvfp4.axes["rounding@bwd"] == "mixed"  # sr on dy, nearest on the backward w and x
    assert all(set(r.axes) == set(nvfp4.axes) for r in crossed)
    # Crossed recipes record the option under the preset's keys too.
    assert {r.axes["transform@wgrad"] for r in crossed} == {"none", "rhadamard16"}


def test_random_bits_of_stochastic_rounding_are_an_axis(tree):
    plan = plan_of(tree, "+sweep=smoke", "+axes.sr_bits=[8,24]", "axes.rounding@bwd=[sr]")
    crossed = [t for t in plan.trials if t.recipe.axes is not None and t.recipe.label != "nvfp4"]
    by_bits = {t.recipe.axes["sr_bits"]: Recipe.from_dict(t.spec["recipe"]) for t in crossed}
    assert by_bits["8"].dgrad_dy.sr_bits == 8 and by_bits["24"].dgrad_dy.sr_bits == 24
    # Choosing 24 gives the same trials (ids included) as leaving the axis uncrossed.
    default = plan_of(tree, "+sweep=smoke", "axes.rounding@bwd=[sr]")
    assert {t.trial_id for t in default.trials} <= {t.trial_id for t in plan.trials}


@pytest.mark.slow
def test_full_sweep_size(tree):
    plan = plan_of(tree, "+sweep=full")
    crossed = math.prod(len(choices) for choices in plan.axes.values())
    assert plan.excluded == {
        "a Hadamard transform longer than the block spreads an outlier over blocks scaled apart": 1536,
        "with fp32 scales floor repeats e8m0 and ceil has nothing to round; nearest is the ideal": 1280,
        "stochastic rounding of the backward x and w but not of dy is no recipe anyone runs": 1600,
    }
    # The baseline and four presets, of which mxfp4 is also a combination of axes (paper_best
    # rotates the weight gradient by 32, which `transform@wgrad` does not offer).
    labels = ["bf16", "nvfp4", "nvidia_nvfp4", "mxfp4", "paper_best"]
    assert [r.label for r in plan.recipes[:5]] == labels
    recipes = crossed - sum(plan.excluded.values()) + 4
    assert len(plan.recipes) == recipes == 4804
    assert len(plan.trials) == recipes * 4 * 3 == 57648  # 4 tasks, 3 seeds
    assert len({t.trial_id for t in plan.trials}) == len(plan.trials)
    # Ids built from each task's and recipe's JSON are the ids of the whole specs.
    assert all(t.trial_id == trial_id(t.spec) for t in plan.trials[::997])
    # Every recipe but the baseline records an option under every key, presets included.
    keys = set(plan.recipes[1].axes)
    assert {"transform@wgrad", "rounding@dy", "block_2d@w", "high_precision"} <= keys
    assert all(set(r.axes) == keys and None not in r.axes.values() for r in plan.recipes[1:])
    assert plan.recipes[2].axes["high_precision"] == "last1"
    # A preset's own scoped keys become columns of the plan, recorded for every recipe.
    tseng = plan_of(tree, "+sweep=full", "presets=[tseng_mxfp4]", "task=gpt")
    assert tseng.recipes[1].axes["quantize@fwd"] == "false"
    assert {r.axes["quantize@fwd"] for r in tseng.recipes[2:]} == {"true"}


def test_scoped_axes_in_a_sweep_file_and_on_the_command_line_agree(tree):
    from_file = plan_of(tree, "+sweep=scoped")
    assert list(from_file.axes)[-3:] == ["transform@wgrad", "rounding@dy", "block_2d@w"]
    for spelling in ("axes.transform@wgrad=[none,rhadamard16]", "axes.transform__wgrad=[none,rhadamard16]"):
        cli = plan_of(tree, "+sweep=scoped", "~axes.transform@wgrad", spelling)
        assert sorted(t.trial_id for t in cli.trials) == sorted(t.trial_id for t in from_file.trials)
    # A pin narrows a scoped key in either spelling.
    for pin in ("quant.rounding@dy=sr", "quant.rounding__dy=sr", "+quant.rounding__dy=sr"):
        assert plan_of(tree, "+sweep=scoped", pin).axes["rounding@dy"] == ["sr"]
    # TE's recipe is one combination of the file's axes: it runs once, named, with its axes.
    te = [r for r in from_file.recipes if r.label == "te_nvfp4"]
    assert len(te) == 1 and len(from_file.recipes) == 1 + 8
    assert {k: te[0].axes[k] for k in ("transform@wgrad", "rounding@dy", "block_2d@w")} == {
        "transform@wgrad": "rhadamard16", "rounding@dy": "sr", "block_2d@w": "true"
    }
    assert te[0].recipe == Recipe.preset("te_nvfp4").to_dict()
    other = next(r for r in from_file.recipes if r.axes and r.axes["transform@wgrad"] == "rhadamard16"
                 and r.axes["rounding@dy"] == "sr" and r.axes["block_2d@w"] == "false")
    assert other.label == "scale=ue4m3 block=16 scale_rule=nvfp4 tensor_scale=fp32 transform@wgrad=rhadamard16 rounding@dy=sr"


def test_a_forward_gemm_left_in_bf16(tree):
    plan = plan_of(tree, "+sweep=scoped", "+axes.quantize@fwd=[true,false]", "quant.block_2d@w=false")
    recipes = [Recipe.from_dict(r.recipe) for r in plan.recipes if r.axes and r.axes["quantize@fwd"] == "false"]
    assert recipes and all(r.fwd_x is None and r.fwd_w is None and r.dgrad_dy is not None for r in recipes)


def test_ids_are_content_hashes(tree):
    first = plan_of(tree, "+sweep=smoke")
    again = plan_of(tree, "+sweep=smoke")
    assert [t.trial_id for t in first.trials] == [t.trial_id for t in again.trials]
    by_recipe: dict[str, set[str]] = {}
    for trial in first.trials:
        by_recipe.setdefault(trial.recipe.recipe_id, set()).add(trial.trial_id)
    # A recipe keeps its id across seeds; each seed is its own trial.
    assert len(by_recipe) == len(first.recipes) == 34
    assert all(len(ids) == 3 for ids in by_recipe.values())
    longer = plan_of(tree, "+sweep=smoke", "task=regression", "task.sizes.tiny.steps=300")
    assert not {t.trial_id for t in longer.trials} & {t.trial_id for t in first.trials}


def test_overrides_narrow_the_sweep(tree):
    plan = plan_of(tree, "+sweep=full", "task=regression", "quant.block=16", "seeds=[0]")
    assert {t.spec["task"] for t in plan.trials} == {"regression"}
    assert {t.spec["seed"] for t in plan.trials} == {0}
    assert plan.axes["block"] == ["16"]
    crossed = [t for t in plan.trials if t.recipe.label not in PRESETS]
    assert {t.recipe.axes["block"] for t in crossed} == {"16"}


def test_baseline_and_presets_come_first(tree):
    plan = plan_of(tree, "+sweep=smoke")
    assert [r.label for r in plan.recipes[:2]] == ["bf16", "nvfp4"]
    assert plan.recipes[0].is_baseline and not any(r.is_baseline for r in plan.recipes[1:])
    assert plan.recipes[0].axes is None


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["+sweep=smoke", "axes.scale=[ue9m9]"], "axes.scale: unknown scale 'ue9m9'; valid: ['e8m0', 'ue4m3', 'ue5m3', 'fp32']"),
        (["+sweep=smoke", "quant.block=17"], "quant.block: unknown block 17; valid: ['8', '16', '32', '64', '128']"),
        (["+sweep=smoke", "+axes.sclae=[e8m0]"], "axes.sclae: unknown axis 'sclae'; valid: ['quantize', 'elem'"),
        (["+sweep=smoke", "quant.scalee=e8m0"], "quant.scalee: unknown axis 'scalee'; valid: ['quantize', 'elem', 'scale'"),
        (["+sweep=smoke", "axes.transform@x=[rhadamard16]"], "transform cannot be placed on 'x': both operands of a GEMM must share one rotation"),
        (["+sweep=smoke", "axes.transform__fwd_w=[rhadamard16]"], "transform cannot be placed on 'fwd_w'"),
        (["+sweep=smoke", "axes.rounding@foo=[sr]"], "axes.rounding@foo: unknown scope 'foo' of rounding; valid: none (AXIS alone), bwd, fwd, dgrad, wgrad, x, w, dy, fwd_x"),
        (["+sweep=smoke", "axes.estimator@fwd=[ste]"], "estimator cannot be placed on 'fwd'"),
        (["+sweep=smoke", "axes.high_precision=[last9x]"], "unknown high_precision 'last9x'"),
        (["+sweep=smoke", "axes.rounding@x=[sr]", "axes.rounding@fwd=[rne]"], "rounding@x=sr and rounding@fwd=rne both set rounding on fwd_x"),
        (["+sweep=smoke", "axes.scale=[]"], "axes.scale: an empty list leaves the axis no option"),
        (["+sweep=smoke", "tasks=[regresion]"], "tasks: unknown task 'regresion'; valid: ["),
        (["+sweep=smok"], "sweep: unknown sweep 'smok'; valid: ['adaptive', 'full', 'gpu_smoke', 'ladder', 'mini', 'notutf8', 'optimizers', 'paper', 'paper_cpu', 'placements', 'scoped'"),
        (["+sweep=smoke", "task=regresion"], "task: unknown task 'regresion'; valid: ['classification', 'diffusion'"),
        (["+sweep=typo"], "sweep 'typo': unknown key(s) ['sedes']; valid: ['axes', 'baseline'"),
        (["+sweep=smoke", "presets=[nvfp5]"], "presets: unknown Recipe preset 'nvfp5'"),
        (["+sweep=smoke", "presets=[nvfp4,te_nvfp4]"], "presets: 'te_nvfp4' is the same recipe as 'nvfp4'; name one of them"),
        (["+sweep=smoke", "size=huge"], "conf/task/regression.yaml: unknown size 'huge'; valid: ['paper', 'small', 'tiny']"),
        (["+sweep=smoke", "seeds=[-1]"], "seeds: expected an integer >= 0 and < 9223372036854775808, got -1"),
        (["+sweep=smoke", f"seeds=[{2**63}]"], f"seeds: expected an integer >= 0 and < 9223372036854775808, got {2**63}"),
        (["+sweep=smoke", "seeds=[0,1,0]"], "seeds: [0] listed more than once"),
        (["+sweep=smoke", "flush_seconds=nan"], "flush_seconds: expected a finite number of seconds >= 0, got nan"),
        (["+sweep=smoke", "flush_seconds=inf"], "flush_seconds: expected a finite number of seconds >= 0, got inf"),
        (["+sweep=smoke", "task=regression", "task.resources.cpu.num_cpus=-1"], "resources.cpu.num_cpus: expected a number >= 0, got -1"),
        (["+sweep=smoke", "device=tpu"], "device: unknown device 'tpu'; valid: ['auto', 'cpu', 'cuda']"),
        (["+sweep=smoke", "+constraints=[{reason: x, scale: [e9m0]}]"], "constraints[0].scale: unknown scale 'e9m0'"),
        (["+sweep=notutf8"], "notutf8.yaml: not UTF-8 text"),
        (["tasks=[regression]"], "seeds: the sweep names no seed"),
        ([], "no sweep chosen: add +sweep=NAME; valid: ['adaptive', 'full', 'gpu_smoke', 'ladder', 'mini', 'notutf8', 'optimizers', 'paper', 'paper_cpu', 'placements', 'scoped'"),
    ],
)
def test_bad_input_is_named(tree, overrides, message):
    with pytest.raises(SweepError) as error:
        plan_of(tree, *overrides)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_an_invalid_combination_asks_for_a_constraint(tree):
    # The NVFP4 scale rule is defined for narrow scale formats only.
    with pytest.raises(SweepError, match="leave such combinations out with a constraint"):
        plan_of(tree, "+sweep=smoke", "quant.scale_rule=nvfp4", "quant.scale=e8m0")


def test_the_paper_sweeps_cross_what_the_paper_compares(tree):
    """paper_cpu: the full crossing on the tiny regression proxy; paper: the same axes at the
    paper's sizes on four tasks, spline and power only where tensor scaling and the transform
    are on."""
    crossed = {"scale": ["e8m0", "ue5m3", "ue4m3"], "tensor_scale": ["none", "fp32"],
               "transform": ["none", "rhadamard32"], "rounding@bwd": ["rne", "sr"],
               "estimator": ["ste", "spline", "power"]}
    cpu = plan_of(tree, "+sweep=paper_cpu")
    assert {k: cpu.axes[k] for k in crossed} == crossed
    assert {t.spec["size"] for t in cpu.trials} == {"tiny"} and len(cpu.trials) == (72 + 3) * 3
    gpu = plan_of(tree, "+sweep=paper")
    assert {t.spec["size"] for t in gpu.trials} == {"paper"}
    assert {t.spec["task"] for t in gpu.trials} == {"regression", "classification", "diffusion", "gpt"}
    others = [r.axes for r in gpu.recipes if r.axes and r.axes["estimator"] != "ste"]
    assert len(others) == 2 * 3 * 2 and all(
        a["tensor_scale"] == "fp32" and a["transform"] == "rhadamard32" for a in others)
    assert len(gpu.trials) == (36 + 3) * 3 * 4
