"""fake_quantize / quantize_detailed: layout, grids, scale rules, edge cases, errors."""

import dataclasses
import math
import random

import pytest
import torch

from fp4sweep.quant.codes import decode, encode
from fp4sweep.quant.formats import E2M1, E8M0, UE4M3, UE5M3
from fp4sweep.quant.dispatch import fake_quantize, quantize_detailed
from fp4sweep.quant.spec import QuantSpec
from fp4sweep.quant.transforms import invert_transform
from tests.quant.common import spec_id, wide_range

RULES = ("floor", "ceil", "nearest", "nvfp4", "nvfp4_torchao")
MXFP4 = QuantSpec.preset("mxfp4")
NVFP4 = QuantSpec.preset("nvfp4")


def all_specs():
    for rule in RULES:
        narrow = rule.startswith("nvfp4")  # the NVFP4 rules need narrow scale formats
        for scale in ("ue4m3", "ue5m3") if narrow else ("e8m0", "ue4m3", "ue5m3", "fp32"):
            for tensor_scale in (False, True):
                yield QuantSpec(scale=scale, block=16, scale_rule=rule, tensor_scale=tensor_scale)


SPECS = list(all_specs())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_shape_and_dtype_are_kept_and_math_is_float32(dtype):
    x = wide_range(8, 64).clamp(-6e4, 6e4).to(dtype)
    for spec in (MXFP4, NVFP4):
        y = fake_quantize(x, spec)
        assert y.shape == x.shape and y.dtype == dtype
        assert torch.equal(y, fake_quantize(x.float(), spec).to(dtype))


@pytest.mark.parametrize("spec", SPECS, ids=spec_id)
def test_results_lie_on_the_grids(spec):
    r = quantize_detailed(wide_range(16, 64), spec)
    encode(spec.elem_format, r.elements)  # raises unless every element is an E2M1 value
    if spec.scale != "fp32":
        encode(spec.scale_format, r.block_scale)
    assert torch.equal(r.dequantized, r.elements * r.scale)
    assert torch.equal(r.output, r.dequantized)  # no transform: output is the dequantized grid
    blocks = r.scale.reshape(16, 4, 16)
    assert torch.equal(blocks, blocks[..., :1].expand_as(blocks))


@pytest.mark.parametrize("spec", SPECS, ids=spec_id)
def test_error_is_bounded_by_the_grid_step(spec):
    x = wide_range(16, 64)
    r = quantize_detailed(x, spec)
    inside = ~r.saturated
    assert ((r.output - x).abs()[inside] <= r.step[inside] * (0.5 + 1e-6)).all()
    assert (r.step > 0).all()


def test_ceil_never_saturates_and_floor_does():
    x = wide_range(32, 64)
    for scale in ("e8m0", "ue5m3"):
        ceil = quantize_detailed(x, QuantSpec(scale=scale, scale_rule="ceil", tensor_scale=True))
        assert not ceil.saturated.any()
    floor = quantize_detailed(x, MXFP4)
    assert floor.saturated.any()  # OCP floor maps amax into [4, 8): values above 6 clip
    assert (floor.scaled.abs().amax(dim=-1) >= 4).all()


def test_ocp_floor_scale_is_the_amax_exponent_minus_emax():
    x = wide_range(8, 64)
    r = quantize_detailed(x, MXFP4)
    amax = x.reshape(8, 2, 32).abs().amax(-1, keepdim=True).expand(8, 2, 32).reshape(8, 64)
    assert torch.equal(r.block_scale, torch.exp2(torch.floor(torch.log2(amax)) - 2))


def test_tensor_scaling_puts_the_largest_block_scale_on_the_format_max():
    x = wide_range(16, 64)
    for spec, top in (
        (NVFP4, UE4M3.max),
        (QuantSpec(scale="ue5m3", block=16, scale_rule="nearest", tensor_scale=True), UE5M3.max),
        (QuantSpec(scale="e8m0", scale_rule="ceil", tensor_scale=True), 2.0**64),
    ):
        assert quantize_detailed(x, spec).block_scale.max().item() == top


