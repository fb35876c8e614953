"""Triton device functions: the reference's float32 steps, one for one.

Each function mirrors a function of the reference (named in its docstring) and performs the
same float32 operations in the same order, so that it returns the same bits. Three compiler
habits would break that and are kept out: divisions use ``div_rn`` (IEEE round-to-nearest; a
plain ``/`` may compile to an approximate division), the kernels are launched with
``enable_fp_fusion=False`` (no multiply-add contraction into FMA), and maxima go through the
integer bit patterns of magnitudes (NaN-propagating, like ``torch.amax``).
"""

from __future__ import annotations

import triton
import triton.language as tl

# Globals that kernels read must be constexpr objects.
FLT_MAX = tl.constexpr(3.4028234663852886e38)

# Rounding modes of ``round_magnitude``.
NEAREST = tl.constexpr(0)
DOWN = tl.constexpr(1)
UP = tl.constexpr(2)
STOCHASTIC = tl.constexpr(3)


@triton.jit
def pow2(e):
    """``rounding.pow2``: exactly 2**e (float32) for int32 e in [-149, 128], from its bits."""
    normal = tl.maximum(e + 127, 0) << 23
    subnormal = tl.full(e.shape, 1, tl.int32) << tl.minimum(tl.maximum(e + 149, 0), 22)
    return tl.where(e >= -126, normal, subnormal).to(tl.float32, bitcast=True)


