"""Hadamard sign policy: signs fixed for the run, or redrawn every step from the layer's seed
and the step, shared by both operands of each GEMM."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from fp4sweep.quant import QuantLinear, QuantSpec, Recipe, fake_quantize
from fp4sweep.quant.layers import derive_seed, operand_seeds, step_recipe

PAPER_BEST = Recipe.preset("paper_best")  # rhadamard32 on every operand
PER_STEP = dataclasses.replace(PAPER_BEST, sign_policy="per_step")


def test_fixed_signs_keep_the_recipe():
    assert step_recipe(PAPER_BEST, 7, 3) is PAPER_BEST


def test_per_step_signs_are_shared_within_a_gemm_and_redrawn_every_step():
    first, second = step_recipe(PER_STEP, 7, 0), step_recipe(PER_STEP, 7, 1)
    for recipe, step in ((first, 0), (second, 1)):
        for g, (a, b) in enumerate([("fwd_x", "fwd_w"), ("dgrad_dy", "dgrad_w"), ("wgrad_dy", "wgrad_x")]):
            seed = derive_seed(7, step, 6 + g)
            assert getattr(recipe, a).transform_seed == getattr(recipe, b).transform_seed == seed
    assert first.fwd_x.transform_seed != first.dgrad_dy.transform_seed  # GEMMs differ
    assert first.fwd_x.transform_seed != second.fwd_x.transform_seed  # steps differ
    assert step_recipe(PER_STEP, 7, 1) == second  # a function of seed and step
    # only the signs' seed changes
    assert dataclasses.replace(first.fwd_x, transform_seed=0) == dataclasses.replace(PAPER_BEST.fwd_x, transform_seed=0)


def test_a_layer_quantizes_each_step_with_that_steps_signs():
    torch.manual_seed(0)
    layer = QuantLinear(64, 32, bias=False, recipe=PER_STEP, seed=3)
    x = torch.randn(8, 64)
    outputs = []
    for step in range(2):
        recipe = step_recipe(PER_STEP, layer.layer_seed, step)
        w = layer.weight.detach()
        seeds = operand_seeds(layer.layer_seed, step)
        expected = F.linear(fake_quantize(x, recipe.fwd_x, 1, seeds["fwd_x"]),
                            fake_quantize(w, recipe.fwd_w, 1, seeds["fwd_w"]))
        outputs.append(layer(x).detach())
        assert torch.equal(outputs[-1], expected)
    assert not torch.equal(outputs[0], outputs[1])


def test_per_step_needs_random_signs():
    assert PER_STEP.to_dict()["sign_policy"] == "per_step"
    assert "sign_policy" not in PAPER_BEST.to_dict()
    with pytest.raises(ValueError, match="no operand has an 'rhadamardK'"):
        dataclasses.replace(Recipe.preset("nvfp4"), wgrad_dy=None, wgrad_x=None, sign_policy="per_step")
    with pytest.raises(ValueError, match=r"sign_policy='always'.*'per_step'"):
        dataclasses.replace(PAPER_BEST, sign_policy="always")
    spec = QuantSpec(transform="hadamard32")
    with pytest.raises(ValueError, match="no operand"):
        Recipe(fwd_x=spec, fwd_w=spec, sign_policy="per_step")
