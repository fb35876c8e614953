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
