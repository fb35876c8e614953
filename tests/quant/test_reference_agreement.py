"""Element-for-element agreement with independent implementations, on wide-range inputs.

- OCP MX (MXFP4, MXFP6, MXFP8): gfloat's ``quantize_block`` with each scale rule given as its
  ``compute_scale`` callable (gfloat ships the OCP floor rule, ``compute_scale_amax``).
- UE4M3 / UE5M3 block scales: gfloat's ``round_ndarray`` for the scale and the elements.
- NVFP4: TransformerEngine's reference quantizer and torchao's ``nvfp4_quantize``, each
  re-implemented below operation for operation from its source, with torch's own float8_e4m3fn
  cast for the block scale and TransformerEngine's E2M1 threshold table for the elements.
"""

import dataclasses

import numpy as np
import pytest
import torch
from gfloat import RoundMode, compute_scale_amax, quantize_block, round_ndarray
from gfloat.formats import (
    format_info_mxfp4_e2m1,
    format_info_mxfp6_e2m3,
    format_info_mxfp6_e3m2,
    format_info_mxfp8_e4m3,
    format_info_mxfp8_e5m2,
    format_info_ocp_e2m1,
    format_info_ocp_e8m0,
)

from fp4sweep.quant.dispatch import quantize_detailed
from fp4sweep.quant.spec import QuantSpec
from tests.quant.common import GFLOAT_UE4M3, GFLOAT_UE5M3, wide_range

FLT_MAX = torch.finfo(torch.float32).max


# -- OCP MX against gfloat --------------------------------------------------------------------

def _e8m0_scale(mode: RoundMode):
    """A gfloat compute_scale callable: amax / elem_max rounded in E8M0 (exact real quotient)."""

    def compute_scale(emax: int, vals: np.ndarray, elem_max: float) -> float:
        amax = np.max(np.abs(vals))
        ideal = np.array([amax / elem_max], dtype=np.float64)
        scale = round_ndarray(format_info_ocp_e8m0, ideal, mode, sat=True)[0]
        return max(float(scale), 2.0**-127)

    return compute_scale


MX_FORMATS = {
    "e2m1": format_info_mxfp4_e2m1,
    "e2m3": format_info_mxfp6_e2m3,
    "e3m2": format_info_mxfp6_e3m2,
    "e4m3": format_info_mxfp8_e4m3,
    "e5m2": format_info_mxfp8_e5m2,
}
GFLOAT_RULES = {
    "floor": lambda emax, vals, elem_max: compute_scale_amax(emax, vals),
    "ceil": _e8m0_scale(RoundMode.TowardPositive),
    "nearest": _e8m0_scale(RoundMode.TiesToEven),
}


@pytest.mark.parametrize("rule", list(GFLOAT_RULES))
@pytest.mark.parametrize("elem", list(MX_FORMATS))
def test_mx_formats_match_gfloat(elem, rule):
    block_format = MX_FORMATS[elem]
    x = wide_range(8, 256, seed=len(elem) + len(rule))
    spec = QuantSpec(elem=elem, scale="e8m0", block=32, scale_rule=rule)
    ours = quantize_detailed(x, spec).output
    elem_max = block_format.etype.max
    compute_scale = lambda emax, vals: GFLOAT_RULES[rule](emax, vals, elem_max)
    blocks = x.double().numpy().reshape(-1, 32)
    expected = np.stack([quantize_block(block_format, b, compute_scale) for b in blocks])
    assert np.array_equal(ours.double().numpy(), expected.reshape(x.shape))


# -- UE4M3 / UE5M3 scales against gfloat --------------------------------------------------------

UE_RULES = {
    "floor": RoundMode.TowardZero,
    "ceil": RoundMode.TowardPositive,
    "nearest": RoundMode.TiesToEven,
}


