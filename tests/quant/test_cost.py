"""Hand-computed cases of the unfused overhead model, on a machine with round numbers."""

import math

import pytest

from fp4sweep.quant import GemmShape, Hardware, Recipe, overhead
from fp4sweep.quant.cost import TECHNIQUES

HW = Hardware(
    "unit", fp4_flops=1e15, fp8_flops=5e14, bf16_flops=2.5e14, vector_ops=1e13,
    memory_bytes=1e12, high_precision_bytes=2,
)
SHAPE = GemmShape(m=256, k=128, n=64)
X, W, DY = 256 * 128, 64 * 128, 256 * 64  # elements of x, w, dy
STEP_S = 3 * 2 * 256 * 128 * 64 / 1e15  # the step's three FP4 GEMMs


def fraction(ops=0.0, data=0.0):
    return (ops / 1e13 + data / 1e12) / STEP_S


def costs(recipe, shapes=(SHAPE,)):
    return overhead(recipe, list(shapes), HW, model="unfused")


def test_plain_mxfp4_is_the_reference_and_costs_nothing():
    result = costs(Recipe.preset("mxfp4"))
    assert result.total == 0 and result.points == 0
    row = result.as_dict()
    assert row.pop("vs_bf16") == pytest.approx(1 / 4)  # bf16's GEMMs run at a quarter the rate
    assert set(row.values()) == {0.0}


def test_bf16_runs_every_gemm_at_a_quarter_of_the_fp4_rate():
    result = costs(Recipe.preset("bf16"))
    assert result.forward == pytest.approx(1.0)  # 3x the forward GEMM's FP4 time, which is 1/3
    assert result.backward == pytest.approx(2.0)
    assert result.total == pytest.approx(3.0) and result.points == 0


def test_eight_bit_elements_run_at_the_fp8_rate():
    assert costs(Recipe.from_axes(elem="e4m3")).total == pytest.approx(1.0)


def test_tensor_scaling_reads_each_tensor_once_more():
    result = costs(Recipe.from_axes(tensor_scale=True))
    # per operand of n elements: a max per element and a multiply per 32-element block scale,
    # and one read of its 2-byte elements
    fwd = X + W
    bwd = DY + W + DY + X
    assert result.forward == pytest.approx(fraction(fwd * (1 + 1 / 32), 2 * fwd))
    assert result.backward == pytest.approx(fraction(bwd * (1 + 1 / 32), 2 * bwd))
    assert result.points == 1


def test_stochastic_rounding_costs_its_random_bits():
    result = costs(Recipe.from_axes(rounding__bwd="sr", sr_bits=8))
    # 8 random bits = a quarter of a 32-bit word at 15 ops, plus the add that applies them
    assert result.forward == 0
    assert result.backward == pytest.approx(fraction((DY + W + DY + X) * (1 + 15 / 4)))


@pytest.mark.parametrize("transform, ops", [("hadamard32", 5), ("rhadamard32", 6)])
def test_hadamard_costs_log2_k_stages_and_a_sign(transform, ops):
    result = costs(Recipe.from_axes(transform=transform))
    assert result.forward == pytest.approx(fraction(ops * (X + W)))
    assert result.backward == pytest.approx(fraction(ops * (DY + W + DY + X)))


def test_scale_bytes_relative_to_one_byte_per_32_elements():
    result = costs(Recipe.from_axes(scale="ue4m3", block=16, scale_rule="nearest", block_2d__w=True))
    # write + read of one byte per 16 elements (x, dy) or per 16x16 tile (w), minus MX's 1/32;
    # each scale beyond MX's one per 32 elements costs 4 ops, one with mantissa bits 2 more
    def operand(n, per_scale):
        ops = 4 * (n / per_scale - n / 32) + 2 * n / per_scale
        return fraction(ops, 2 * (n / per_scale - n / 32))

    assert result.forward == pytest.approx(operand(X, 16) + operand(W, 256))
    assert result.backward == pytest.approx(2 * operand(DY, 16) + operand(W, 256) + operand(X, 16))
    assert result.points == 2  # scale format and 2-D weight blocks


def test_larger_blocks_and_fp32_scales():
    assert costs(Recipe.from_axes(block=64)).total < 0
    fp32 = costs(Recipe.from_axes(scale="fp32", scale_rule="nearest"))
    n = 2 * (X + W + DY)  # every operand once, all six
    assert fp32.total == pytest.approx(fraction(2 * n / 32, 2 * (4 * n / 32 - n / 32)))