@triton.jit
def exponent(a):
    """``rounding.exponent``: floor(log2(a)) of float32 a >= 0 from its bits (int32)."""
    return ((a.to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127


@triton.jit
def round_half_even(n):
    """``torch.round`` of float32 n >= 0: adding 2**23 leaves no fraction bits, and the addition
    rounds ties to even; from 2**23 on, n is already an integer."""
    return tl.where(n >= 8388608.0, n, (n + 8388608.0) - 8388608.0)


@triton.jit
def round_magnitude(
    a, u, MODE: tl.constexpr, EMIN: tl.constexpr, MAN_BITS: tl.constexpr,
    BIAS: tl.constexpr, MAX: tl.constexpr,
):
    """``rounding.round_magnitude`` of float32 magnitudes ``a`` onto a format's grid.

    ``u`` (uniform numbers) is read only for MODE == STOCHASTIC.
    """
    e = tl.maximum(exponent(a), EMIN)
    n = (a * pow2(-e)) * (2.0**MAN_BITS)
    if MODE == NEAREST:
        r = round_half_even(n)
        if MAN_BITS == 0:
            # IEEE ties of a mantissa-free format go to the even biased exponent.
            lower = tl.floor(n)
            odd_code = (lower >= 1.0) & (((e + BIAS) & 1) == 1)
            r = tl.where(n - lower == 0.5, lower + odd_code.to(tl.float32), r)
    elif MODE == DOWN:
        r = tl.floor(n)
    elif MODE == UP:
        r = tl.ceil(n)
    else:
        lower = tl.floor(n)
        r = lower + (u < n - lower).to(tl.float32)
    q = (r * (2.0**-MAN_BITS)) * pow2(e)
    return tl.minimum(q, MAX, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def round_element(a, u, STOCHASTIC_ROUNDING: tl.constexpr, EMIN: tl.constexpr,
                  MAN_BITS: tl.constexpr, EMAX: tl.constexpr, MAX: tl.constexpr):
    """``round_magnitude`` onto an element format's grid (nearest-even or stochastic), in
    fewer steps with the same result.

    A magnitude at or above the format's max rounds to the max in every mode (the max is a grid
    point and the grid only grows beyond it), so clamping first changes nothing. Every exponent
    e then lies in [EMIN, EMAX], inside float32's normal range: 2**e is a's exponent field
    alone, and the scalings by 2**(MAN_BITS - e) and 2**(e - MAN_BITS) are exact, so one
    multiplication does what the reference does in two (except where a * 2**-e may be
    subnormal, EMIN > 0, i.e. INT4, which keeps the reference's two steps). n stays below
    2**(MAN_BITS + 1), so ``round_half_even`` needs no guard.
    """
    tl.static_assert(EMIN > -126 and EMAX < 127)
    a = tl.minimum(a, MAX, propagate_nan=tl.PropagateNan.ALL)
    field = tl.maximum(a.to(tl.int32, bitcast=True) & 0x7F800000, (EMIN + 127) << 23)
    if EMIN > 0:
        n = (a * ((254 << 23) - field).to(tl.float32, bitcast=True)) * (2.0**MAN_BITS)
    else:
        n = a * (((254 << 23) - field) + (MAN_BITS << 23)).to(tl.float32, bitcast=True)
    if STOCHASTIC_ROUNDING:
        lower = tl.floor(n)
        r = lower + (u < n - lower).to(tl.float32)
    else:
        r = (n + 8388608.0) - 8388608.0
    return r * (field - (MAN_BITS << 23)).to(tl.float32, bitcast=True)


@triton.jit
def grid_step(a, EMIN: tl.constexpr, EMAX: tl.constexpr, MAN_BITS: tl.constexpr):
    """``rounding.grid_step`` for an element format: the width of the grid interval holding
    each magnitude ``a >= 0``, the top binade's for magnitudes beyond the format's max."""
    e = tl.minimum(tl.maximum(exponent(a), EMIN), EMAX)
    return pow2(e - MAN_BITS)


@triton.jit
def copy_sign(magnitude, signed):
    """``torch.copysign``: the sign bit of ``signed`` on ``magnitude`` (float32)."""
    sign = signed.to(tl.int32, bitcast=True) & -2147483648
    return (magnitude.to(tl.int32, bitcast=True) | sign).to(tl.float32, bitcast=True)


@triton.jit
def to_bfloat16(y):
    """float32 to bfloat16, rounding to nearest-even on the bits (as torch does; Triton's
    interpreter truncates a plain cast). NaN stays a (quiet) NaN."""
    bits = y.to(tl.uint32, bitcast=True)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    rounded = tl.where(y != y, (bits >> 16) | 0x40, rounded)
    return rounded.to(tl.uint16).to(tl.bfloat16, bitcast=True)


@triton.jit
def magnitude_bits(t):
    """|t| as int32 bits: integer order is float order for magnitudes, and NaN sorts last, so
    an integer max is a NaN-propagating amax."""
    return t.to(tl.int32, bitcast=True) & 0x7FFFFFFF


@triton.jit
def fmix32(h):
    """``rng.fmix32``: MurmurHash3's finaliser on uint32 (wrapping multiplications)."""
    h = h ^ (h >> 16)
    h = h * tl.full(h.shape, 0x85EBCA6B, tl.uint32)
    h = h ^ (h >> 13)
    h = h * tl.full(h.shape, 0xC2B2AE35, tl.uint32)
    return h ^ (h >> 16)


@triton.jit
def random_words(counter, key, WIDE: tl.constexpr):
    """``rng.random_bits`` (uint32) for non-negative counters (int64 if WIDE, else int32,
    whose high word is 0) and a uint32 stream key."""
    if WIDE:
        low = (counter & 0xFFFFFFFF).to(tl.uint32)
        high = (counter >> 32).to(tl.uint32)
    else:
        low = counter.to(tl.uint32)
        high = tl.zeros(counter.shape, tl.uint32)
    h = fmix32(low ^ key.to(tl.uint32))
    return fmix32(h ^ high ^ tl.full(h.shape, 0x7FEB352D, tl.uint32))


@triton.jit
def _slot_to_uniform(words, shift, SR_BITS: tl.constexpr):
    """The SR_BITS bits of ``words`` from bit ``shift`` up, as float32 times 2**-SR_BITS."""
    top = (words >> shift) & ((1 << SR_BITS) - 1)
    return top.to(tl.float32) * (2.0**-SR_BITS)


@triton.jit
def uniform(counter, key, SR_BITS: tl.constexpr, SR_SLOT: tl.constexpr, GROUP: tl.constexpr,
            WIDE: tl.constexpr):
    """``rng.uniform`` of a 2-D ``counter``; SR_SLOT is ``rng.slot_bits(SR_BITS)``. With GROUP
    of 2 or 4 (at most the numbers that share a word) the last axis holds consecutive counters
    in runs of GROUP that start at multiples of GROUP (the launcher checks that it does), and a
    word is hashed once for each run instead of each element."""
    PER_WORD: tl.constexpr = 32 // SR_SLOT
    LOG_PER_WORD: tl.constexpr = PER_WORD // 2  # log2 of 1, 2 or 4
    ROWS: tl.constexpr = counter.shape[0]
    COLS: tl.constexpr = counter.shape[1]
    first = tl.min(tl.reshape(counter, [ROWS, COLS // GROUP, GROUP]), axis=2)
    words = random_words(first >> LOG_PER_WORD, key, WIDE)
    slots = tl.arange(0, GROUP).to(tl.uint32) * SR_SLOT + (SR_SLOT - SR_BITS)
    if GROUP == PER_WORD:  # a run is a whole word: its slots are known here
        shifts = slots[None, None, :]
    else:
        base = ((first & (PER_WORD - 1)) * SR_SLOT).to(tl.uint32)
        shifts = base[:, :, None] + slots[None, None, :]
    u = _slot_to_uniform(words[:, :, None], shifts, SR_BITS)
    return tl.reshape(u, [ROWS, COLS])


@triton.jit
def _add(a, b):
    return a + b


@triton.jit
def _xor(a, b):
    return a ^ b


@triton.jit
def walsh_hadamard(x, ROWS: tl.constexpr, COLS: tl.constexpr, LOG_SIZE: tl.constexpr,
                   LANE_FROM: tl.constexpr, LANE_TO: tl.constexpr):
    """``transforms.walsh_hadamard`` of each run of 2**LOG_SIZE along the last axis of
    [ROWS, COLS]: butterflies (a + b, a - b) at distance 1, 2, 4, ..., unnormalised.

    Each stage views the runs as [.., 2, half] and reduces over the pair axis twice, once with
    the second element's sign bit flipped: a sum of two terms is one rounded addition in either
    order, and a + (-b) is a - b, so these are the reference's bits. Two spellings would lose
    the sign of zero: ``tl.sum`` (the interpreter's starts from +0) and unary minus (Triton
    3.6 computes 0 - b). At distances in [LANE_FROM, LANE_TO) the caller's layout puts a pair
    in two lanes, where each reduction is a shuffle: there one exchange, the xor of the pair's
    bits, gives each lane the other's value, and each lane makes its own term."""
    for stage in tl.static_range(LOG_SIZE):
        pairs = tl.reshape(x, [ROWS, COLS >> (stage + 1), 2, 1 << stage])
        second = (tl.arange(0, 2) == 1)[None, None, :, None]
        bits = pairs.to(tl.int32, bitcast=True)
        flipped = bits ^ (second.to(tl.int32) << 31)
        if LANE_FROM <= (1 << stage) and (1 << stage) < LANE_TO:
            other = tl.reduce(bits, 2, _xor, keep_dims=True) ^ bits
            x = other.to(tl.float32, bitcast=True) + flipped.to(tl.float32, bitcast=True)
        else:
            total = tl.reduce(pairs, 2, _add, keep_dims=True)
            difference = tl.reduce(flipped.to(tl.float32, bitcast=True), 2, _add,
                                   keep_dims=True)
            x = tl.where(second, difference, total)
        x = tl.reshape(x, [ROWS, COLS])
    return x