def test_tensor_scaling_rescues_a_tensor_below_ue4m3_range():
    # amax / 6 is far below UE4M3's smallest scale 2**-9: single-level scaling flushes it.
    x = torch.randn(16, 64, generator=torch.Generator().manual_seed(0)) * 1e-4
    plain = QuantSpec(scale="ue4m3", block=16, scale_rule="nearest")
    two_level = dataclasses.replace(plain, tensor_scale=True)
    error = lambda spec: (fake_quantize(x, spec) - x).norm() / x.norm()
    assert error(plain) == 1.0 and error(two_level) < 0.15


@pytest.mark.parametrize("spec", SPECS, ids=spec_id)
def test_zero_blocks_quantize_to_zero_with_the_smallest_scale(spec):
    x = wide_range(4, 64)
    x[1, 16:32] = 0.0
    r = quantize_detailed(x, spec)
    assert torch.equal(r.output[1, 16:32], torch.zeros(16))
    torchao = spec.scale_rule == "nvfp4_torchao"  # clamps at the smallest normal instead
    minimum = spec.scale_format.min_normal if torchao else spec.scale_format.min_positive
    assert (r.block_scale[1, 16:32] == minimum).all()
    zero = quantize_detailed(torch.zeros(2, 32), spec)
    assert torch.equal(zero.output, torch.zeros(2, 32)) and torch.isfinite(zero.scale).all()


def test_underflowing_scales_become_the_smallest_positive_scale():
    tiny = torch.full((1, 32), 1e-41)  # a float32 subnormal
    r = quantize_detailed(tiny, MXFP4)
    assert (r.block_scale == E8M0.min_positive).all()
    x = torch.full((1, 16), 1e-4)  # 1e-4 / 6 is below half of UE4M3's 2**-9
    r = quantize_detailed(x, QuantSpec(scale="ue4m3", block=16, scale_rule="nearest"))
    assert (r.block_scale == 2.0**-9).all() and torch.equal(r.output, torch.zeros(1, 16))


@pytest.mark.parametrize("spec", SPECS, ids=spec_id)
def test_nan_is_confined_to_its_block(spec):
    x = wide_range(4, 64)
    clean = x.clone()
    x[2, 5] = math.nan
    clean[2, 5] = 0.0
    y, expected = fake_quantize(x, spec), fake_quantize(clean, spec)
    assert torch.isnan(y[2, :16]).all()
    outside = torch.ones_like(x, dtype=torch.bool)
    outside[2, :16] = False
    assert torch.equal(y[outside], expected[outside])


def test_nan_spreads_over_its_hadamard_run_only():
    spec = dataclasses.replace(NVFP4, transform="hadamard32")
    x = wide_range(2, 64)
    x[0, 40] = math.nan
    nan = torch.isnan(fake_quantize(x, spec))
    assert nan[0, 32:].all() and not nan[0, :32].any() and not nan[1].any()


def test_infinity_saturates_in_its_block():
    x = wide_range(2, 32)
    x[0, 3] = math.inf
    spec = QuantSpec(scale="ue5m3", block=16, scale_rule="nearest", tensor_scale=True)
    r = quantize_detailed(x, spec)
    assert r.block_scale[0, 0] == UE5M3.max and r.elements[0, 3] == E2M1.max
    assert torch.isfinite(r.output).all()
    finite = fake_quantize(torch.where(torch.isinf(x), 0.0, x), spec)
    assert torch.equal(r.output[:, 16:], finite[:, 16:]) and torch.equal(r.output[1], finite[1])
    # E8M0: 6 * 2**127 exceeds float32, so the saturated value overflows back to +inf.
    assert fake_quantize(x, MXFP4)[0, 3].item() == math.inf


@pytest.mark.parametrize("spec", [MXFP4, NVFP4, QuantSpec(scale="ue5m3", scale_rule="ceil")])
def test_either_axis_equals_the_transposed_tensor(spec):
    x = wide_range(64, 32)
    assert torch.equal(fake_quantize(x, spec, axis=0), fake_quantize(x.T.contiguous(), spec).T)
    x3 = wide_range(6, 64).reshape(2, 3, 64).permute(0, 2, 1)  # (2, 64, 3), axis 1
    expected = fake_quantize(x3.movedim(1, -1).contiguous(), spec).movedim(-1, 1)
    assert torch.equal(fake_quantize(x3, spec, axis=1), expected)


