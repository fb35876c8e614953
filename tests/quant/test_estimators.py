"""Gradient estimators: each derivative on hand-checkable inputs, the transform mapping, and the
scale gradient against torch autograd of a surrogate built from the definitions."""

import math

import numpy as np
import pytest
import torch
from scipy.linalg import hadamard

from fp4sweep.quant import QuantSpec, fake_quantize, quantize, quantize_detailed
from fp4sweep.quant.estimators import DERIVATIVES, quantize_for_training
from fp4sweep.quant.formats import element_format

# One block of 8 with amax 7: OCP floor gives scale 2**(floor(log2 7) - 2) = 1, so the scaled
# values are the inputs and 7 saturates (E2M1's max is 6).
E8M0_BLOCK8 = QuantSpec(elem="e2m1", scale="e8m0", block=8, scale_rule="floor")
VALUES = [7.0, 0.25, 0.75, 1.2, 2.5, 3.1, 4.6, -5.5]
# Position u/d of each |value| in its E2M1 interval: [0,.5], [.5,1], [1,1.5], [2,3], [3,4], [4,6]
POSITIONS = [None, 0.5, 0.5, 0.4, 0.5, 0.1, 0.3, 0.75]


def power(position):
    distance = abs(2 * position - 1)  # 0 at the interval's midpoint, where the slope is clipped
    return 1.0 if distance == 0 else min(distance ** (1 / 5 - 1) / 5, 1.0)


EXPECTED = {
    "ste": [1.0] * 8,
    "clipped_ste": [0.0] + [1.0] * 7,
    # The spline: 1/2 on the half interval next to the grid point its midpoint ties to (0, 1, 2,
    # 4 are E2M1's even codes), 1 on the other half (3/2 clipped), 0 when saturated. 0.25 and
    # 2.5 sit on a boundary and take the piece to their right.
    "spline": [0.0, 1.0, 0.5, 0.5, 1.0, 1.0, 0.5, 1.0],
    "power": [0.0] + [power(p) for p in POSITIONS[1:]],
}


@pytest.mark.parametrize("estimator", EXPECTED)
def test_each_estimator_backward_matches_its_definition(estimator):
    x = torch.tensor([VALUES], requires_grad=True)
    y = quantize(x, E8M0_BLOCK8, -1, 0, estimator, "stop")
    assert torch.equal(y.detach(), fake_quantize(x.detach(), E8M0_BLOCK8))
    y.backward(torch.ones_like(y))
    torch.testing.assert_close(x.grad[0], torch.tensor(EXPECTED[estimator]), rtol=1e-5, atol=1e-6)


def test_the_inputs_round_both_ways():
    # the positions above hold whether an element was rounded up or down
    q = fake_quantize(torch.tensor([VALUES]), E8M0_BLOCK8)[0].tolist()
    assert q == [6.0, 0.0, 1.0, 1.0, 2.0, 3.0, 4.0, -6.0]


def test_position_also_holds_for_stochastic_rounding():
    spec = QuantSpec(elem="e2m1", scale="e8m0", block=8, rounding="sr")
    x = torch.tensor([VALUES] * 64)  # 64 draws of the same row
    r = quantize_detailed(x, spec, -1, seed=3)
    derivative = DERIVATIVES["power"](r, spec.elem_format)
    assert len({tuple(row) for row in r.dequantized.tolist()}) > 1  # the draws differ
    torch.testing.assert_close(derivative, derivative[:1].expand_as(derivative))


def relaxation_knots(elem):
    """The spline's knots and values built from the format's codes: Q~(g) = g at each grid
    point, and at each interval's midpoint m, halfway between m and the even-coded end."""
    grid = sorted({abs(v) for v in element_format(elem).code_values if math.isfinite(v)})
    knots, values = [grid[0]], [grid[0]]
    for code, (lo, hi) in enumerate(zip(grid, grid[1:])):
        middle = (lo + hi) / 2
        even_end = lo if code % 2 == 0 else hi
        knots += [middle, hi]
        values += [(middle + even_end) / 2, hi]
    return np.array(knots), np.array(values)


