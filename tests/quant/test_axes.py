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
