"""Code points of a format (``formats.py``): the integer code of each value and back, as the
bits a kernel or a file would hold. Apart from the formats themselves so that those stay plain
data, importable without torch."""

from __future__ import annotations

import torch

from fp4sweep.quant.formats import FloatFormat


def decode(fmt: FloatFormat, codes: torch.Tensor) -> torch.Tensor:
    """The float32 value of each integer code point of ``fmt``."""
    table = torch.tensor(fmt.code_values, dtype=torch.float32, device=codes.device)
    if codes.numel() and (codes.min() < 0 or codes.max() >= fmt.num_codes):
        raise ValueError(f"{fmt.name}: codes must lie in 0..{fmt.num_codes - 1}")
    return table[codes.long()]


def encode(fmt: FloatFormat, values: torch.Tensor) -> torch.Tensor:
    """The code point (int64) of each value of ``fmt``; NaN maps to the format's NaN code.

    Values must already lie in the format (round them first); anything else is a ValueError.
    Negative zero encodes to the sign-bit code in a signed format and to 0 in an unsigned one.
    """
    magnitude_codes = 2 ** (fmt.exp_bits + fmt.man_bits)
    magnitudes = torch.tensor(fmt.code_values[:magnitude_codes], dtype=torch.float64)
    is_number = ~torch.isnan(magnitudes)
    # Within one sign, values increase with the code, so a sorted search over the non-NaN
    # magnitudes (numbers and infinities) finds each code.
    number_codes = torch.nonzero(is_number).squeeze(1)
    nan_codes = torch.nonzero(~is_number).squeeze(1)
    v = values.detach().double().cpu()
    nan = torch.isnan(v)
    if nan.any() and nan_codes.numel() == 0:
        raise ValueError(f"{fmt.name} has no NaN code, but the values hold NaN")
    idx = torch.searchsorted(magnitudes[is_number], v.abs()).clamp(max=number_codes.numel() - 1)
    codes = number_codes[idx]
    bad = (magnitudes[codes] != v.abs()) & ~nan
    bad |= torch.signbit(v) & ~nan & (v != 0) & (not fmt.signed)
    if bad.any():
        raise ValueError(
            f"{fmt.name}: {int(bad.sum())} value(s) are not in the format, e.g. {v[bad][0].item()}"
        )
    if nan_codes.numel():
        codes = torch.where(nan, nan_codes[0], codes)
    if fmt.signed:
        codes = torch.where(torch.signbit(v) & ~nan, codes + magnitude_codes, codes)
    return codes.to(values.device)
