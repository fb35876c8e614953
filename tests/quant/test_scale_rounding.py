"""Stochastic rounding of the block scale: the two neighbours of the ideal scale, drawn per
block without bias from a stream of their own, reproducible from the seed."""

import dataclasses

import pytest
import torch

from fp4sweep.quant import QuantSpec, quantize_detailed

SPEC = QuantSpec(elem="e2m1", scale="ue4m3", block=16, scale_rule="nearest", scale_rounding="sr")


def test_the_scale_rounds_to_a_neighbour_in_proportion():
    # amax 6.1875: ideal scale 6.1875 / 6 = 1.03125, a quarter of the way from 1 to 1.125
    x = torch.full((4096, 16), 1.0)
    x[:, 0] = 6.1875
    r = quantize_detailed(x, SPEC, seed=7)
    scales = r.block_scale[:, 0]
    assert set(scales.unique().tolist()) == {1.0, 1.125}
    assert (scales == 1.125).float().mean().item() == pytest.approx(0.25, abs=0.02)
    # rounded down, 6.1875 exceeds E2M1's 6 and saturates
    assert r.saturated[scales == 1.0, 0].all() and not r.saturated[scales == 1.125, 0].any()
    nearest = quantize_detailed(x, dataclasses.replace(SPEC, scale_rounding="nearest"))
    assert nearest.block_scale.unique().tolist() == [1.0]


def test_draws_follow_the_seed_and_not_the_element_stream():
    x = torch.randn(64, 64)
    a, b = quantize_detailed(x, SPEC, seed=1), quantize_detailed(x, SPEC, seed=1)
    assert torch.equal(a.output, b.output)
    assert not torch.equal(a.block_scale, quantize_detailed(x, SPEC, seed=2).block_scale)
    # element SR on top draws from its own stream: the scales stay those of the seed
    both = quantize_detailed(x, dataclasses.replace(SPEC, rounding="sr"), seed=1)
    assert torch.equal(both.block_scale, a.block_scale)


def test_where_it_applies():
    assert "scale_rounding" not in QuantSpec.preset("nvfp4").to_dict()
    assert QuantSpec.from_dict(SPEC.to_dict()) == SPEC
    for bad in (dict(scale_rule="floor"), dict(block=24), dict(scale_rule="nvfp4", tensor_scale=True,
                                                                scale_select="4over6_mse")):
        with pytest.raises(ValueError, match="replaces a nearest scale rounding"):
            dataclasses.replace(SPEC, **bad)