@pytest.mark.parametrize("rule", list(UE_RULES))
@pytest.mark.parametrize("scale", ["ue4m3", "ue5m3"])
def test_unsigned_scale_formats_match_gfloat(scale, rule):
    scale_info = {"ue4m3": GFLOAT_UE4M3, "ue5m3": GFLOAT_UE5M3}[scale]
    spec = QuantSpec(scale=scale, block=16, scale_rule=rule)
    x = wide_range(16, 128, seed=3)
    if scale == "ue4m3":
        x = x * 1e-2  # keep most blocks inside UE4M3's range (2**-9 .. 448 times 6)
    r = quantize_detailed(x, spec)

    blocks = x.numpy().reshape(-1, 16)
    amax = np.abs(blocks).max(axis=1, keepdims=True).astype(np.float64)
    ideal = amax / 4.0 if rule == "floor" else amax / 6.0  # exact real quotients
    block_scale = round_ndarray(scale_info, ideal, UE_RULES[rule], sat=True)
    block_scale = np.maximum(block_scale, spec.scale_format.min_positive)
    # The elements are defined as the float32 quotient of value and scale (see scaling.py).
    scaled = (blocks / block_scale.astype(np.float32)).astype(np.float64)
    elements = round_ndarray(format_info_ocp_e2m1, scaled, RoundMode.TiesToEven, sat=True)

    per_element = np.broadcast_to(block_scale, blocks.shape)
    assert np.array_equal(r.block_scale.numpy().reshape(-1, 16), per_element)
    assert np.array_equal(r.elements.double().numpy().reshape(-1, 16), elements)
    assert np.array_equal(r.output.double().numpy().reshape(-1, 16), elements * block_scale)


# -- NVFP4: TransformerEngine and torchao ----------------------------------------------------

def e2m1_by_thresholds(x: torch.Tensor) -> torch.Tensor:
    """TransformerEngine's cast_to_fp4x2 decision table (round to nearest, ties to even)."""
    a = x.abs()
    value = torch.zeros_like(a)
    value[(a > 0.25) & (a < 0.75)] = 0.5
    value[(a >= 0.75) & (a <= 1.25)] = 1.0
    value[(a > 1.25) & (a < 1.75)] = 1.5
    value[(a >= 1.75) & (a <= 2.5)] = 2.0
    value[(a > 2.5) & (a < 3.5)] = 3.0
    value[(a >= 3.5) & (a <= 5.0)] = 4.0
    value[a > 5.0] = 6.0
    return torch.copysign(value, x)


