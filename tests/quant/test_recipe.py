import dataclasses
import json

import pytest

from fp4sweep.quant import QuantSpec, Recipe
from fp4sweep.quant.recipe import BACKWARD_OPERANDS, FORWARD_OPERANDS, OPERANDS, preset_axes


def test_bf16_quantizes_nothing():
    recipe = Recipe.preset("bf16")
    assert all(spec is None for spec in recipe.operands().values())
    assert not recipe.quantizes_anything


def test_mxfp4_is_ocp_mxfp4_on_every_operand():
    recipe = Recipe.preset("mxfp4")
    assert set(recipe.operands().values()) == {QuantSpec.preset("mxfp4")}
    assert (recipe.estimator, recipe.scale_grad) == ("ste", "stop")


def test_nvfp4_is_nvidias_training_recipe():
    recipe = Recipe.preset("nvfp4")
    nv = QuantSpec.preset("nvfp4")
    for name, spec in recipe.operands().items():
        assert (spec.elem, spec.scale, spec.block, spec.tensor_scale) == ("e2m1", "ue4m3", 16, True)
        assert spec.block_2d == name.endswith("_w"), name
        assert spec.rounding == ("sr" if name.endswith("_dy") else "rne"), name
        assert spec.transform == ("rhadamard16" if name.startswith("wgrad") else "none"), name
    assert recipe.fwd_x == nv


def test_paper_best_combines_hadamard_tensor_scaling_backward_sr_and_ue5m3():
    recipe = Recipe.preset("paper_best")
    for name, spec in recipe.operands().items():
        assert spec.scale == "ue5m3" and spec.tensor_scale and spec.hadamard_size
        assert spec.rounding == ("sr" if name in BACKWARD_OPERANDS else "rne"), name
    assert recipe.estimator == "ste"


def _spec(**fields):
    return QuantSpec(**fields)


_NV = dict(elem="e2m1", scale="ue4m3", block=16, scale_rule="nvfp4", tensor_scale=True)
# TransformerEngine's NVFP4 recipe, operand by operand.
TE_NVFP4 = {
    "fwd_x": _spec(**_NV),
    "fwd_w": _spec(**_NV, block_2d=True),
    "dgrad_dy": _spec(**_NV, rounding="sr"),
    "dgrad_w": _spec(**_NV, block_2d=True),
    "wgrad_dy": _spec(**_NV, rounding="sr", transform="rhadamard16"),
    "wgrad_x": _spec(**_NV, transform="rhadamard16"),
}
_TSENG = dict(elem="e2m1", scale="e8m0", block=32, scale_rule="floor", rounding="sr", transform="rhadamard64")


@pytest.mark.parametrize(
    ("name", "operands", "policy"),
    [
        ("te_nvfp4", TE_NVFP4, "none"),
        ("nvfp4", TE_NVFP4, "none"),
        ("nvidia_nvfp4", TE_NVFP4, "last1"),
        ("tseng_mxfp4", {"fwd_x": None, "fwd_w": None, **{op: _spec(**_TSENG) for op in BACKWARD_OPERANDS}}, "none"),
    ],
)
def test_published_presets_pin_every_operand(name, operands, policy):
    recipe = Recipe.preset(name)
    assert recipe.operands() == operands
    assert (recipe.estimator, recipe.scale_grad, recipe.high_precision) == ("ste", "stop", policy)


def test_te_nvfp4_built_from_scoped_axes_equals_the_preset():
    scoped = Recipe.from_axes({
        "scale": "ue4m3", "block": 16, "scale_rule": "nvfp4", "tensor_scale": "fp32",
        "transform@wgrad": "rhadamard16", "rounding@dy": "sr", "block_2d@w": True,
    })
    assert scoped.operands() == Recipe.preset("te_nvfp4").operands() == TE_NVFP4
    assert scoped == Recipe.preset("te_nvfp4")


def test_presets_keep_their_recipe_ids():
    # Stored results are found again by these ids: building presets from axes must not move them.
    from fp4sweep.results.ids import recipe_id

    ids = {name: recipe_id(Recipe.preset(name).to_dict()) for name in ("bf16", "mxfp4", "nvfp4", "paper_best")}
    assert ids == {"bf16": "330229459089bd96", "mxfp4": "9978816b5c66d940",
                   "nvfp4": "6fc214da51f4a9ac", "paper_best": "6506556d1c39ebdb"}
    assert "high_precision" not in Recipe.preset("nvfp4").to_dict()
    nvidia = Recipe.preset("nvidia_nvfp4")
    assert Recipe.from_dict(nvidia.to_dict()) == nvidia and nvidia.to_dict()["high_precision"] == "last1"


