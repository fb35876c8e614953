"""Stochastic rounding: neighbours only, unbiased, reproducible, counter = index in x."""

import dataclasses

import pytest
import torch

from fp4sweep.quant.dispatch import fake_quantize, quantize_detailed
from fp4sweep.quant.rng import uniform
from fp4sweep.quant.rounding import grid_step, round_magnitude
from fp4sweep.quant.spec import QuantSpec
from tests.quant.common import spec_id, wide_range

SR_SPECS = [
    QuantSpec(rounding="sr"),
    QuantSpec(scale="ue5m3", block=16, scale_rule="nearest", rounding="sr", tensor_scale=True),
    dataclasses.replace(QuantSpec.preset("nvfp4"), rounding="sr", transform="rhadamard16"),
    QuantSpec(elem="e4m3", scale="ue5m3", block=16, scale_rule="ceil", rounding="sr"),
    dataclasses.replace(QuantSpec.preset("nvfp4"), rounding="sr", block_2d=True),
    # Numbers that share random words (``rng``): four a word, two a word.
    QuantSpec(rounding="sr", sr_bits=8, transform="hadamard32"),
    dataclasses.replace(QuantSpec.preset("nvfp4"), rounding="sr", sr_bits=12),
]


@pytest.mark.parametrize("spec", SR_SPECS, ids=spec_id)
def test_every_draw_is_one_of_the_two_neighbours(spec):
    x = wide_range(16, 64)
    for seed in range(5):
        r = quantize_detailed(x, spec, seed=seed)
        magnitude = r.scaled.abs()
        low = round_magnitude(spec.elem_format, magnitude, "down")
        high = round_magnitude(spec.elem_format, magnitude, "up")
        q = r.elements.abs()
        assert ((q == low) | (q == high)).all()
        assert (q <= spec.elem_format.max).all()


@pytest.mark.parametrize("spec", SR_SPECS, ids=spec_id)
def test_counter_is_the_row_major_index_in_x_along_either_axis(spec):
    """Each decision is exactly ``u(index in x) < p`` whichever axis is quantized."""
    x = wide_range(32, 32, seed=1)
    for axis in (0, 1):
        r = quantize_detailed(x, spec, axis=axis, seed=7)
        magnitude = r.scaled.abs()
        low = round_magnitude(spec.elem_format, magnitude, "down")
        p = (magnitude - low) / grid_step(spec.elem_format, magnitude)
        u = uniform(torch.arange(x.numel()).reshape(x.shape), seed=7, bits=spec.sr_bits)
        up = (u < p) & (magnitude < spec.elem_format.max)
        expected = torch.where(up, low + grid_step(spec.elem_format, magnitude), low)
        expected = expected.clamp(max=spec.elem_format.max)
        assert torch.equal(r.elements.abs(), expected)


@pytest.mark.parametrize("spec", SR_SPECS, ids=spec_id)
def test_mean_of_many_draws_converges_to_the_input(spec):
    """4096 copies of one row: each copy draws its own numbers (its own counters)."""
    row = wide_range(1, 64, seed=2)
    x = row.expand(4096, 64).contiguous()
    r = quantize_detailed(x, spec, seed=3)
    mean = r.output.double().mean(dim=0)
    step = r.step[0].double()
    inside = ~r.saturated[0]
    # Per draw the error is at most one step, so the mean's standard error is below
    # step / (2 sqrt(4096)) = step / 128; allow five of them (plus rounding of the basis).
    tolerance = 5 * step / 128 + 1e-6 * row[0].abs().double()
    if spec.hadamard_size:  # the output is a mix of the run's elements: compare in the grid basis
        mean = r.dequantized.double().mean(dim=0)
        target = r.transformed[0].double()
    else:
        target = row[0].double()
    assert ((mean - target).abs()[inside] <= tolerance[inside]).all()
    # Rounding to nearest is biased for these values; stochastic rounding is not.
    nearest = dataclasses.replace(spec, rounding="rne", transform="none", block_2d=False)
    rne = fake_quantize(row, nearest)
    assert (rne[0] - row[0]).abs().sum() > (mean - target).abs().sum()


def test_same_seed_reproduces_and_different_seeds_differ():
    spec = SR_SPECS[1]
    x = wide_range(16, 64)
    a, b, c = (fake_quantize(x, spec, seed=s) for s in (11, 11, 12))
    assert torch.equal(a, b)
    assert (a != c).float().mean() > 0.2


def test_grid_values_never_move():
    spec = QuantSpec(block=8, rounding="sr")
    x = torch.tensor([[6.0, 4.0, 3.0, 2.0, 1.5, 1.0, 0.5, 0.0]]).expand(100, 8).contiguous()
    assert torch.equal(fake_quantize(x, spec, seed=5), x)


def test_saturates_at_the_element_max():
    spec = QuantSpec(block=8, rounding="sr")  # floor: amax 7.9 gives scale 1, 7.9 saturates
    x = torch.tensor([[7.9, 6.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]]).expand(1000, 8).contiguous()
    y = fake_quantize(x, spec, seed=1)
    assert torch.equal(y[:, :2], torch.full((1000, 2), 6.0))


def test_few_random_bits_follow_the_definition():
    """With sr_bits = 2, u is in {0, 1/4, 1/2, 3/4}: p = 0.3 rounds up iff u < 0.3, i.e. half
    of the time (the definition trades bias for cheap random numbers; 24 bits are exact)."""
    spec = QuantSpec(scale="fp32", scale_rule="nearest", block=8, rounding="sr", sr_bits=2)
    # Scale 1 (amax 6); 1.15 sits between grid points 1.0 and 1.5 at p = 0.3.
    x = torch.tensor([[6.0, 1.15, 1.15, 1.15, 1.15, 1.15, 1.15, 1.15]]).expand(4000, 8)
    y = fake_quantize(x.contiguous(), spec, seed=2)[:, 1:]
    assert set(y.unique().tolist()) == {1.0, 1.5}
    assert abs((y == 1.5).float().mean().item() - 0.5) < 0.02
