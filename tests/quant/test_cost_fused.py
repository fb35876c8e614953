"""Hand-computed cases of the fused roofline overhead model, on a machine with round numbers.

One square layer, m = k = n = 1024: each of x, w and dy has N = 2**20 elements. Times below are
in units of N bytes at the machine's 1e12 B/s (N / 1e12 seconds), so N elements of 2 bytes
take 2 units and 1e13 instructions/s make one instruction per element 0.1 units.
"""

import dataclasses

import pytest

from fp4sweep.quant import GemmShape, Hardware, Recipe, overhead
from fp4sweep.quant.cost import TECHNIQUES

HW = Hardware(
    "unit", fp4_flops=1e15, fp8_flops=5e14, bf16_flops=2.5e14, vector_ops=1e13, memory_bytes=1e12
)
SHAPE = GemmShape(m=1024, k=1024, n=1024)
N = 2**20
UNIT = N / 1e12  # seconds

# An MXFP4 GEMM: 2 N k flops take 2 * 1024 * 1e12 / 1e15 = 2.048 units of compute; it reads two
# operands of 0.5 + 1/32 bytes per element and writes a 2-byte output: 3.0625 units of traffic.
MX_GEMM = max(2 * 1024 * 1e12 / 1e15, 2 * (0.5 + 1 / 32) + 2)
# MXFP4's quantizer per tensor: reads 2 bytes, writes two operands of 0.53125 bytes: 3.0625
# units of traffic against 2 * (5 + 4/32) = 10.25 instructions, 1.025 units: memory-bound.
MX_QUANT = max(2 * (5 + 4 / 32) * 0.1, 2 + 2 * (0.5 + 1 / 32))
BF16_GEMM = max(2 * 1024 * 1e12 / 2.5e14, 3 * 2)  # 8.192 units of compute, 6 of traffic
G = 3 * MX_GEMM  # the unit of every term: the MXFP4 step's GEMM time


def price(recipe, shapes=(SHAPE,), hardware=HW):
    return overhead(recipe, list(shapes), hardware)


def test_mxfp4_step_and_bf16_step_by_roofline():
    mx, bf16 = price(Recipe.preset("mxfp4")), price(Recipe.preset("bf16"))
    assert MX_GEMM == MX_QUANT == 3.0625
    assert mx.total == 0 and mx.reference == pytest.approx((3 * MX_GEMM + 3 * MX_QUANT) / G)  # 2
    assert bf16.total == pytest.approx((3 * BF16_GEMM - 3 * MX_GEMM - 3 * MX_QUANT) / G)
    row = bf16.as_dict()
    assert row["gemm_precision_fwd"] == pytest.approx((BF16_GEMM - MX_GEMM) / G)
    assert row["quantize_fwd"] == pytest.approx(-2 * MX_QUANT / G)  # x and w are not quantized
    assert row["quantize_bwd"] == pytest.approx(-MX_QUANT / G)  # nor dy
    assert bf16.vs_bf16 == pytest.approx(1.0)
    assert mx.vs_bf16 == pytest.approx(6 * 3.0625 / (3 * 8.192))  # 0.748: faster than bf16


def test_eight_random_bits_hide_under_the_memory_time():
    # each backward operand: 1 + 15/4 instructions; dy's kernel (two of them) 10.25 + 9.5 = 19.75
    # instructions per element, 1.975 units against its 3.0625 units of traffic: free
    assert price(Recipe.from_axes(rounding__bwd="sr", sr_bits=8)).total == pytest.approx(0.0)


def test_a_whole_random_word_makes_the_gradient_kernel_compute_bound():
    result = price(Recipe.from_axes(rounding__bwd="sr", sr_bits=24))
    # dy: 10.25 + 2 * (1 + 15) = 42.25 instructions, 4.225 units, 1.1625 over its traffic; x and
    # w have one SR operand each: 26.25 instructions, 2.625 units, still under 3.0625
    row = result.as_dict()
    assert row["stochastic_rounding_bwd"] == pytest.approx((4.225 - 3.0625) / G)
    assert row["stochastic_rounding_fwd"] == 0
    assert result.total == pytest.approx((4.225 - 3.0625) / G)
    assert result.arithmetic == pytest.approx(result.total)


def test_tensor_scaling_is_an_extra_read_per_tensor():
    result = price(Recipe.from_axes(tensor_scale=True))
    # per tensor an amax pass: 2 bytes read (2 units) against 2 max instructions (0.2 units);
    # the multiply per block scale hides in the quantizer's memory time
    row = result.as_dict()
    assert row["tensor_scaling_fwd"] == pytest.approx(2 * 2 / G)  # x and w
    assert row["tensor_scaling_bwd"] == pytest.approx(2 / G)  # dy
    assert result.memory == pytest.approx(result.total)


def test_a_layer_kept_in_high_precision_is_priced_as_bf16():
    kept = dataclasses.replace(SHAPE, high_precision=True)
    bf16 = price(Recipe.preset("bf16")).total
    assert price(Recipe.preset("nvfp4"), [kept]).total == pytest.approx(bf16)
    # beside an FP4 layer it costs that layer's bf16 GEMMs less its quantizers
    both = price(Recipe.preset("mxfp4"), [SHAPE, kept])
    assert both.total == pytest.approx((3 * BF16_GEMM - 3 * MX_GEMM - 3 * MX_QUANT) / (2 * G))


def test_without_fp4_tensor_cores_quantizers_are_pure_cost():
    emulated = dataclasses.replace(HW, fp4_flops=None)
    mx = price(Recipe.preset("mxfp4"), hardware=emulated)
    # every GEMM runs in bf16 on 2-byte operands (8.192 units); each tensor's quantizer writes
    # two 2-byte images: 2 + 4 = 6 units of traffic
    assert mx.vs_bf16 == pytest.approx((3 * 8.192 + 3 * 6) / (3 * 8.192))
    assert price(Recipe.preset("bf16"), hardware=emulated).as_dict()["gemm_precision_bwd"] == 0


def test_terms_add_up():
    for name in ("nvfp4", "paper_best"):
        row = price(Recipe.preset(name)).as_dict()
        parts = [row[f"{t}_{p}"] for t in TECHNIQUES for p in ("fwd", "bwd")]
        assert sum(parts) == pytest.approx(row["model"])
        assert row["model_arith"] + row["model_memory"] == pytest.approx(row["model"])
        assert row["model_fwd"] + row["model_bwd"] == pytest.approx(row["model"])


def test_a_transform_hides_under_memory_until_rounding_tips_the_kernel():
    # a random-sign Hadamard-32 on every operand: 6 instructions each, x's kernel 10.25 + 12 =
    # 22.25 instructions (2.225 units) under 3.0625 units of traffic: free
    assert price(Recipe.from_axes(transform="rhadamard32")).total == pytest.approx(0.0)
    # with 24-bit SR on the backward operands dy's kernel needs 10.25 + 12 + 32 = 54.25 (5.425
    # units): the transform is still free (added first), SR carries the 2.3625 units over traffic
    row = price(Recipe.from_axes(transform="rhadamard32", rounding__bwd="sr", sr_bits=24)).as_dict()
    assert row["hadamard_bwd"] == pytest.approx(0.0)
    assert row["stochastic_rounding_bwd"] == pytest.approx((5.425 - 3.0625) / G)