def test_the_narrowest_scope_decides():
    recipe = Recipe.from_axes({"rounding": "sr", "rounding@x": "rne", "rounding@wgrad_x": "sr"})
    assert [s.rounding for s in recipe.operands().values()] == ["rne", "sr", "sr", "sr", "sr", "sr"]
    # Spellings: AXIS@SCOPE in a mapping, AXIS__SCOPE as a keyword; options by name or by value.
    assert Recipe.from_axes({"elem@bwd": "e4m3"}) == Recipe.from_axes(elem__bwd="e4m3")
    assert Recipe.from_axes(tensor_scale=True) == Recipe.from_axes(tensor_scale="fp32")
    fp8_backward = Recipe.from_axes(elem__bwd="e4m3")
    assert [s.elem for s in fp8_backward.operands().values()] == ["e2m1", "e2m1"] + ["e4m3"] * 4


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"transform@x": "rhadamard16"}, "transform cannot be placed on 'x': both operands of a GEMM must share one rotation"),
        ({"transform@wgrad_x": "rhadamard16"}, "transform cannot be placed on 'wgrad_x'"),
        ({"rounding@x": "sr", "rounding@fwd": "rne"}, "rounding@x=sr and rounding@fwd=rne both set rounding on fwd_x"),
        ({"estimator@fwd": "spline"}, "estimator cannot be placed on 'fwd'"),
        ({"high_precision@w": "last1"}, "high_precision cannot be placed on 'w': it chooses layers"),
        ({"rounding@up": "sr"}, "unknown scope 'up' of rounding"),
        ({"rounding@all": "sr"}, "write 'rounding' for every operand"),
        ({"quantise": "false"}, "unknown axis 'quantise'; valid: ['quantize', 'elem'"),
        ({"block": 12}, "block: unknown block 12; valid: ['8', '16', '32', '64', '128']"),
        ({"quantize@fwd": "false", "estimator": "spline"}, "act on the forward quantizers, but fwd_x and fwd_w are both None"),
    ],
)
def test_placements_the_recipe_cannot_honour_are_refused(values, message):
    with pytest.raises(ValueError) as error:
        Recipe.from_axes(values)
    assert message in str(error.value)


def test_unknown_preset_names_the_choices():
    with pytest.raises(ValueError, match=r"'fp8'.*bf16.*mxfp4.*nvfp4.*paper_best"):
        Recipe.preset("fp8")


def test_from_axes_gives_forward_and_backward_rounding_and_2d_weight_blocks():
    recipe = Recipe.from_axes(
        scale="ue5m3", block=16, scale_rule="ceil", rounding__fwd="rne", rounding__bwd="sr",
        transform="hadamard32", tensor_scale=True, estimator="power", scale_grad="amax",
        block_2d__w=True, sr_bits=8,
    )
    for name, spec in recipe.operands().items():
        assert spec.rounding == ("rne" if name in FORWARD_OPERANDS else "sr")
        assert spec.block_2d == (name in ("fwd_w", "dgrad_w"))
        assert (spec.scale, spec.block, spec.scale_rule, spec.transform, spec.sr_bits) == (
            "ue5m3", 16, "ceil", "hadamard32", 8,
        )
    assert (recipe.estimator, recipe.scale_grad) == ("power", "amax")


def test_optimizer_and_loss_scale_are_recipe_axes_left_out_of_the_dict_at_their_defaults():
    from fp4sweep.results.ids import recipe_id

    default = Recipe.preset("nvfp4")
    assert (default.optimizer, default.loss_scale) == ("adamw", "none")
    assert Recipe.from_axes({**preset_axes("nvfp4"), "optimizer": "adamw", "loss_scale": "none"}) == default
    assert recipe_id(default.to_dict()) == "6fc214da51f4a9ac"
    trained = Recipe.from_axes({**preset_axes("nvfp4"), "optimizer": "stable_spam", "loss_scale": "dynamic"})
    values = trained.to_dict()
    assert (values["optimizer"], values["loss_scale"]) == ("stable_spam", "dynamic")
    assert Recipe.from_dict(json.loads(json.dumps(values))) == trained
    assert recipe_id(values) != recipe_id(default.to_dict())
    # bf16 with Stable-SPAM: the optimiser's own baseline, no quantizer needed.
    assert Recipe.from_axes(quantize="false", optimizer="stable_spam").optimizer == "stable_spam"
    with pytest.raises(ValueError, match=r"Recipe.optimizer='sgd' is not valid; valid: \['adamw', 'stable_spam'\]"):
        Recipe(optimizer="sgd")
    with pytest.raises(ValueError, match=r"Recipe.loss_scale=1024 is not valid; valid: \['none', 'dynamic'\]"):
        Recipe(loss_scale=1024)
    with pytest.raises(ValueError, match=r"optimizer@fwd.*cannot be placed"):
        Recipe.from_axes({"optimizer@fwd": "stable_spam"})