def test_2d_blocks_share_one_scale_per_tile():
    spec = dataclasses.replace(NVFP4, block_2d=True)
    x = wide_range(32, 64)
    r = quantize_detailed(x, spec)
    tiles = r.block_scale.reshape(2, 16, 4, 16).permute(0, 2, 1, 3).reshape(8, 256)
    assert torch.equal(tiles, tiles[:, :1].expand_as(tiles))
    tile_amax = x.abs().reshape(2, 16, 4, 16).amax(dim=(1, 3))
    assert torch.equal(r.block_amax[::16, ::16], tile_amax)
    # A square tile is symmetric in the two axes.
    assert torch.equal(fake_quantize(x, spec, axis=0), fake_quantize(x.T.contiguous(), spec).T)


def test_transform_output_is_in_the_original_basis():
    spec = dataclasses.replace(NVFP4, transform="rhadamard16", transform_seed=4)
    x, w = wide_range(16, 64, seed=1), wide_range(8, 64, seed=2)
    rx, rw = quantize_detailed(x, spec), quantize_detailed(w, spec)
    assert torch.equal(rx.output, invert_transform(rx.dequantized, spec))
    # The layer's plain matmul of the two outputs is the rotated-basis FP4 product, up to
    # float32 rounding relative to the sum of the magnitudes of the products.
    difference = rx.output @ rw.output.T - rx.dequantized @ rw.dequantized.T
    assert (difference.abs() <= 1e-5 * (rx.dequantized.abs() @ rw.dequantized.abs().T)).all()


def test_hadamard_larger_than_the_block_is_allowed_when_it_divides_the_axis():
    spec = QuantSpec(block=16, transform="hadamard64")
    assert fake_quantize(torch.randn(4, 128), spec).shape == (4, 128)
    with pytest.raises(ValueError, match="multiple of 64"):
        fake_quantize(torch.randn(4, 96), spec)


def test_detailed_fields():
    x = wide_range(8, 64)
    r = quantize_detailed(x, NVFP4)
    assert torch.equal(r.output, fake_quantize(x, NVFP4))
    for field in ("transformed", "dequantized", "scaled", "elements", "scale", "block_scale",
                  "block_amax", "step"):
        value = getattr(r, field)
        assert value.shape == x.shape and value.dtype == torch.float32, field
    assert r.saturated.dtype == torch.bool and r.tensor_scale.dim() == 0
    assert torch.equal(r.transformed, x)
    assert torch.equal(r.elements, torch.round(r.elements * 2) / 2)  # E2M1 grid is in halves
    assert torch.equal(r.saturated, r.scaled.abs() > 6)


def test_exact_e2m1_blocks_round_trip_for_every_e8m0_scale():
    """A block holding every E2M1 value times 2**k comes back unchanged, k = -127..125."""
    values = decode(E2M1, torch.arange(16))  # includes 6 (amax) and 4, so floor gives 2**k
    k = torch.arange(-127, 126, dtype=torch.float32).unsqueeze(1)
    x = values * torch.exp2(k)
    r = quantize_detailed(x, QuantSpec(block=16))
    assert torch.equal(r.block_scale[:, 0], torch.exp2(k[:, 0]))
    assert torch.equal(r.output, x)


@pytest.mark.parametrize("scale", ["ue4m3", "ue5m3"])
def test_exact_e2m1_blocks_round_trip_for_every_unsigned_scale(scale):
    spec = QuantSpec(scale=scale, block=16, scale_rule="nearest")
    codes = torch.arange(1, spec.scale_format.num_codes)
    scales = decode(spec.scale_format, codes)
    scales = scales[torch.isfinite(scales)].unsqueeze(1)
    x = decode(E2M1, torch.arange(16)) * scales
    r = quantize_detailed(x, spec)
    assert torch.equal(r.block_scale[:, 0], scales[:, 0])
    assert torch.equal(r.output, x)


