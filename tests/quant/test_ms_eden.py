"""MS-EDEN (Quartet II): the block scales corrected over each random Hadamard run and rounded
stochastically, the elements to nearest. Hand-worked corrections, unbiasedness over many
draws, and the kernels bit for bit against the reference."""

import dataclasses

import pytest
import torch

from fp4sweep.quant import QuantSpec, quantize_detailed
from fp4sweep.quant.formats import element_format, scale_format
from fp4sweep.quant.reference import fake_quantize
from fp4sweep.quant.rounding import round_signed
from fp4sweep.quant.scaling import ScaledBlocks, ms_eden, pairwise_sum

SPEC = QuantSpec(scale="ue4m3", block=16, scale_rule="nvfp4", tensor_scale=True,
                 tensor_target_scale=256, transform="rhadamard32", scale_rounding="ms_eden")
UE4M3 = scale_format("ue4m3")


def _blocks(v: list[list[float]], s: list[float]) -> tuple[ScaledBlocks, torch.Tensor]:
    """Two blocks of two elements (one run of 4), tensor scale 1, and their nearest elements."""
    elements = torch.tensor(v)
    scale = torch.tensor(s)[:, None]
    scaled = ScaledBlocks(elements=elements, scale=scale, decode=scale,
                          tensor_scale=torch.tensor(1.0))
    return scaled, round_signed(element_format("e2m1"), elements, "nearest")


def test_the_correction_by_hand():
    # v = (1.2, -2.6 | 0.2, 4.8) round to q = (1, -3 | 0, 4):
    # sum v^2 = (1.44 + 6.76) + (0.04 + 23.04) = 31.28, sum v q = (1.2 + 7.8) + (0 + 19.2) = 28.2,
    # c = 1.10922; scales 1 and 2 become 1.10922 and 2.21844, each 0.8738 of the way from its
    # UE4M3 neighbour below (1, 2) to the one above (1.125, 2.25).
    scaled, q = _blocks([[1.2, -2.6], [0.2, 4.8]], [1.0, 2.0])
    assert q.tolist() == [[1.0, -3.0], [0.0, 4.0]]
    c = float(torch.tensor(31.28) / torch.tensor(28.2))
    assert c == pytest.approx(1.109220, abs=1e-6)
    up = ms_eden(scaled, q, UE4M3, 4, torch.full((2, 1), 0.5))
    assert up.scale.flatten().tolist() == [1.125, 2.25]
    assert torch.equal(up.decode, up.scale)  # tensor scale 1: d' = s'
    down = ms_eden(scaled, q, UE4M3, 4, torch.full((2, 1), 0.9))
    assert down.scale.flatten().tolist() == [1.0, 2.0]
    # P(up) = 0.8738: u just below goes up, just above goes down.
    p = (c - 1.0) / 0.125
    assert ms_eden(scaled, q, UE4M3, 4, torch.full((2, 1), p - 1e-3)).scale[0, 0] == 1.125
    assert ms_eden(scaled, q, UE4M3, 4, torch.full((2, 1), p + 1e-3)).scale[0, 0] == 1.0


def test_a_run_that_rounds_to_zero_keeps_its_scale():
    # Every element below 0.25 rounds to 0: the denominator is 0, the correction 1.
    scaled, q = _blocks([[0.1, -0.2], [0.05, 0.0]], [1.0, 0.5])
    kept = ms_eden(scaled, q, UE4M3, 4, torch.full((2, 1), 0.3))
    assert kept.scale.flatten().tolist() == [1.0, 0.5]


def test_the_scale_is_unbiased_over_its_draws():
    scaled, q = _blocks([[1.2, -2.6], [0.2, 4.8]], [1.0, 2.0])
    u = (torch.arange(4096, dtype=torch.float32) + 0.5) / 4096  # an even grid of draws
    drawn = torch.stack([ms_eden(scaled, q, UE4M3, 4, torch.full((2, 1), float(x))).scale[:, 0]
                         for x in u[::16]])
    c = float(torch.tensor(31.28) / torch.tensor(28.2))
    torch.testing.assert_close(drawn.mean(0), torch.tensor([c, 2 * c]), rtol=2e-3, atol=0)


def test_pairwise_sum_order():
    values = torch.tensor([1.0, 2.0**-24, 2.0**-24, 2.0**-24])
    # (1 + 2**-24) + (2**-24 + 2**-24) = 1 + 2**-23: a running sum would stay at 1.
    assert pairwise_sum(values).item() == 1.0 + 2.0**-23


def _mean_projection(spec: QuantSpec, x: torch.Tensor, draws: int) -> tuple[float, float]:
    """The mean over ``draws`` of beta = <y, x> / <x, x> for y the quantized ``x`` with fresh
    Hadamard signs and rounding draws, and its standard error."""
    betas = []
    for i in range(draws):
        y = fake_quantize(x, dataclasses.replace(spec, transform_seed=i), seed=i).double()
        betas.append(float((y * x).sum() / (x * x).sum()))
    betas = torch.tensor(betas, dtype=torch.float64)
    return float(betas.mean()), float(betas.std() / draws**0.5)


def test_unbiased_over_rotations_and_scale_draws():
    # Tolerance: the mean projection of the output on the input lies within 4 standard errors
    # of 1 (about 0.0012 here). Rounding the same blocks to nearest instead, with the same
    # random rotations, shrinks it measurably.
    x = torch.randn(1, 128, generator=torch.Generator().manual_seed(0))
    beta, error = _mean_projection(SPEC, x, 1500)
    assert abs(beta - 1) < 4 * error
    nearest, nearest_error = _mean_projection(dataclasses.replace(SPEC, scale_rounding="nearest"),
                                              x, 1500)
    assert nearest < 1 - 4 * nearest_error