def test_estimator_and_scale_gradient_in_the_backward_pass():
    recipe = Recipe.from_axes(transform="hadamard16", estimator="power", scale_grad="amax")
    result = costs(recipe)
    quantize_fwd = 4 * (X + W)  # log2(16) per element
    quantize_bwd = 4 * (DY + W + DY + X)
    fwd_operands = X + W
    estimator = fraction(10 * fwd_operands, (4 + 2) * fwd_operands)  # gradient r/w + operand
    scale_grad = fraction(5 * fwd_operands)  # its gradient pass and re-read are the estimator's
    transforms = fraction(2 * 4 * fwd_operands)  # gradient into the rotated basis and back
    assert result.forward == pytest.approx(fraction(quantize_fwd))
    assert result.backward == pytest.approx(fraction(quantize_bwd) + estimator + scale_grad + transforms)
    row = result.as_dict()
    assert row["estimator_bwd"] == pytest.approx(estimator)
    assert row["scale_grad_bwd"] == pytest.approx(scale_grad)
    assert row["estimator_fwd"] == 0
    assert result.points == 3


def test_clipped_ste_reads_a_one_bit_mask():
    result = costs(Recipe.from_axes(estimator="clipped_ste"))
    assert result.backward == pytest.approx(fraction(X + W, (4 + 2 / 8) * (X + W)))


def test_fractions_weight_layers_by_their_gemm_time():
    recipe = Recipe.from_axes(tensor_scale=True, rounding__bwd="sr")
    small, big = GemmShape(64, 32, 32), GemmShape(256, 128, 64, count=3)
    a, b = costs(recipe, [small]), costs(recipe, [big])
    both = costs(recipe, [small, big])
    weight_a, weight_b = small.flops_per_pass, big.flops_per_pass
    expected = (a.total * weight_a + b.total * weight_b) / (weight_a + weight_b)
    assert both.total == pytest.approx(expected)
    # count multiplies work and GEMM time alike
    assert b.total == pytest.approx(costs(recipe, [GemmShape(256, 128, 64)]).total)


def test_as_dict_is_flat_and_adds_up():
    row = costs(Recipe.preset("nvfp4")).as_dict()
    assert all(isinstance(k, str) and isinstance(v, float) for k, v in row.items())
    parts = [row[f"{t}_{p}"] for t in TECHNIQUES for p in ("fwd", "bwd")]
    assert math.fsum(parts) == pytest.approx(row["model"])
    assert row["model_fwd"] + row["model_bwd"] == pytest.approx(row["model"])
    assert row["model_arith"] + row["model_memory"] == pytest.approx(row["model"])
    assert row["points"] == 5  # hadamard, SR, tensor scaling, UE4M3, 2-D weight blocks


def test_preset_points():
    assert costs(Recipe.preset("paper_best")).points == 4


def test_needs_gemm_shapes_and_a_known_model():
    with pytest.raises(ValueError, match="at least one GemmShape"):
        overhead(Recipe.preset("mxfp4"), [])
    with pytest.raises(ValueError, match="unknown overhead model 'roofline'; valid: \\['fused', 'unfused'\\]"):
        overhead(Recipe.preset("mxfp4"), [SHAPE], model="roofline")


def test_stochastic_rounding_draws_a_whole_word_above_16_bits():
    result = costs(Recipe.from_axes(rounding__bwd="sr", sr_bits=24))
    assert result.backward == pytest.approx(fraction((DY + W + DY + X) * (1 + 15)))


def test_a_layer_kept_in_high_precision_is_priced_as_bf16():
    kept = GemmShape(m=256, k=128, n=64, high_precision=True)
    assert costs(Recipe.preset("nvfp4"), [kept]).total == pytest.approx(costs(Recipe.preset("bf16")).total)
    assert costs(Recipe.preset("nvfp4"), [kept]).points == 5  # the recipe's, whatever a layer runs


def test_vs_bf16_compares_step_times():
    # unfused: the MXFP4 step is its GEMM time (1 unit), bf16 costs 3 more
    assert costs(Recipe.preset("bf16")).vs_bf16 == pytest.approx(1.0)
    assert costs(Recipe.preset("mxfp4")).vs_bf16 == pytest.approx(1 / 4)
    assert costs(Recipe.from_axes(elem="e4m3")).vs_bf16 == pytest.approx(2 / 4)
