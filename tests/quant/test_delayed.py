"""Delayed tensor scale: each policy's amax on a hand-made sequence, saturation beyond a stale
scale, the clipped-element count, the state across a checkpoint, and the recipe's fields."""

import dataclasses

import pytest
import torch

from fp4sweep.quant import QuantSpec, Recipe, fake_quantize
from fp4sweep.quant.delayed import DelayedAmax, beyond_amax_fraction, clipped_elements
from fp4sweep.quant.layers import QuantLinear

# The amax rule on UE4M3 with tensor scaling: g = fl(448 * 6 / A), s = round(a * g / 6).
SPEC = QuantSpec(elem="e2m1", scale="ue4m3", block=16, scale_rule="nearest", tensor_scale=True)
AMAXES = [1.0, 4.0, 2.0, 8.0, 0.5]


def operand_with_amax(amax):
    # one row of 16: the amax, then values of at most a quarter of it
    return torch.tensor([[amax] + [amax / 4] * 15])


def amaxes_used(policy, window=1, margin=0):
    recipe = Recipe(fwd_x=SPEC, amax_policy=policy, amax_window=window, amax_margin=margin)
    delayed = DelayedAmax(recipe)
    used = [delayed.tensor_amax("fwd_x", operand_with_amax(a), SPEC, 1).item() for a in AMAXES]
    return used, delayed


@pytest.mark.parametrize("policy, window, margin, expected", [
    ("hold", 3, 0, [1.0, 1.0, 1.0, 8.0, 8.0]),        # sampled at steps 0 and 3
    ("max", 2, 0, [1.0, 1.0, 4.0, 4.0, 8.0]),         # the larger of the two steps before
    ("max", 8, 0, [1.0, 1.0, 4.0, 4.0, 8.0]),
    ("most_recent", 1, 0, [1.0, 1.0, 4.0, 2.0, 8.0]),  # the step before
    ("max", 2, 1, [2.0, 2.0, 8.0, 8.0, 16.0]),        # times 2**margin
])
def test_each_policy_on_a_hand_made_sequence(policy, window, margin, expected):
    used, delayed = amaxes_used(policy, window, margin)
    assert used == expected
    assert delayed.recorded.tolist() == [5, 0, 0, 0, 0, 0]


def test_clipped_counts_the_elements_beyond_the_amax_used():
    used, delayed = amaxes_used("hold", 3)
    # step 4: the held amax is 8 and the tensor's is 0.5: nothing beyond it
    assert delayed.clipped[0].item() == 0
    delayed.tensor_amax("fwd_x", torch.tensor([[9.0, -10.0, 8.0, float("inf")] + [1.0] * 12]), SPEC, 1)
    assert delayed.clipped[0].item() == 2  # 9 and -10; 8 is not beyond, inf is not finite
    assert clipped_elements(torch.nn.Sequential(delayed)) == 2


def test_the_beyond_amax_fraction_accumulates_over_training_steps():
    used, delayed = amaxes_used("hold", 3)
    # held 1 for steps 0-2 (amaxes 1, 4, 2: one element of 16 beyond it at steps 1 and 2, the
    # others at a quarter of 4 and 2 are not), 8 for steps 3-4: 2 of 80 elements
    assert delayed.beyond.tolist() == [2, 0, 0, 0, 0, 0] and delayed.seen.tolist() == [80, 0, 0, 0, 0, 0]
    model = torch.nn.Sequential(delayed, DelayedAmax(Recipe(fwd_x=SPEC, amax_policy="most_recent")))
    assert beyond_amax_fraction(model) == 2 / 80
    model.eval()
    model[0].tensor_amax("fwd_x", operand_with_amax(100.0), SPEC, 1)  # evaluation counts nothing
    assert beyond_amax_fraction(model) == 2 / 80
    assert beyond_amax_fraction(torch.nn.Linear(2, 2)) is None  # no delayed amax: no metric


def test_evaluation_reads_the_state_without_changing_it():
    used, delayed = amaxes_used("max", 2)
    before = {name: value.clone() for name, value in delayed.state_dict().items()}
    delayed.eval()
    assert delayed.tensor_amax("fwd_x", operand_with_amax(100.0), SPEC, 1).item() == 8.0
    assert all(torch.equal(before[name], value) for name, value in delayed.state_dict().items())


