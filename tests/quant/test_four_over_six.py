"""Scale selection "4 over 6": per block, the amax scaled to 6 or to 4, whichever quantizes the
block with the lower error; hand-worked blocks and the tree-summed error."""

import dataclasses

import pytest
import torch

from fp4sweep.quant import QuantSpec, fake_quantize, quantize_detailed

# UE4M3 scales, no tensor scale: an amax of 6 gives the scale 1 (to 6) or 1.5 (to 4).
BASE = QuantSpec(elem="e2m1", scale="ue4m3", block=16, scale_rule="nvfp4")
MSE = dataclasses.replace(BASE, scale_select="4over6_mse")
MAE = dataclasses.replace(BASE, scale_select="4over6_mae")


def block(*values):
    return torch.tensor([list(values) + [values[-1]] * (16 - len(values))])


@pytest.mark.parametrize("spec", [MSE, MAE])
def test_four_wins_where_its_grid_fits(spec):
    x = block(6.0, 4.5)
    # to 6 (scale 1): 4.5 rounds to 4, fifteen errors of 0.5
    assert fake_quantize(x, BASE)[0, 1].item() == 4.0
    # to 4 (scale 1.5): 6 -> 4, 4.5 -> 3, both exact
    r = quantize_detailed(x, spec)
    assert r.block_scale[0, 0].item() == 1.5 and torch.equal(r.output, x)


@pytest.mark.parametrize("spec", [MSE, MAE])
def test_six_wins_or_ties(spec):
    # 1 is exact with scale 1; with scale 1.5 it is 0.667 -> 0.5 -> 0.75
    assert quantize_detailed(block(6.0, 1.0), spec).block_scale[0, 0].item() == 1.0
    # both exact: a tie keeps the amax-to-6 scale
    assert quantize_detailed(block(6.0, 0.0), spec).block_scale[0, 0].item() == 1.0


def test_mse_and_mae_can_disagree():
    # to 6: errors 0.5 on 4.5 and 0 on fourteen 1.0s; to 4: 0 on 4.5 and 0.25 on each 1.0
    x = torch.tensor([[6.0, 4.5] + [1.0] * 14])
    assert quantize_detailed(x, MSE).block_scale[0, 0].item() == 1.0   # 0.25 < 14 * 0.0625
    assert quantize_detailed(x, MAE).block_scale[0, 0].item() == 1.0   # 0.5 < 14 * 0.25
    x = torch.tensor([[6.0] + [4.5] * 12 + [1.0] * 3])
    assert quantize_detailed(x, MSE).block_scale[0, 0].item() == 1.5   # 3 * 0.0625 < 12 * 0.25
    assert quantize_detailed(x, MAE).block_scale[0, 0].item() == 1.5   # 0.75 < 6
    x = torch.tensor([[6.0] + [4.5] * 2 + [1.0] * 13])
    # squared: 2 * 0.25 = 0.5 vs 13 * 0.0625 = 0.8125 -> 6; absolute: 1.0 vs 3.25 -> 6
    assert quantize_detailed(x, MSE).block_scale[0, 0].item() == 1.0
    x = torch.tensor([[6.0] + [4.5] * 4 + [1.0] * 11])
    # squared: 4 * 0.25 = 1.0 vs 11 * 0.0625 = 0.6875 -> 4; absolute: 2.0 vs 2.75 -> 6
    assert quantize_detailed(x, MSE).block_scale[0, 0].item() == 1.5
    assert quantize_detailed(x, MAE).block_scale[0, 0].item() == 1.0


def test_lower_error_on_gaussian_blocks_and_unchanged_rounding():
    torch.manual_seed(0)
    x = torch.randn(256, 64)
    plain = ((fake_quantize(x, BASE) - x) ** 2).mean()
    assert ((fake_quantize(x, MSE) - x) ** 2).mean() < plain
    sr = dataclasses.replace(MSE, rounding="sr")
    assert torch.equal(quantize_detailed(x, sr).block_scale, quantize_detailed(x, MSE).block_scale)


def test_where_it_applies():
    assert "scale_select" not in BASE.to_dict()
    assert QuantSpec.from_dict(MSE.to_dict()) == MSE
    for bad in (dict(scale_rule="nearest"), dict(block_2d=True), dict(block=24)):
        with pytest.raises(ValueError, match="needs scale_rule='nvfp4' and 1-D blocks"):
            dataclasses.replace(MSE, **bad)
    with pytest.raises(ValueError, match=r"scale_select='4over6'.*'4over6_mse'"):
        dataclasses.replace(BASE, scale_select="4over6")