@pytest.mark.parametrize("elem", ["e2m1", "int4", "e2m3", "e3m2"])
def test_spline_is_the_clipped_slope_of_its_relaxation(elem):
    knots, values = relaxation_knots(elem)
    generator = np.random.default_rng(0)
    v = generator.uniform(0, knots[-1], 4096)
    v = v[np.abs(v[:, None] - knots).min(axis=1) > 1e-3]  # away from the kinks
    h = 1e-5
    expected = np.minimum((np.interp(v + h, knots, values) - np.interp(v - h, knots, values)) / (2 * h), 1.0)
    # one block per value, scaled by 1 (fp32 "nearest" with the format's max as the amax)
    x = torch.zeros(len(v), 8)
    x[:, 0], x[:, 1] = torch.tensor(v, dtype=torch.float32), element_format(elem).max
    spec = QuantSpec(elem=elem, scale="fp32", block=8, scale_rule="nearest")
    r = quantize_detailed(x, spec)
    assert torch.equal(r.scaled, x)
    derivative = DERIVATIVES["spline"](r, spec.elem_format)[:, 0].double().numpy()
    np.testing.assert_allclose(derivative, expected, atol=1e-3)
    assert set(np.unique(derivative)) == {0.5, 1.0}  # never zero inside the range


def orthonormal_hadamard(k):
    return torch.tensor(hadamard(k), dtype=torch.float32) / math.sqrt(k)


@pytest.mark.parametrize("estimator", ["clipped_ste", "spline", "power"])
def test_gradient_is_mapped_through_the_transform(estimator):
    torch.manual_seed(0)
    spec = QuantSpec(elem="e2m1", scale="fp32", block=16, scale_rule="nearest", transform="hadamard16")
    x = torch.randn(4, 32) * torch.logspace(-1, 1, 32)
    g = torch.randn(4, 32)
    h = orthonormal_hadamard(16)
    derivative = DERIVATIVES[estimator](quantize_detailed(x, spec), spec.elem_format).float().reshape(4, 2, 16)
    expected = (((g.reshape(4, 2, 16) @ h) * derivative) @ h).reshape(4, 32)
    x.requires_grad_(True)
    quantize(x, spec, -1, 0, estimator).backward(g)
    torch.testing.assert_close(x.grad, expected, rtol=1e-5, atol=1e-6)


def test_ste_with_a_stopped_scale_passes_the_gradient_exactly():
    spec = QuantSpec.preset("nvfp4")
    x = torch.randn(3, 32, requires_grad=True)
    g = torch.randn(3, 32)
    quantize(x, spec, -1, 0).backward(g)
    assert torch.equal(x.grad, g)


