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


# -- the techniques beyond the paper's --------------------------------------------------------

_NVFP4_SCALES = dict(scale="ue4m3", block=16, scale_rule="nvfp4")


def test_four_over_six_adds_a_second_candidate_per_element():
    row = price(Recipe.from_axes(**_NVFP4_SCALES, scale_select="4over6_mse")).as_dict()
    # each tensor's kernel, two operands: quantize 5 + 4/32, UE4M3 per 16 0.25 (scale_format),
    # 4 over 6 11 + 5/16: 33.375 instructions, 3.3375 units, against 3.0625 + 2/32 units of
    # traffic (the extra scale bytes): 4 over 6 carries the 0.2125 units over it
    assert row["scale_select_fwd"] == pytest.approx(2 * 0.2125 / G)  # x and w
    assert row["scale_select_bwd"] == pytest.approx(0.2125 / G)  # dy
    plain = price(Recipe.from_axes(**_NVFP4_SCALES)).as_dict()
    assert plain["scale_select_fwd"] == plain["scale_select_bwd"] == 0


def test_a_prescale_is_a_multiply_per_element_and_a_divide_per_block():
    # 8-bit SR with the 16/17 pre-scale: dy's kernel 2 * (5.125 + 4.75 + 1 + 1/32) = 21.8125
    # instructions (2.18 units) under its 3.0625 units of traffic: free
    assert price(Recipe.from_axes(rounding__bwd="sr", sr_bits=8, prescale__bwd="16/17")).total == 0
    # with 24 bits dy's kernel is compute-bound: 2 * (5.125 + 16 + 1.03125) = 44.3125, 4.43125
    # units; the pre-scale's 0.20625 of them come on top of SR's 4.225
    row = price(Recipe.from_axes(rounding__bwd="sr", sr_bits=24, prescale__bwd="16/17")).as_dict()
    assert row["stochastic_rounding_bwd"] == pytest.approx((4.43125 - 3.0625) / G)


def test_stochastic_scale_rounding_draws_a_word_per_block():
    # dy: two UE4M3 operands per 16 with 24-bit element SR; scale SR adds 16 instructions per
    # block of 16, 1 per element each: SR's term carries 2 * (16 + 1) = 34 instructions over
    # quantize's 10.25 (4.425 units, 1.3625 over the 3.0625 of traffic), scale_format the rest
    axes = dict(**_NVFP4_SCALES, rounding__dy="sr", sr_bits__dy=24)
    row = price(Recipe.from_axes(**axes, scale_rounding__dy="sr")).as_dict()
    assert row["stochastic_rounding_bwd"] == pytest.approx(1.3625 / G)
    # scale_format: the kernel's last 0.05 units, and each backward GEMM's 2/32 of scale bytes
    assert row["scale_format_bwd"] == pytest.approx((0.05 + 2 * 0.0625) / G)
    assert price(Recipe.from_axes(**axes)).as_dict()["stochastic_rounding_bwd"] == pytest.approx(1.1625 / G)


def test_a_held_amax_pays_its_pass_once_in_d_steps():
    row = price(Recipe.from_axes(tensor_scale=True, amax="hold50")).as_dict()
    # the amax pass (2 bytes read: 2 units) runs on one step in 50
    assert row["tensor_scaling_fwd"] == pytest.approx(2 * 2 / 50 / G)
    assert row["tensor_scaling_bwd"] == pytest.approx(2 / 50 / G)


def test_a_history_amax_is_taken_on_the_fly():
    # max / most_recent: no pass; one max per element and operand inside the quantizer, hidden
    # under its memory time here
    for amax in ("max16", "most_recent"):
        assert price(Recipe.from_axes(tensor_scale=True, amax=amax)).total == pytest.approx(0.0)
    # in a compute-bound kernel it shows: dy with 24-bit SR (4.225 units) + 2 * (1 + 1/32)
    # instructions of tensor scaling = 4.43125 units
    row = price(Recipe.from_axes(tensor_scale=True, amax="max16", rounding__bwd="sr", sr_bits=24)).as_dict()
    assert row["tensor_scaling_bwd"] == pytest.approx(0.20625 / G)


def test_per_step_signs_cost_a_random_word_per_gemm_call():
    fixed = price(Recipe.from_axes(transform="rhadamard32")).as_dict()
    per_step = price(Recipe.from_axes(transform="rhadamard32", sign_policy="per_step")).as_dict()
    word = 15 / 1e13 / UNIT  # 32 signs, one Philox word: 1.4e-6 units
    assert per_step["hadamard_fwd"] - fixed["hadamard_fwd"] == pytest.approx(word / G)
    assert per_step["hadamard_bwd"] - fixed["hadamard_bwd"] == pytest.approx(2 * word / G)


def test_the_unfused_bound_prices_the_new_lines_too():
    def unfused(**axes):
        return overhead(Recipe.from_axes(**axes), [SHAPE], HW, model="unfused").as_dict()

    current, held = unfused(tensor_scale=True), unfused(tensor_scale=True, amax="hold50")
    assert held["tensor_scaling_fwd"] < current["tensor_scaling_fwd"] / 20
    selected = unfused(**_NVFP4_SCALES, scale_select="4over6_mae")
    # six operands of N elements at 11 + 5/16 instructions (1.13125 units each), over the unfused
    # unit: three GEMMs by tensor-core time alone, 2.048 units each
    assert selected["scale_select_fwd"] + selected["scale_select_bwd"] == pytest.approx(6 * 1.13125 / (3 * 2.048))
