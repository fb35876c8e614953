"""Scale headroom: tensor scaling aimed at a block scale below the scale format's max."""

import dataclasses

import pytest
import torch

from fp4sweep.quant import QuantSpec, quantize_detailed

NVFP4 = QuantSpec.preset("nvfp4")
NVFP4_256 = dataclasses.replace(NVFP4, tensor_target_scale=256)


def test_the_tensor_amax_block_gets_the_target_scale():
    x = torch.tensor([[3.0, 1.0, -0.5] + [0.0] * 13])
    # default target 448 * 6: g = 2688 / 3 = 896, the block scale 3 * 896 / 6 = 448
    r = quantize_detailed(x, NVFP4)
    assert (r.tensor_scale.item(), r.block_scale[0, 0].item()) == (896.0, 448.0)
    # target 256 * 6: g = 1536 / 3 = 512, the block scale 256, decode 256 / 512 = 0.5
    r = quantize_detailed(x, NVFP4_256)
    assert (r.tensor_scale.item(), r.block_scale[0, 0].item(), r.scale[0, 0].item()) == (512.0, 256.0, 0.5)
    assert r.output[0, :3].tolist() == [3.0, 1.0, -0.5]


@pytest.mark.parametrize("rule", ["nearest", "nvfp4_torchao"])
def test_other_rules_aim_at_the_target_too(rule):
    spec = QuantSpec(scale="ue4m3", block=16, scale_rule=rule, tensor_scale=True, tensor_target_scale=256)
    x = torch.tensor([[3.0] + [1.0] * 15])
    assert quantize_detailed(x, spec).block_scale[0, 0].item() == 256.0


def test_target_checks_and_dict():
    assert "tensor_target_scale" not in NVFP4.to_dict()  # existing specs keep their dicts
    assert QuantSpec.from_dict(NVFP4_256.to_dict()) == NVFP4_256
    with pytest.raises(ValueError, match="needs tensor_scale=True"):
        QuantSpec(scale="ue4m3", tensor_target_scale=256)
    with pytest.raises(ValueError, match=r"in 1\.\.448, got 512"):
        dataclasses.replace(NVFP4, tensor_target_scale=512)


MX_SR = QuantSpec(elem="e2m1", scale="e8m0", block=8, scale_rule="floor", rounding="sr")


def test_three_quarters_keeps_the_floor_rules_largest_elements_unclipped():
    # floor: scale 2**(floor(log2 7) - 2) = 1, so 7 is an element beyond E2M1's 6
    x = torch.tensor([[7.0, 1.0] + [0.0] * 6]).repeat(4096, 1)
    clipped = quantize_detailed(x, MX_SR, seed=1)
    assert clipped.saturated[:, 0].all() and clipped.output[:, 0].unique().tolist() == [6.0]
    r = quantize_detailed(x, dataclasses.replace(MX_SR, prescale="3/4"), seed=1)
    decode = torch.tensor(1.0) / torch.tensor(0.75)  # fl(1 / (3/4))
    assert r.scaled[0, :2].tolist() == [5.25, 0.75] and r.scale[0, 0] == decode
    assert not r.saturated.any()
    # 5.25 rounds to 4 or 6, 0.75 to 0.5 or 1: each unbiased once decoded
    assert set(r.output[:, 0].unique().tolist()) == {(4 * decode).item(), (6 * decode).item()}
    assert r.output[:, 0].mean().item() == pytest.approx(7.0, rel=0.01)
    assert r.output[:, 1].mean().item() == pytest.approx(1.0, rel=0.02)


def test_seventeen_sixteenths_margin_on_nvfp4():
    spec = dataclasses.replace(NVFP4, rounding="sr", prescale="16/17")
    x = torch.randn(64, 32)
    plain, margin = quantize_detailed(x, dataclasses.replace(spec, prescale="1")), quantize_detailed(x, spec)
    c = torch.tensor(16 / 17, dtype=torch.float32)
    assert torch.equal(margin.block_scale, plain.block_scale)  # the rule's scales are kept
    assert torch.equal(margin.scaled, plain.scaled * c) and torch.equal(margin.scale, plain.scale / c)
    # a UE4M3 scale rounded to nearest is at most 1/16 below the ideal: no element clips
    assert plain.saturated.any() and not margin.saturated.any()


def test_prescale_needs_stochastic_rounding():
    assert "prescale" not in MX_SR.to_dict()
    with pytest.raises(ValueError, match="needs rounding='sr'"):
        QuantSpec(prescale="3/4")
    with pytest.raises(ValueError, match=r"prescale='2'.*'16/17'"):
        dataclasses.replace(MX_SR, prescale="2")