def test_the_detailed_fields_follow_the_corrected_scale():
    x = torch.randn(8, 64, generator=torch.Generator().manual_seed(1))
    r = quantize_detailed(x, SPEC, seed=3)
    nearest = quantize_detailed(x, dataclasses.replace(SPEC, scale_rounding="nearest"), seed=3)
    # Elements are those of the nearest scale; only the scales move, by less than a step.
    assert torch.equal(r.elements, nearest.elements)
    torch.testing.assert_close(r.dequantized, r.elements * r.scale, rtol=0, atol=0)
    ratio = r.block_scale / nearest.block_scale
    assert ((ratio > 0.75) & (ratio < 1.5)).all()
    assert not torch.equal(r.block_scale, nearest.block_scale)


def test_where_it_applies():
    assert QuantSpec.from_dict(SPEC.to_dict()) == SPEC
    assert SPEC.to_dict()["scale_rounding"] == "ms_eden"
    for bad in (dict(transform="hadamard32"), dict(transform="none"),
                dict(transform="rhadamard16", block=32),
                dict(rounding="sr"), dict(scale_select="4over6_mse"),
                dict(scale_rule="nearest", tensor_target_scale=0)):
        with pytest.raises(ValueError, match="scale_rounding='ms_eden' corrects"):
            dataclasses.replace(SPEC, **bad)


def _quartet_backward(scale_rounding: str):
    from fp4sweep.quant.recipe import Recipe

    return Recipe.from_axes({"scale": "ue4m3", "block": "16", "scale_rule": "nvfp4",
                             "tensor_scale": "fp32", "transform@bwd": "rhadamard32",
                             "scale_rounding@bwd": scale_rounding})


def test_an_axis_option_on_the_backward_operands():
    recipe = _quartet_backward("ms_eden")
    assert [recipe.dgrad_dy.scale_rounding, recipe.wgrad_x.scale_rounding] == ["ms_eden"] * 2
    assert recipe.fwd_x.scale_rounding == "nearest"
    assert "scale_rounding" not in recipe.to_dict()["fwd_x"]


def test_the_cost_line():
    from fp4sweep.quant.cost import EDEN_OPS, OPS_PER_RANDOM_WORD, rounding_ops

    # Per element, blocks of 16 and runs of 32: a random word and an add per scale, the
    # correction's 4, a division per run and a multiply per scale.
    expected = (1 + OPS_PER_RANDOM_WORD) / 16 + EDEN_OPS + 1 / 32 + 1 / 16
    assert rounding_ops(SPEC) == pytest.approx(expected)
    assert rounding_ops(dataclasses.replace(SPEC, scale_rounding="nearest")) == 0.0
    from fp4sweep.quant import GemmShape, overhead

    shapes = [GemmShape(m=4096, k=1024, n=1024)]
    eden = overhead(_quartet_backward("ms_eden"), shapes)
    nearest = overhead(_quartet_backward("nearest"), shapes)
    assert eden.total > nearest.total
    assert eden.as_dict()["stochastic_rounding_bwd"] > nearest.as_dict()["stochastic_rounding_bwd"]


def _layer_gradient_projections(spec: QuantSpec, steps: int) -> dict[str, tuple[float, float]]:
    """Over ``steps`` backward passes of one QuantLinear (forward unquantized, the backward
    operands quantized by ``spec``, Hadamard signs redrawn every step): the mean and standard
    error of each gradient's projection on the exact gradient, <g, g*> / <g*, g*>."""
    from fp4sweep.quant.layers import QuantLinear
    from fp4sweep.quant.recipe import Recipe

    recipe = Recipe(dgrad_dy=spec, dgrad_w=spec, wgrad_dy=spec, wgrad_x=spec,
                    sign_policy="per_step")
    g = torch.Generator().manual_seed(0)
    layer = QuantLinear(64, 64, bias=False, recipe=recipe, seed=1)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(64, 64, generator=g))
    x, dy = torch.randn(32, 64, generator=g), torch.randn(32, 64, generator=g)
    exact = {"dx": (dy @ layer.weight.detach()).double(), "dw": (dy.T @ x).double()}
    betas: dict[str, list[float]] = {"dx": [], "dw": []}
    for _ in range(steps):
        xi = x.clone().requires_grad_(True)
        layer.weight.grad = None
        layer(xi).backward(dy)
        for name, grad in (("dx", xi.grad), ("dw", layer.weight.grad)):
            betas[name].append(float((grad.double() * exact[name]).sum() / exact[name].square().sum()))
    return {name: (float(torch.tensor(b).mean()), float(torch.tensor(b).std()) / steps**0.5)
            for name, b in betas.items()}


def test_a_layers_gradients_are_unbiased_with_signs_redrawn_every_step():
    # Quartet II's backward: both backward GEMMs' operands by MS-EDEN, rotations redrawn each
    # step. Each gradient's mean projection on the exact one lies within 4 standard errors
    # (about 0.001) of 1; rounding the scales to nearest instead shrinks both by about 1 %.
    for name, (beta, error) in _layer_gradient_projections(SPEC, 300).items():
        assert abs(beta - 1) < 4 * error, name
    nearest = dataclasses.replace(SPEC, scale_rounding="nearest")
    for name, (beta, error) in _layer_gradient_projections(nearest, 300).items():
        assert beta < 1 - 4 * error, name