def surrogate_gradient(x, spec, estimator, g):
    """Autograd of y = T^-1( s(t) * f(t / s(t)) ), t = T(x), where f has the value of the rounded
    element and the derivative D, and s(t) = c * amax_block(t) with c = s / amax held fixed."""
    r = quantize_detailed(x, spec)
    derivative = (
        torch.ones_like(r.transformed) if estimator == "ste" else DERIVATIVES[estimator](r, spec.elem_format).float()
    )
    k = spec.hadamard_size
    h = orthonormal_hadamard(k) if k else None
    rows, cols = x.shape
    b = spec.block
    x = x.clone().requires_grad_(True)
    t = (x.reshape(rows, -1, k) @ h).reshape(rows, cols) if k else x * 1.0
    if spec.block_2d:
        tiles = t.reshape(rows // b, b, cols // b, b)
        amax = tiles.abs().amax(dim=(1, 3), keepdim=True).expand_as(tiles).reshape(rows, cols)
    else:
        runs = t.reshape(rows, -1, b)
        amax = runs.abs().amax(dim=-1, keepdim=True).expand_as(runs).reshape(rows, cols)
    s = (r.scale / r.block_amax) * amax
    v = t / s
    y = s * (r.elements + derivative * (v - v.detach()))
    out = (y.reshape(rows, -1, k) @ h).reshape(rows, cols) if k else y
    # the same values, up to float32 rounding of the matmul transform
    torch.testing.assert_close(out.detach(), r.output, rtol=1e-5, atol=1e-6 * r.output.abs().max())
    out.backward(g)
    return x.grad


SCALE_GRAD_SPECS = {
    "fp32": QuantSpec(elem="e2m1", scale="fp32", block=8, scale_rule="nearest"),
    "mxfp4": QuantSpec.preset("mxfp4"),
    "nvfp4": QuantSpec.preset("nvfp4"),
    "ue5m3_hadamard": QuantSpec(
        elem="e2m1", scale="ue5m3", block=16, scale_rule="ceil", transform="hadamard32", tensor_scale=True
    ),
    "2d": QuantSpec(elem="e2m1", scale="ue4m3", block=8, block_2d=True, scale_rule="nearest"),
}


@pytest.mark.parametrize("estimator", ["ste", "clipped_ste", "spline", "power"])
@pytest.mark.parametrize("spec_name", SCALE_GRAD_SPECS)
def test_scale_gradient_through_the_block_amax_matches_autograd(spec_name, estimator):
    spec = SCALE_GRAD_SPECS[spec_name]
    torch.manual_seed(1)
    x = torch.randn(16, 64) * torch.logspace(-2, 2, 64)
    g = torch.randn(16, 64)
    expected = surrogate_gradient(x, spec, estimator, g)
    x.requires_grad_(True)
    quantize(x, spec, -1, 0, estimator, "amax").backward(g)
    torch.testing.assert_close(x.grad, expected, rtol=1e-4, atol=1e-5)
    stopped = x.grad.clone()
    x.grad = None
    quantize(x, spec, -1, 0, estimator, "stop").backward(g)
    assert not torch.allclose(x.grad, stopped)  # the scale term is not negligible


def test_tied_maxima_share_the_scale_gradient():
    spec = SCALE_GRAD_SPECS["fp32"]
    x = torch.tensor([[3.0, -3.0, 1.1, 0.3, -2.2, 0.9, 1.7, 2.6]])
    g = torch.tensor([[0.5, 1.0, -2.0, 1.0, 0.7, -0.4, 1.3, 0.2]])
    expected = surrogate_gradient(x, spec, "ste", g)
    x.requires_grad_(True)
    quantize(x, spec, -1, 0, "ste", "amax").backward(g)
    torch.testing.assert_close(x.grad, expected)
    residual_sum = (g * (fake_quantize(x.detach(), spec) - x.detach())).sum()
    # by hand: each of the two maxima gets sign(t) / amax * sum(g * (y - t)) / 2
    assert x.grad[0, 0] == pytest.approx(0.5 + residual_sum.item() / 3 / 2, rel=1e-5)
    assert x.grad[0, 1] == pytest.approx(1.0 - residual_sum.item() / 3 / 2, rel=1e-5)


def test_zero_and_nan_blocks():
    spec = SCALE_GRAD_SPECS["fp32"]
    x = torch.cat([torch.zeros(8), torch.randn(8), torch.randn(8)]).reshape(1, 24)
    x[0, 17] = float("nan")
    x.requires_grad_(True)
    quantize(x, spec, -1, 0, "power", "amax").backward(torch.ones(1, 24))
    grad = x.grad[0]
    assert torch.isfinite(grad[:16]).all()
    assert torch.isnan(grad[16:]).all()
    # a zero block has no scale gradient: only the power derivative at a grid point, 1/k
    assert torch.allclose(grad[:8], torch.full((8,), 0.2))


def test_unknown_estimator_is_an_error():
    with pytest.raises(ValueError, match=r"unknown estimator 'lsq'.*'ste'"):
        quantize_for_training(torch.ones(1, 32), QuantSpec(), -1, 0, "lsq")
    with pytest.raises(ValueError, match=r"unknown scale_grad 'x'.*'amax'"):
        quantize_for_training(torch.ones(1, 32), QuantSpec(), -1, 0, "ste", "x")