def test_a_stale_amax_saturates_the_blocks_beyond_it():
    x = torch.tensor([[12.0, 1.0] + [0.0] * 14])
    # own amax 12: g = 224, s = 448, v = 12 * 224 / 448 = 6, dequantized 6 * 2 = 12
    assert fake_quantize(x, SPEC)[0, :2].tolist() == [12.0, 1.0]
    # held amax 6: g = 448, s = round(12 * 448 / 6 = 896) saturates at 448, v = 12 -> 6, d = 1
    stale = fake_quantize(x, SPEC, tensor_amax=torch.tensor(6.0))
    assert stale[0, :2].tolist() == [6.0, 1.0]
    # an amax above the tensor's own only coarsens: 12 still dequantizes to 12
    assert fake_quantize(x, SPEC, tensor_amax=torch.tensor(24.0))[0, 0].item() == 12.0


def test_tensor_amax_needs_tensor_scaling_and_a_0d_float32_tensor():
    x = torch.ones(1, 16)
    with pytest.raises(ValueError, match="tensor_scale=True"):
        fake_quantize(x, dataclasses.replace(SPEC, tensor_scale=False), tensor_amax=torch.tensor(1.0))
    with pytest.raises(ValueError, match="0-d float32"):
        fake_quantize(x, SPEC, tensor_amax=torch.tensor([1.0]))


NVFP4_HOLD = dataclasses.replace(Recipe.preset("nvfp4"), amax_policy="hold", amax_window=4)


def train(layer, steps):
    generator = torch.Generator().manual_seed(1)
    optimiser = torch.optim.SGD(layer.parameters(), lr=0.1)
    for step in range(steps):
        x = torch.randn(32, 64, generator=generator) * (1 + step)  # growing: stale scales clip
        layer(x.requires_grad_(True)).square().mean().backward()
        optimiser.step()
        optimiser.zero_grad()


def test_state_survives_a_checkpoint():
    torch.manual_seed(0)
    layer = QuantLinear(64, 32, recipe=NVFP4_HOLD)
    train(layer, 3)
    assert clipped_elements(layer) > 0  # step 2 held step 0's smaller amaxes
    checkpoint = layer.state_dict()
    assert set(checkpoint) >= {"delayed.history", "delayed.recorded", "delayed.clipped", "delayed.beyond",
                               "delayed.seen"}
    fresh = QuantLinear(64, 32, recipe=NVFP4_HOLD)
    fresh.load_state_dict(checkpoint)
    fresh.step = layer.step  # the stochastic-rounding step counter is the task's to restore
    # dgrad_w reuses fwd_w's quantized weight (16x16 tiles: the same amax, the same history)
    assert fresh.delayed.recorded.tolist() == [3, 3, 3, 0, 3, 3]
    x = torch.randn(32, 64) * 8  # beyond step 2's held amax: the held one saturates it
    expected = layer(x)
    assert torch.equal(fresh(x), expected)
    without_state = QuantLinear(64, 32, recipe=NVFP4_HOLD)
    without_state.load_state_dict({k: v for k, v in checkpoint.items() if "delayed" not in k},
                                  strict=False)
    without_state.step = layer.step
    assert not torch.equal(without_state(x), expected)  # its first step scales with x's own


def test_layers_without_a_delayed_policy_hold_no_state():
    layer = QuantLinear(64, 32, recipe=Recipe.preset("nvfp4"))
    assert layer.delayed is None and "delayed.history" not in layer.state_dict()
    assert clipped_elements(layer) == 0


def test_recipe_fields_and_their_checks():
    nvfp4 = Recipe.preset("nvfp4")
    assert "amax_policy" not in nvfp4.to_dict()  # defaults leave existing recipes' dicts alone
    values = NVFP4_HOLD.to_dict()
    assert (values["amax_policy"], values["amax_window"]) == ("hold", 4)
    assert "amax_margin" not in values
    assert Recipe.from_dict(values) == NVFP4_HOLD
    with pytest.raises(ValueError, match=r"amax_policy='last'.*'hold'"):
        dataclasses.replace(nvfp4, amax_policy="last")
    with pytest.raises(ValueError, match="amax_window=4 has no meaning"):
        dataclasses.replace(nvfp4, amax_policy="most_recent", amax_window=4)
    with pytest.raises(ValueError, match="amax_window must be >= 1"):
        dataclasses.replace(nvfp4, amax_policy="hold", amax_window=0)
    with pytest.raises(ValueError, match="amax_margin needs a delayed"):
        dataclasses.replace(nvfp4, amax_margin=1)
    with pytest.raises(ValueError, match="no operand has tensor_scale"):
        dataclasses.replace(Recipe.preset("mxfp4"), amax_policy="max", amax_window=16)
