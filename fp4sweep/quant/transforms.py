"""Block-diagonal Hadamard transforms along the quantization axis.

``hadamardK`` splits the axis into runs of K elements and maps each run ``x`` to
``y = H_K (s * x) / sqrt(K)``, with ``H_K`` the Sylvester Hadamard matrix (natural order) and
``s`` a vector of K signs: all +1, or for ``rhadamardK`` random signs drawn from the spec's
``transform_seed`` (the same K signs for every run). The map is orthonormal, so applying it to
both operands of a GEMM leaves their product unchanged, and its inverse is
``x = s * (H_K y) / sqrt(K)``.

The product with ``H_K`` is a fast Walsh-Hadamard transform with a fixed order of float32
operations: log2(K) butterfly stages of ``(a + b, a - b)`` on pairs at distance 1, 2, 4, ...,
then one multiplication by the float32 constant ``1/sqrt(K)`` (exact for K = 16, 64, 256).
A kernel that does the same stages in the same order gets the same bits.
"""

from __future__ import annotations

import math

import torch

from fp4sweep.quant.rng import STREAM_SIGNS, random_bits
from fp4sweep.quant.spec import QuantSpec


def hadamard_signs(size: int, seed: int) -> torch.Tensor:
    """``size`` float32 signs: -1 where the top random bit of (index, seed) is set."""
    bits = random_bits(torch.arange(size, dtype=torch.int64), seed, STREAM_SIGNS)
    return 1.0 - 2.0 * (bits >> 31).to(torch.float32)


def walsh_hadamard(x: torch.Tensor, size: int) -> torch.Tensor:
    """Unnormalised product of each run of ``size`` elements of the last axis with H_size."""
    runs = x.reshape(*x.shape[:-1], x.shape[-1] // size, size)
    half = 1
    while half < size:
        pairs = runs.reshape(*runs.shape[:-1], size // (2 * half), 2, half)
        a, b = pairs[..., 0, :], pairs[..., 1, :]
        runs = torch.stack((a + b, a - b), dim=-2).reshape(runs.shape)
        half *= 2
    return runs.reshape(x.shape)


def _normaliser(size: int) -> float:
    # The float32 nearest to the float64 1/sqrt(size) (exact for size 16, 64, 256).
    return torch.tensor(1.0 / math.sqrt(size), dtype=torch.float32).item()


def check_transform_axis(spec: QuantSpec, length: int) -> None:
    """A Hadamard of size K needs an axis length that K divides (a K larger than the block is
    fine: runs then span several blocks)."""
    k = spec.hadamard_size
    if k and length % k:
        raise ValueError(
            f"transform {spec.transform!r} needs the quantization axis length to be a multiple "
            f"of {k}, got {length}"
        )


def _hadamard_along(x: torch.Tensor, spec: QuantSpec, axis: int, inverse: bool) -> torch.Tensor:
    x = x.to(torch.float32)
    k = spec.hadamard_size
    if not k:
        return x
    check_transform_axis(spec, x.shape[axis])
    runs = x.movedim(axis, -1)
    signs = (
        hadamard_signs(k, spec.transform_seed).to(x.device) if spec.random_signs else None
    )

    def flip(values: torch.Tensor) -> torch.Tensor:
        if signs is None:
            return values
        return (values.reshape(*values.shape[:-1], -1, k) * signs).reshape(values.shape)

    # Forward: signs, then H / sqrt(K); inverse (the transpose): H / sqrt(K), then signs.
    if not inverse:
        runs = flip(runs)
    y = walsh_hadamard(runs, k) * _normaliser(k)
    if inverse:
        y = flip(y)
    return y.movedim(-1, axis)


def apply_transform(x: torch.Tensor, spec: QuantSpec, axis: int = -1) -> torch.Tensor:
    """``spec``'s transform of ``x`` along ``axis``, as float32 (``x`` itself if "none")."""
    return _hadamard_along(x, spec, axis, inverse=False)


def invert_transform(y: torch.Tensor, spec: QuantSpec, axis: int = -1) -> torch.Tensor:
    """The inverse of ``apply_transform`` (its transpose), as float32."""
    return _hadamard_along(y, spec, axis, inverse=True)
