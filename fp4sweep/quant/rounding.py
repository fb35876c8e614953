"""Rounding float32 values onto a format's grid, as a fixed sequence of exact float32 steps.

For a magnitude ``a`` the grid spacing is ``2**(e - M)`` where ``e`` is ``a``'s binary exponent
(read from its float32 bits, so exact), raised to the format's ``emin`` (subnormal range)
and capped one binade above its largest finite value (all of which saturates). Then::

    n = (a * 2**-e) * 2**M      # exact: multiplying by powers of two
    r = round(n)                # per mode: nearest-even, down, up, or stochastic
    q = min((r * 2**-M) * 2**e, fmt.max)

Every step is exact except the chosen rounding of ``n``, so a kernel that performs the same
steps gets the same bits. Powers of two are built from their bit patterns, never from exp2.
Rounding works on magnitudes; the sign is copied back (symmetric grids). NaN stays NaN; +inf
saturates to the format's largest finite value, as hardware conversions with ``satfinite`` do.
"""

from __future__ import annotations

import torch

from fp4sweep.quant.formats import FloatFormat

ROUND_MODES = ("nearest", "down", "up", "stochastic")


def pow2(e: torch.Tensor, subnormal: bool = True) -> torch.Tensor:
    """Exactly 2**e as float32 for integer e in [-149, 128] (128 gives +inf).

    ``subnormal=False`` skips the float32-subnormal case, for callers whose ``e`` stays in
    [-126, 127].
    """
    e = e.to(torch.int32)
    bits = (e + 127).clamp_(min=0).bitwise_left_shift_(23)
    if subnormal:
        bits = torch.where(e < -126, torch.ones_like(e) << (e + 149).clamp(0, 22), bits)
    return bits.view(torch.float32)


def exponent(a: torch.Tensor) -> torch.Tensor:
    """floor(log2(a)) (int32) of a float32 ``a >= 0`` from its bits.

    Zero and float32 subnormals give -127, inf and NaN give 128; callers clamp to the format.
    """
    return ((a.view(torch.int32) >> 23) & 0xFF) - 127


def _grid_exponent(fmt: FloatFormat, a: torch.Tensor) -> torch.Tensor:
    """a's binade exponent, limited to the binades the format has: from emin (subnormals
    share one spacing) to one above its top binade (everything there saturates)."""
    return exponent(a).clamp(min=fmt.emin, max=min(fmt.emax + 1, 128))


def _spans_float32(fmt: FloatFormat) -> bool:
    """Whether the powers of two for ``fmt`` reach float32's subnormals (E8M0, fp32)."""
    return fmt.emin - fmt.man_bits < -126 or fmt.emax + 1 > 126


def round_magnitude(
    fmt: FloatFormat, a: torch.Tensor, mode: str, u: torch.Tensor | None = None
) -> torch.Tensor:
    """Round float32 magnitudes ``a >= 0`` onto ``fmt``'s grid, saturating at ``fmt.max``.

    ``mode``: "nearest" (ties to even), "down" (toward zero), "up" (away from zero), or
    "stochastic": up iff ``u < p``, where ``p = (a - lo) / (hi - lo)`` is the exact position of
    ``a`` between its neighbours ``lo <= a < hi`` and ``u`` is uniform on the grid k * 2**-b
    (b random bits). So P(up) = ceil(p * 2**b) / 2**b: exactly p when b = 24 for every ``a`` of
    at least half the format's smallest subnormal (p then has at most 24 fraction bits); with
    fewer bits, p is effectively rounded up to the next multiple of 2**-b.
    Results below the format's smallest positive value may be 0, even for E8M0 (no zero code):
    callers that need a positive value clamp.
    """
    e = _grid_exponent(fmt, a)
    wide = _spans_float32(fmt)
    n = (a * pow2(-e, wide)).mul_(float(2**fmt.man_bits))
    if mode == "nearest":
        r = torch.round(n)  # round half to even
        if fmt.man_bits == 0:
            # Without mantissa bits, "even" is the exponent code (IEEE 754): a tie between
            # 2**e and 2**(e+1) goes to whichever has the even biased exponent.
            lower = torch.floor(n)
            odd_code = (lower >= 1) & ((e + fmt.bias) % 2 == 1)
            r = torch.where(n - lower == 0.5, lower + odd_code.to(n.dtype), r)
    elif mode == "down":
        r = torch.floor(n)
    elif mode == "up":
        r = torch.ceil(n)
    elif mode == "stochastic":
        if u is None:
            raise ValueError("stochastic rounding needs uniform numbers u")
        lower = torch.floor(n)
        r = lower + (u < n - lower).to(n.dtype)
    else:
        raise ValueError(f"unknown rounding mode {mode!r}; valid: {list(ROUND_MODES)}")
    q = r.mul_(2.0**-fmt.man_bits).mul_(pow2(e, wide))  # r is fresh: scale it in place
    return q.clamp_(max=fmt.max)


def round_signed(
    fmt: FloatFormat, v: torch.Tensor, mode: str, u: torch.Tensor | None = None
) -> torch.Tensor:
    """``round_magnitude`` of ``|v|`` with ``v``'s sign copied back."""
    return torch.copysign(round_magnitude(fmt, v.abs(), mode, u), v)


def grid_step(fmt: FloatFormat, a: torch.Tensor) -> torch.Tensor:
    """Width of the grid interval that contains each magnitude ``a >= 0`` (float32).

    Magnitudes beyond ``fmt.max`` get the spacing of the top binade.
    """
    e = _grid_exponent(fmt, a).clamp(max=fmt.emax)
    return pow2(e - fmt.man_bits, _spans_float32(fmt))