def test_quantizing_twice_changes_nothing_for_power_of_two_scales():
    x = wide_range(16, 64)
    once = fake_quantize(x, MXFP4)
    assert torch.equal(fake_quantize(once, MXFP4), once)


def test_empty_tensor():
    assert fake_quantize(torch.empty(0, 32), NVFP4).shape == (0, 32)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: fake_quantize(torch.randn(4, 48), MXFP4),
         "length 48.*multiple of the block size 32"),
        (lambda: fake_quantize(torch.randn(48, 32), MXFP4, axis=0), "axis 0, length 48"),
        (lambda: fake_quantize(torch.randn(4, 32), dataclasses.replace(NVFP4, block_2d=True)),
         "both axes to be multiples of the block size 16"),
        (lambda: fake_quantize(torch.randn(2, 16, 16), dataclasses.replace(NVFP4, block_2d=True)),
         "2-d tensors"),
        (lambda: fake_quantize(torch.tensor(1.0), MXFP4), "0-d"),
        (lambda: fake_quantize(torch.ones(4, 32, dtype=torch.int32), MXFP4), "floating-point"),
        (lambda: fake_quantize(torch.randn(4, 32), MXFP4, axis=2), "axis 2 is out of range"),
        (lambda: fake_quantize(torch.randn(4, 32), "mxfp4"), "QuantSpec"),
        (lambda: fake_quantize(torch.randn(4, 32), MXFP4, seed=-1), "seed"),
    ],
)
def test_bad_inputs_raise_clear_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_result_carries_no_gradient():
    x = torch.randn(4, 32, requires_grad=True)
    assert not fake_quantize(x, MXFP4).requires_grad


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("spec", SPECS[::3] + [
    dataclasses.replace(NVFP4, rounding="sr", transform="rhadamard16", block_2d=True),
    QuantSpec(scale="ue5m3", scale_rule="ceil", rounding="sr", transform="hadamard64",
              tensor_scale=True),
], ids=spec_id)
def test_cuda_reference_equals_cpu_bit_for_bit(spec):
    x = wide_range(64, 256, seed=7)
    for axis in (0, 1):
        cpu = quantize_detailed(x, spec, axis=axis, seed=3)
        gpu = quantize_detailed(x.cuda(), spec, axis=axis, seed=3)
        for field in ("output", "elements", "block_scale", "scale"):
            assert torch.equal(getattr(gpu, field).cpu(), getattr(cpu, field)), field


def every_format_and_rule():
    """Each element format x scale format x scale rule, with the other settings varied."""
    choices = random.Random(0)
    for elem in ("e2m1", "e2m3", "e3m2", "e4m3", "e5m2", "int4"):
        for scale in ("e8m0", "fp32", "ue4m3", "ue5m3", "ue6m2", "ue3m4"):
            for rule in RULES:
                if rule.startswith("nvfp4") and scale in ("e8m0", "fp32", "ue6m2"):
                    continue
                yield QuantSpec(
                    elem=elem, scale=scale, scale_rule=rule,
                    block=choices.choice([8, 16, 32, 64]),
                    rounding=choices.choice(["rne", "sr"]),
                    transform=choices.choice(["none", "hadamard16", "rhadamard64"]),
                    tensor_scale=choices.choice([False, True]),
                )


@pytest.mark.parametrize("spec", list(every_format_and_rule()), ids=spec_id)
def test_every_format_and_rule_stays_on_its_grids(spec):
    x = wide_range(8, 128, seed=3)
    r = quantize_detailed(x, spec, seed=5)
    elem = spec.elem_format
    encode(elem, r.elements)
    assert torch.isfinite(r.output).all() and r.output.shape == x.shape
    assert torch.equal(r.dequantized, r.elements * r.scale)
    error = (r.dequantized - r.transformed).abs()
    bound = r.step * (0.5 if spec.rounding == "rne" else 1.0)
    slack = 1e-5 * (r.step + r.transformed.abs())  # float32 rounding of the scaled values
    assert (error <= bound + slack)[~r.saturated].all()
