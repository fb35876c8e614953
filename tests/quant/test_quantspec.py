"""QuantSpec: presets, validation naming the field and its choices, plain-dict round trip."""

import dataclasses
import json

import pytest

from fp4sweep.quant.formats import E2M1, E8M0, UE4M3, UE5M3
from fp4sweep.quant.spec import PRESETS, QuantSpec


def test_mxfp4_preset_is_ocp_mxfp4():
    spec = QuantSpec.preset("mxfp4")
    assert (spec.elem_format, spec.scale_format, spec.block) == (E2M1, E8M0, 32)
    assert (spec.scale_rule, spec.rounding, spec.transform, spec.tensor_scale) == (
        "floor", "rne", "none", False,
    )
    assert QuantSpec() == spec


def test_nvfp4_presets():
    spec = QuantSpec.preset("nvfp4")
    assert (spec.elem_format, spec.scale_format, spec.block) == (E2M1, UE4M3, 16)
    assert (spec.scale_rule, spec.rounding, spec.tensor_scale) == ("nvfp4", "rne", True)
    torchao = QuantSpec.preset("nvfp4_torchao")
    assert dataclasses.replace(torchao, scale_rule="nvfp4") == spec


def test_issue_example_and_derived_fields():
    spec = QuantSpec(
        elem="e2m1", scale="ue5m3", block=16, scale_rule="ceil", rounding="sr",
        transform="hadamard32", tensor_scale=True,
    )
    assert spec.scale_format == UE5M3
    assert (spec.hadamard_size, spec.random_signs) == (32, False)
    assert QuantSpec(transform="rhadamard256").hadamard_size == 256
    assert QuantSpec().hadamard_size == 0
    assert QuantSpec(transform="rhadamard16").random_signs


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_dict_round_trip_through_json(name):
    spec = dataclasses.replace(QuantSpec.preset(name), rounding="sr", sr_bits=8, transform_seed=7)
    text = json.dumps(spec.to_dict())
    assert QuantSpec.from_dict(json.loads(text)) == spec


def test_from_dict_fills_defaults_and_rejects_unknown_keys():
    assert QuantSpec.from_dict({"block": 16}) == QuantSpec(block=16)
    with pytest.raises(ValueError, match=r"unknown QuantSpec field\(s\) \['blocksize'\].*'block'"):
        QuantSpec.from_dict({"blocksize": 16})


def test_unknown_preset_lists_presets():
    with pytest.raises(ValueError, match="mxfp4"):
        QuantSpec.preset("fp4")


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("elem", "e3m3", "QuantSpec.elem='e3m3'.*'e2m1'"),
        ("elem", 4, "QuantSpec.elem must be str"),
        ("scale", "e4m3", "QuantSpec.scale: unknown scale format 'e4m3'.*ueXmY"),
        ("block", 4, r"QuantSpec.block must be in 8..128"),
        ("block", 256, r"QuantSpec.block must be in 8..128"),
        ("block", 16.0, "QuantSpec.block must be int"),
        ("block", True, "QuantSpec.block must be int"),
        ("block_2d", "yes", "QuantSpec.block_2d must be bool"),
        ("scale_rule", "round", "QuantSpec.scale_rule='round'.*'nvfp4_torchao'"),
        ("rounding", "rtz", "QuantSpec.rounding='rtz'.*'sr'"),
        ("sr_bits", 0, r"QuantSpec.sr_bits must be in 1..24"),
        ("sr_bits", 32, r"QuantSpec.sr_bits must be in 1..24"),
        ("transform", "hadamard8", "QuantSpec.transform='hadamard8'.*'rhadamard256'"),
        ("transform", "hadamard512", "QuantSpec.transform='hadamard512'"),
        ("transform_seed", -1, "QuantSpec.transform_seed must be >= 0"),
        ("tensor_scale", 1, "QuantSpec.tensor_scale must be bool"),
    ],
)
def test_invalid_values_name_field_and_choices(field, value, message):
    with pytest.raises(ValueError, match=message):
        QuantSpec(**{field: value})


@pytest.mark.parametrize("rule", ["nvfp4", "nvfp4_torchao"])
@pytest.mark.parametrize("scale", ["e8m0", "fp32", "ue6m2"])
def test_nvfp4_rules_need_a_narrow_scale_format(rule, scale):
    with pytest.raises(ValueError, match="at most 5 exponent bits"):
        QuantSpec(scale=scale, scale_rule=rule)


def test_spec_is_frozen_and_hashable():
    spec = QuantSpec()
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.block = 16  # type: ignore[misc]
    assert len({QuantSpec(), QuantSpec(), QuantSpec(block=16)}) == 2