def test_from_axes_defaults_are_mxfp4():
    assert Recipe.from_axes() == Recipe.preset("mxfp4")


@pytest.mark.parametrize("name", ["bf16", "mxfp4", "nvfp4", "paper_best"])
def test_dict_round_trip_through_json(name):
    recipe = Recipe.preset(name)
    assert Recipe.from_dict(json.loads(json.dumps(recipe.to_dict()))) == recipe


def test_from_dict_rejects_unknown_keys_and_bad_operands():
    with pytest.raises(ValueError, match=r"unknown Recipe field.*'rounding'.*valid"):
        Recipe.from_dict({"rounding": "sr"})
    with pytest.raises(ValueError, match=r"QuantSpec field.*'blk'"):
        Recipe.from_dict({"fwd_x": {"blk": 32}})
    with pytest.raises(ValueError, match=r"Recipe.fwd_x must be a QuantSpec or None"):
        Recipe(fwd_x="mxfp4")


def test_estimator_and_scale_grad_choices():
    mx = QuantSpec.preset("mxfp4")
    with pytest.raises(ValueError, match=r"estimator='lsq'.*'ste', 'clipped_ste', 'spline', 'power'"):
        Recipe(fwd_x=mx, fwd_w=mx, estimator="lsq")
    with pytest.raises(ValueError, match=r"scale_grad='learned'.*'stop', 'amax'"):
        Recipe(fwd_x=mx, fwd_w=mx, scale_grad="learned")
    with pytest.raises(ValueError, match="fwd_x and fwd_w are both None"):
        Recipe(estimator="spline")


@pytest.mark.parametrize("gemm", [("fwd_x", "fwd_w"), ("dgrad_dy", "dgrad_w"), ("wgrad_dy", "wgrad_x")])
def test_the_two_operands_of_a_gemm_must_share_a_transform(gemm):
    recipe = Recipe.preset("mxfp4")
    rotated = dataclasses.replace(recipe.fwd_x, transform="hadamard32")
    with pytest.raises(ValueError, match=f"{gemm[0]} and {gemm[1]} must share one transform"):
        dataclasses.replace(recipe, **{gemm[0]: rotated})
    # Random signs from different seeds are different rotations too.
    signs = {name: dataclasses.replace(rotated, transform="rhadamard32") for name in OPERANDS}
    signs[gemm[1]] = dataclasses.replace(signs[gemm[1]], transform_seed=1)
    with pytest.raises(ValueError, match="must share one transform"):
        Recipe(**signs)
    # An unquantized operand is in the original basis.
    with pytest.raises(ValueError, match="must share one transform"):
        dataclasses.replace(recipe, **{gemm[0]: rotated, gemm[1]: None})


def test_axis_and_spec_errors_reach_the_caller():
    with pytest.raises(ValueError, match=r"elem: unknown elem 'fp4'; valid: \['e2m1'"):
        Recipe.from_axes(elem="fp4")
    with pytest.raises(ValueError, match=r"QuantSpec.scale_rule='nvfp4' needs a scale format"):
        Recipe.from_axes(scale_rule="nvfp4")


def test_the_ue5m3_authors_recipe():
    recipe = Recipe.preset("ue5m3_2026")
    ue5m3 = dict(elem="e2m1", scale="ue5m3", block=16, scale_rule="nvfp4", tensor_scale=True,
                 tensor_target_scale=448)
    assert recipe.operands() == {
        "fwd_x": _spec(**ue5m3),
        "fwd_w": _spec(**ue5m3, block_2d=True),
        "dgrad_dy": _spec(**ue5m3, rounding="sr", sr_bits=8),
        "dgrad_w": _spec(**ue5m3, block_2d=True),
        "wgrad_dy": _spec(**ue5m3, rounding="sr", sr_bits=8),
        "wgrad_x": _spec(**ue5m3),
    }
    assert (recipe.amax_policy, recipe.amax_window, recipe.amax_margin) == ("hold", 50, 0)
    assert (recipe.estimator, recipe.sign_policy, recipe.high_precision) == ("ste", "fixed", "none")
    assert Recipe.from_dict(json.loads(json.dumps(recipe.to_dict()))) == recipe
