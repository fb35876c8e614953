"""The axis schema: declarations, key spellings, resolution and what the store records."""

from __future__ import annotations

import pytest

from fp4sweep.quant.axes import AXES, MIXED, canonical, listing, parse_key, recipe_fields, recorded
from fp4sweep.quant.layer_policy import parse_policy
from fp4sweep.quant.operands import GEMM_OPERANDS, OPERANDS, SCOPES
from fp4sweep.quant.recipe import Recipe


def test_declarations_are_consistent():
    for axis in AXES.values():
        assert axis.default in axis.options, axis.name
        assert axis.meaning and set(axis.scopes) <= set(SCOPES)
        # An axis that refuses some scopes says why.
        assert axis.scope_rule or axis.scopes == tuple(SCOPES), axis.name
    for policy in AXES["high_precision"].options:
        parse_policy(policy)
    # Every axis at its default is MXFP4, the OCP recipe.
    assert Recipe.from_axes() == Recipe.preset("mxfp4")


def test_scopes_name_the_operands():
    assert SCOPES["all"] == OPERANDS
    assert SCOPES["bwd"] == ("dgrad_dy", "dgrad_w", "wgrad_dy", "wgrad_x")
    assert SCOPES["x"] == ("fwd_x", "wgrad_x") and SCOPES["w"] == ("fwd_w", "dgrad_w")
    assert SCOPES["dy"] == ("dgrad_dy", "wgrad_dy")
    assert all(SCOPES[gemm] == operands for gemm, operands in GEMM_OPERANDS.items())


@pytest.mark.parametrize("text", ["rounding@dy", "rounding__dy"])
def test_both_spellings_are_one_key(text):
    key = parse_key(text)
    assert (key.name, key.axis.name, key.operands) == ("rounding@dy", "rounding", ("dgrad_dy", "wgrad_dy"))


def test_options_by_name_or_value_and_a_key_set_twice():
    assert canonical({"block": 16, "tensor_scale": True, "block_2d@w": "true"}) == {
        "block": "16", "tensor_scale": "fp32", "block_2d@w": "true"
    }
    with pytest.raises(ValueError, match="unknown quantize 1"):
        canonical({"quantize": 1})  # an int is not a flag
    with pytest.raises(ValueError, match="rounding@dy is set twice, to 'sr' and 'rne'"):
        canonical({"rounding@dy": "sr", "rounding__dy": "rne"})


def test_recorded_options_fill_keys_the_values_do_not_name():
    values = {"rounding@dy": "sr", "transform@wgrad": "rhadamard16"}
    assert recorded(values, ["rounding@dy", "rounding@bwd", "rounding@dgrad_dy", "transform", "estimator"]) == {
        "rounding@dy": "sr", "rounding@bwd": MIXED, "rounding@dgrad_dy": "sr", "transform": MIXED,
        "estimator": "ste",
    }


def test_recipe_fields_leave_unquantized_operands_none():
    fields = recipe_fields({"quantize@fwd": False, "elem@bwd": "e4m3"})
    assert fields["fwd_x"] is None and fields["fwd_w"] is None
    assert fields["wgrad_x"]["elem"] == "e4m3" and fields["estimator"] == "ste"


def test_the_listing_names_every_axis_and_its_options():
    text = "\n".join(listing())
    for axis in AXES.values():
        assert f"{axis.name}: {axis.meaning}" in text
        assert all(option in text for option in axis.options)


def test_technique_axes_set_their_fields():
    recipe = Recipe.from_axes({
        "scale": "ue4m3", "block": 16, "scale_rule": "nvfp4", "tensor_scale": "fp32",
        "tensor_target": 256, "scale_select@fwd": "4over6_mae", "rounding@dy": "sr",
        "prescale@dy": "16/17", "scale_rounding@dy": "sr", "transform@wgrad": "rhadamard16",
        "sign_policy": "per_step", "amax": "max16", "amax_margin": 1,
    })
    assert recipe.fwd_x.scale_select == "4over6_mae" and recipe.dgrad_w.scale_select == "max"
    assert recipe.wgrad_dy.prescale == "16/17" and recipe.wgrad_x.prescale == "1"
    assert recipe.dgrad_dy.scale_rounding == "sr" and recipe.fwd_w.scale_rounding == "nearest"
    assert {spec.tensor_target_scale for spec in recipe.operands().values()} == {256}
    assert (recipe.amax_policy, recipe.amax_window, recipe.amax_margin) == ("max", 16, 1)
    assert recipe.sign_policy == "per_step"


def test_an_axis_that_sets_several_fields():
    amax = AXES["amax"]
    assert amax.fields("hold50") == {"amax_policy": "hold", "amax_window": 50}
    assert amax.fields("most_recent") == {"amax_policy": "most_recent", "amax_window": 1}
    assert amax.option(("hold", 50)) == "hold50"  # by value, as for any axis
    assert canonical({"amax": "hold50", "amax_margin": 2}) == {"amax": "hold50", "amax_margin": "2"}


def test_the_technique_axes_at_their_defaults_change_no_recipe():
    names = ("tensor_target", "prescale", "scale_select", "scale_rounding", "amax", "amax_margin",
             "sign_policy")
    defaults = {name: AXES[name].default for name in names}
    assert Recipe.from_axes(defaults) == Recipe.preset("mxfp4")
    assert Recipe.from_axes({**defaults, "tensor_scale": "fp32"}).to_dict() == \
        Recipe.from_axes(tensor_scale="fp32").to_dict()


@pytest.mark.parametrize("values, message", [
    ({"amax": "hold50"}, "amax_policy='hold' acts on tensor scaling, but no operand has tensor_scale"),
    ({"amax_margin": 1}, "amax_margin needs a delayed amax_policy"),
    ({"sign_policy": "per_step"}, "no operand has an 'rhadamardK' transform"),
    ({"prescale": "3/4"}, "prescale='3/4' acts before stochastic rounding"),
    ({"tensor_target": 448}, "tensor_target_scale needs tensor_scale=True"),
    ({"scale_select": "4over6_mse"}, "scale_select='4over6_mse' needs scale_rule='nvfp4'"),
    ({"scale_rounding": "sr"}, "scale_rounding='sr' replaces a nearest scale rounding"),
    ({"amax": "hold7"}, r"unknown amax 'hold7'; valid: \['current', 'hold10'"),
    ({"amax@x": "hold50"}, "amax cannot be placed on 'x'"),
])
def test_combinations_the_core_cannot_build_are_errors(values, message):
    with pytest.raises(ValueError, match=message):
        Recipe.from_axes(values)
