"""Counter-based random bits: the same bits for the same (seed, counter) on any device.

No generator state: the bits of element ``i`` are a hash of ``i`` and a 32-bit key derived from
the seed, so a kernel that visits the elements in any order, or along either axis of a matrix,
draws the same numbers as this reference. The hash is two rounds of MurmurHash3's 32-bit
finaliser (``fmix32``), built only from the uint32 operations Triton has natively: xor, logical
right shift and wrapping multiplication. PyTorch has no wrapping uint32 arithmetic, so values are
held in int64 tensors in [0, 2**32) and every product is masked back to 32 bits.

    key  = fmix32(fmix32(seed_lo ^ stream) ^ seed_hi)      (host side, once per call)
    bits = fmix32(fmix32(counter_lo ^ key) ^ counter_hi ^ ROUND2)

``stream`` separates independent uses of one seed (stochastic rounding of elements and of block
scales, Hadamard signs).

Uniform numbers of few bits share a word, as FP4 hardware's stochastic conversion takes one
32-bit word of random bits for four values (PTX ``cvt.rs ... e2m1x4``): a number of at most 8
bits is the top of one byte of the word of ``counter // 4`` (byte ``counter % 4``, least
significant first), one of at most 16 bits the top of one half of the word of ``counter // 2``,
a wider one the top of the word of ``counter``. A kernel then hashes once per four (or two)
elements.
"""

from __future__ import annotations

import torch

MASK32 = 0xFFFFFFFF
STREAM_ROUNDING = 0x9E3779B9
STREAM_SIGNS = 0x632BE5AB
STREAM_SCALES = 0x2545F491
ROUND2 = 0x7FEB352D
_FMIX_C1 = 0x85EBCA6B
_FMIX_C2 = 0xC2B2AE35


def fmix32_int(h: int) -> int:
    """MurmurHash3's finaliser on a Python int (a bijection of 32-bit words)."""
    h &= MASK32
    h ^= h >> 16
    h = (h * _FMIX_C1) & MASK32
    h ^= h >> 13
    h = (h * _FMIX_C2) & MASK32
    h ^= h >> 16
    return h


def _mul32_(h: torch.Tensor, constant: int) -> torch.Tensor:
    """(h * constant) mod 2**32 for h in [0, 2**32), without int64 overflow; overwrites h.

    The constant is split in 16-bit halves so that each partial product stays below 2**48.
    (In-place steps: the stream is computed for every element of large tensors.)
    """
    high = (h * (constant >> 16)).bitwise_and_(0xFFFF).bitwise_left_shift_(16)
    return h.mul_(constant & 0xFFFF).add_(high).bitwise_and_(MASK32)


def fmix32(h: torch.Tensor) -> torch.Tensor:
    """MurmurHash3's finaliser, elementwise on an int64 tensor of 32-bit words."""
    h = h ^ (h >> 16)
    h = _mul32_(h, _FMIX_C1)
    h ^= h >> 13
    h = _mul32_(h, _FMIX_C2)
    h ^= h >> 16
    return h


def check_seed(seed: int) -> None:
    """Seeds are ints in [0, 2**64): two 32-bit words of key material."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64:
        raise ValueError(f"seed must be an int in [0, 2**64), got {seed!r}")


def stream_key(seed: int, stream: int) -> int:
    """The 32-bit key of one random stream of ``seed``."""
    check_seed(seed)
    return fmix32_int(fmix32_int((seed & MASK32) ^ stream) ^ (seed >> 32))


def random_bits(counter: torch.Tensor, seed: int, stream: int = STREAM_ROUNDING) -> torch.Tensor:
    """32 random bits (int64 in [0, 2**32)) for each int64 counter value."""
    key = stream_key(seed, stream)
    h = fmix32((counter & MASK32) ^ key)
    return fmix32(h ^ (counter >> 32) ^ ROUND2)


def slot_bits(bits: int) -> int:
    """Width of the part of a random word that a uniform number of ``bits`` bits takes:
    8, 16 or 32."""
    return 8 if bits <= 8 else 16 if bits <= 16 else 32


def uniform(
    counter: torch.Tensor, seed: int, bits: int, stream: int = STREAM_ROUNDING
) -> torch.Tensor:
    """float32 in [0, 1) on a grid of 2**-bits: ``bits`` random bits times 2**-bits, from the
    slot of a shared word that the module docstring gives the counter.

    Exact in float32 for bits <= 24.
    """
    width = slot_bits(bits)
    per_word = 32 // width
    words = random_bits(counter >> (per_word.bit_length() - 1), seed, stream)
    shift = (counter & (per_word - 1)) * width + (width - bits)
    top = (words >> shift) & ((1 << bits) - 1)
    return top.to(torch.float32) * 2.0**-bits
