"""Formats as data: every code of every format, against gfloat and torch's float8 dtypes."""

import math

import pytest
import torch
from gfloat import RoundMode, decode_float, round_ndarray
from gfloat.formats import (
    format_info_ocp_e2m1,
    format_info_ocp_e2m3,
    format_info_ocp_e3m2,
    format_info_ocp_e4m3,
    format_info_ocp_e5m2,
    format_info_ocp_e8m0,
)

from fp4sweep.quant.codes import decode, encode
from fp4sweep.quant.formats import (
    E2M1,
    E2M3,
    E3M2,
    E4M3,
    E5M2,
    E8M0,
    ELEMENT_FORMATS,
    FP32,
    INT4,
    UE4M3,
    UE5M3,
    FloatFormat,
    element_format,
    scale_format,
    unsigned_float,
)
from fp4sweep.quant.rounding import exponent, pow2, round_magnitude, round_signed
from tests.quant.common import GFLOAT_UE4M3, GFLOAT_UE5M3

GFLOAT = {
    E2M1: format_info_ocp_e2m1,
    E2M3: format_info_ocp_e2m3,
    E3M2: format_info_ocp_e3m2,
    E4M3: format_info_ocp_e4m3,
    E5M2: format_info_ocp_e5m2,
    E8M0: format_info_ocp_e8m0,
    UE4M3: GFLOAT_UE4M3,
    UE5M3: GFLOAT_UE5M3,
}
TABLE_FORMATS = [E2M1, E2M3, E3M2, E4M3, E5M2, INT4, E8M0, UE4M3, UE5M3, unsigned_float(6, 2)]


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal values, NaN where NaN, and the same sign of zero."""
    both_nan = torch.isnan(a) & torch.isnan(b)
    equal = (a == b) & (torch.signbit(a) == torch.signbit(b))
    return bool((both_nan | equal).all())


def test_e2m1_codes_are_the_ocp_values():
    assert E2M1.code_values == (
        0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0,
    )


def test_int4_is_the_symmetric_integer_grid():
    assert INT4.code_values[:8] == tuple(float(i) for i in range(8))
    assert INT4.max == 7.0


@pytest.mark.parametrize(
    "fmt, bits, maximum, min_normal, min_positive",
    [
        (E2M1, 4, 6.0, 1.0, 0.5),
        (E2M3, 6, 7.5, 1.0, 0.125),
        (E3M2, 6, 28.0, 0.25, 0.0625),
        (E4M3, 8, 448.0, 2.0**-6, 2.0**-9),
        (E5M2, 8, 57344.0, 2.0**-14, 2.0**-16),
        (E8M0, 8, 2.0**127, 2.0**-127, 2.0**-127),
        (UE4M3, 7, 448.0, 2.0**-6, 2.0**-9),
        (UE5M3, 8, 61440.0, 2.0**-14, 2.0**-17),
        (FP32, 31, torch.finfo(torch.float32).max, 2.0**-126, 2.0**-149),
    ],
)
def test_derived_values(fmt, bits, maximum, min_normal, min_positive):
    assert (fmt.bits, fmt.max, fmt.min_normal, fmt.min_positive) == (
        bits, maximum, min_normal, min_positive,
    )


@pytest.mark.parametrize("fmt", list(GFLOAT), ids=lambda f: f.name)
def test_every_code_matches_gfloat(fmt):
    info = GFLOAT[fmt]
    expected = torch.tensor(
        [decode_float(info, code).fval for code in range(fmt.num_codes)], dtype=torch.float64
    )
    assert _same(torch.tensor(fmt.code_values, dtype=torch.float64), expected)
    assert fmt.max == info.max


@pytest.mark.parametrize(
    "fmt, dtype",
    [(E4M3, torch.float8_e4m3fn), (E5M2, torch.float8_e5m2), (E8M0, torch.float8_e8m0fnu)],
    ids=["e4m3", "e5m2", "e8m0"],
)
def test_every_code_matches_torch_float8(fmt, dtype):
    codes = torch.arange(256, dtype=torch.uint8)
    assert _same(decode(fmt, codes.long()), codes.view(dtype).float())


@pytest.mark.parametrize("fmt", TABLE_FORMATS, ids=lambda f: f.name)
def test_every_code_round_trips(fmt):
    """decode -> encode gives the code back; rounding a code's value, in any mode, keeps it."""
    codes = torch.arange(fmt.num_codes)
    values = decode(fmt, codes)
    number = torch.isfinite(values)
    assert torch.equal(encode(fmt, values)[number], codes[number])
    assert torch.isnan(decode(fmt, encode(fmt, values[torch.isnan(values)]))).all()
    for mode in ("nearest", "down", "up"):
        assert _same(round_signed(fmt, values[number].float(), mode), values[number].float())