def _tile_amax(x: torch.Tensor, tile_rows: int) -> torch.Tensor:
    """amax of each tile_rows x 16 tile, repeated over the tile's elements."""
    m, n = x.shape
    tiles = x.abs().reshape(m // tile_rows, tile_rows, n // 16, 16)
    amax = tiles.amax(dim=(1, 3), keepdim=True).expand_as(tiles)
    return amax.reshape(m, n)


def transformer_engine_nvfp4(x: torch.Tensor, tile_rows: int):
    """TransformerEngine's NVFP4 quantizer (custom_recipes/quantization_nvfp4.py,
    _quantize_blockwise_reference, fp32 path; global encode scale as
    compute_global_encode_scaling_factor_FP4 in common/cast/nvfp4/core_nvfp4.cuh).

    Returns the E2M1 element values, the E4M3 block scales (per element, as float32) and the
    global decode scale.
    """
    fp4_max = torch.tensor(6.0)
    fp8_max = torch.tensor(448.0)
    flt_max = torch.tensor(FLT_MAX)
    global_amax = x.abs().max()
    global_encode = torch.min(torch.div(fp8_max * fp4_max, global_amax), flt_max)
    if global_amax == 0 or global_encode == 0:
        global_encode = torch.tensor(1.0)
    global_decode = torch.div(1.0, global_encode)
    multiplier = global_encode * torch.reciprocal(fp4_max)
    decode_scale = torch.min(_tile_amax(x, tile_rows) * multiplier, flt_max)
    decode_scale = torch.clamp(decode_scale, min=-fp8_max, max=fp8_max)
    decode_scale = decode_scale.to(torch.float8_e4m3fn).to(torch.float32)
    encode_scale = torch.min(torch.div(1.0, decode_scale * global_decode), flt_max)
    clipped = torch.clamp(x * encode_scale, -fp4_max, fp4_max)
    return e2m1_by_thresholds(clipped), decode_scale, global_decode


def torchao_nvfp4(x: torch.Tensor, per_tensor: bool):
    """torchao's _nvfp4_quantize (prototype/mx_formats/nvfp4_tensor.py) and its dequantization
    NVFP4Tensor.to_dtype, for float32 input. Returns elements, block scales and the output."""
    m, n = x.shape
    data = x.reshape(m, n // 16, 16)
    block_scale = torch.amax(torch.abs(data), dim=-1) / 6.0
    e4m3_eps = torch.finfo(torch.float8_e4m3fn).tiny
    if per_tensor:
        per_tensor_scale = x.abs().max() / (448.0 * 6.0)  # per_tensor_amax_to_scale
        scaled = torch.clamp(block_scale / per_tensor_scale, min=e4m3_eps, max=448.0)
        scale = scaled.to(torch.float8_e4m3fn).to(torch.float32)
        total = per_tensor_scale * scale
    else:
        scale = torch.clamp(block_scale, min=e4m3_eps, max=448.0)
        scale = scale.to(torch.float8_e4m3fn).to(torch.float32)
        total = scale
    elements = e2m1_by_thresholds(torch.clamp(data / total.unsqueeze(-1), -6.0, 6.0))
    output = elements * total.unsqueeze(-1)
    per_element = lambda t: t.unsqueeze(-1).expand(m, n // 16, 16).reshape(m, n)
    return elements.reshape(m, n), per_element(scale), output.reshape(m, n)


@pytest.mark.parametrize("block_2d", [False, True], ids=["1x16", "16x16"])
def test_nvfp4_matches_transformer_engine(block_2d):
    x = wide_range(64, 256, seed=5)
    spec = dataclasses.replace(QuantSpec.preset("nvfp4"), block_2d=block_2d)
    r = quantize_detailed(x, spec)
    elements, scale, global_decode = transformer_engine_nvfp4(x, 16 if block_2d else 1)

    kept = scale > 0
    assert kept.float().mean() > 0.5
    assert ((scale > 0) & (scale < 2.0**-6)).any()  # subnormal E4M3 scales, kept as TE does
    assert torch.equal(r.block_scale[kept], scale[kept])
    assert torch.equal(r.elements[kept], elements[kept])
    assert torch.equal(r.output[kept], (elements * (scale * global_decode))[kept])
    # The one documented departure: where TransformerEngine's E4M3 scale underflows to 0 (the
    # block then dequantizes to 0), fp4sweep uses the smallest positive scale, 2**-9.
    assert (~kept).any() and (r.block_scale[~kept] == 2.0**-9).all()


@pytest.mark.parametrize("per_tensor", [True, False], ids=["two-level", "block-only"])
def test_nvfp4_torchao_matches_torchao(per_tensor):
    x = wide_range(64, 256, seed=6)
    spec = QuantSpec(scale="ue4m3", block=16, scale_rule="nvfp4_torchao", tensor_scale=per_tensor)
    r = quantize_detailed(x, spec)
    elements, scale, output = torchao_nvfp4(x, per_tensor)
    assert torch.equal(r.block_scale, scale)
    assert torch.equal(r.elements, elements)
    assert torch.equal(r.output, output)
    assert (scale == 2.0**-6).any()  # the lower clamp was exercised


# -- operation order ---------------------------------------------------------------------------
# Random inputs almost never land within an ulp of a rounding boundary, so the tests above
# cannot tell two orders of the same operations apart. These inputs are built to: block amaxes
# within a few ulps of every E4M3 midpoint (times 6 / g), and elements within a few ulps of
# every E2M1 midpoint (times the block's decode scale).

def _ulp_neighbours(v: torch.Tensor, ulps: int = 6) -> torch.Tensor:
    """Each float32 in ``v`` and its neighbours up to ``ulps`` steps away."""
    steps = torch.arange(-ulps, ulps + 1, dtype=torch.int32)
    return (v.float().view(torch.int32).unsqueeze(-1) + steps).view(torch.float32).flatten()


def _rows_of_16(first: torch.Tensor, rest: torch.Tensor) -> torch.Tensor:
    """Blocks of 16 holding ``first`` (the amax) then 15 of ``rest``, padded with zeros."""
    rest = torch.cat([rest, rest.new_zeros((-len(rest)) % 15)]).reshape(-1, 15)
    return torch.cat([first.expand(len(rest), 1), rest], dim=1)


def boundary_hunting_tensor(global_amax: float) -> torch.Tensor:
    e4m3 = torch.arange(1, 127, dtype=torch.uint8).view(torch.float8_e4m3fn).float()
    g = torch.tensor(448.0 * 6.0) / global_amax  # not a power of two: order matters
    scale_midpoints = ((e4m3[1:] + e4m3[:-1]) / 2)[e4m3[:-1] >= 2.0**-9]
    amaxes = _ulp_neighbours(scale_midpoints * 6.0 / g)
    scale_rows = torch.stack([amaxes, amaxes / 3, amaxes / 7], dim=1).repeat(1, 6)[:, :16]
    element_rows = []
    for block_amax in global_amax * torch.tensor([0.9, 0.31, 0.047, 0.0063, 0.00071]):
        decode = (block_amax * (g / 6.0)).to(torch.float8_e4m3fn).float() / g
        midpoints = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0]) * decode
        candidates = _ulp_neighbours(torch.cat([midpoints, -midpoints]))
        element_rows.append(_rows_of_16(block_amax, candidates[candidates.abs() < block_amax]))
    top = torch.zeros(1, 16)
    top[0, 0] = global_amax
    return torch.cat([top, scale_rows, *element_rows])


def _reordered_nvfp4(x: torch.Tensor):
    """NVFP4 with another, equally plausible order: (amax / 6) * g and fl(x * g) / s."""
    g = torch.tensor(448.0 * 6.0) / x.abs().max()
    scale = ((_tile_amax(x, 1) / 6.0) * g).clamp(max=448.0).to(torch.float8_e4m3fn).float()
    return e2m1_by_thresholds(((x * g) / scale).clamp(-6.0, 6.0)), scale


@pytest.mark.parametrize("reference", ["transformer_engine", "torchao"])
def test_nvfp4_rules_follow_their_reference_operation_order(reference):
    x = boundary_hunting_tensor(1000.0)
    if reference == "transformer_engine":
        spec = QuantSpec.preset("nvfp4")
        elements, scale, _ = transformer_engine_nvfp4(x, 1)
    else:
        spec = QuantSpec.preset("nvfp4_torchao")
        elements, scale, _ = torchao_nvfp4(x, per_tensor=True)
    r = quantize_detailed(x, spec)
    other_elements, other_scale = _reordered_nvfp4(x)
    assert (other_scale != scale).sum() >= 10 and (other_elements != elements).sum() >= 10
    assert torch.equal(r.block_scale, scale)
    assert torch.equal(r.elements, elements)


GFLOAT_ROUND = {"floor": RoundMode.TowardZero, "ceil": RoundMode.TowardPositive,
                "nearest": RoundMode.TiesToEven}


@pytest.mark.parametrize("rule", list(GFLOAT_ROUND))
def test_amax_rules_follow_their_documented_operation_order(rule):
    """floor / ceil / nearest with tensor scaling, as scaling.py's docstring writes them."""
    x = boundary_hunting_tensor(1000.0)
    spec = QuantSpec(scale="ue4m3", block=16, scale_rule=rule, tensor_scale=True)
    r = quantize_detailed(x, spec)

    g = torch.tensor(448.0) * torch.tensor(6.0) / x.abs().max()
    a_g = _tile_amax(x, 1) * g
    ideal = a_g * 0.25 if rule == "floor" else a_g / torch.tensor(6.0)
    scale = round_ndarray(GFLOAT_UE4M3, ideal.double().numpy(), GFLOAT_ROUND[rule], sat=True)
    scale = torch.from_numpy(scale).float().clamp(min=2.0**-9)
    elements = e2m1_by_thresholds(((x * g) / scale).clamp(-6.0, 6.0))
    assert torch.equal(r.block_scale, scale)
    assert torch.equal(r.elements, elements)
    assert torch.equal(r.output, elements * (scale / g))