def test_unsigned_generic_formats_follow_ue5m3():
    assert scale_format("ue5m3") == unsigned_float(5, 3) == UE5M3
    ue6m2 = scale_format("ue6m2")
    assert (ue6m2.max, ue6m2.min_positive) == (2.0**31 * 1.75, 2.0**-32)
    # "ue4m3" is NVFP4's scale (the E4M3FN convention), not the IEEE-style unsigned E4M3.
    assert scale_format("ue4m3").max == 448.0 and unsigned_float(4, 3).max == 240.0


@pytest.mark.parametrize("name", ["e9m1", "ue1m3", "ue9m0", "ue5m11", "int8", ""])
def test_unknown_scale_format_names_the_choices(name):
    with pytest.raises(ValueError, match="valid"):
        scale_format(name)


def test_unknown_element_format_names_the_choices():
    with pytest.raises(ValueError, match="e2m1"):
        element_format("fp4")
    assert set(ELEMENT_FORMATS) == {"e2m1", "e2m3", "e3m2", "e4m3", "e5m2", "int4"}


def test_invalid_format_fields():
    with pytest.raises(ValueError, match="specials"):
        FloatFormat("x", 2, 1, bias=1, specials="inf")
    with pytest.raises(ValueError, match="exp_bits"):
        FloatFormat("x", 9, 1, bias=1)


def test_encode_rejects_values_outside_the_format():
    with pytest.raises(ValueError, match="not in the format"):
        encode(E2M1, torch.tensor([2.5]))
    with pytest.raises(ValueError, match="no NaN"):
        encode(E2M1, torch.tensor([math.nan]))
    with pytest.raises(ValueError, match="not in the format"):
        encode(UE4M3, torch.tensor([-1.0]))


def test_pow2_is_exact_over_the_float32_range():
    e = torch.arange(-149, 128)
    assert torch.equal(pow2(e), torch.ldexp(torch.ones(e.shape), e))
    assert pow2(torch.tensor([128])).item() == math.inf


def test_exponent_reads_the_binary_exponent():
    a = torch.tensor([1.0, 1.5, 2.0, 6.0, 0.75, 2.0**-126, 3.0e38])
    assert exponent(a).tolist() == [0, 0, 1, 2, -1, -126, 127]
    assert exponent(torch.tensor([0.0, 2.0**-130, math.inf, math.nan])).tolist() == [
        -127, -127, 128, 128,
    ]


GFLOAT_MODES = {
    "nearest": RoundMode.TiesToEven,
    "down": RoundMode.TowardZero,
    "up": RoundMode.TowardPositive,
}


@pytest.mark.parametrize("mode", list(GFLOAT_MODES))
@pytest.mark.parametrize("fmt", list(GFLOAT), ids=lambda f: f.name)
def test_rounding_matches_gfloat(fmt, mode):
    """Random magnitudes over the whole range, plus every midpoint between neighbours (ties)."""
    generator = torch.Generator().manual_seed(0)
    low, high = math.log2(fmt.min_positive) - 2, min(math.log2(fmt.max) + 1, 127.9)
    exponents = low + (high - low) * torch.rand(4000, generator=generator, dtype=torch.float64)
    random = torch.exp2(exponents).float()
    grid = torch.tensor(sorted(v for v in fmt.code_values if v >= 0), dtype=torch.float64)
    grid = grid[torch.isfinite(grid)]
    midpoints = ((grid[1:] + grid[:-1]) / 2).float()
    a = torch.cat([random, midpoints, torch.tensor([0.0, 3.0e38, math.inf])])
    expected = round_ndarray(GFLOAT[fmt], a.double().numpy(), GFLOAT_MODES[mode], sat=True)
    got = round_magnitude(fmt, a, mode)
    if not fmt.has_zero:
        # Below E8M0's smallest value (it has no zero) gfloat returns numbers E8M0 cannot hold,
        # such as 2**-128; fp4sweep returns 2**-127 or 0, and the scale rules raise 0 to
        # 2**-127 (see scaling.py).
        keep = a >= fmt.min_positive
        got, expected = got[keep], expected[keep.numpy()]
    assert torch.equal(got.double(), torch.from_numpy(expected))
