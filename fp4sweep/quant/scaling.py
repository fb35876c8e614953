"""Scale rules: from a block's absolute maximum to its scale, and the scaled elements.

Notation (all float32, ``fl(.)`` = one correctly rounded float32 operation): ``t`` the
(transformed) values, ``A`` the tensor amax (over finite values), ``a`` a block's amax, ``E``
the element format's max (6 for E2M1), ``emax_e`` its binary exponent (2 for E2M1), ``S`` the
scale format, ``S_top = min(S.max, 2**64)``.

Tensor scaling (two-level scaling, any scale format) multiplies the tensor by the global encode
scale ``g = min(fl(fl(S_top * E) / A), FLT_MAX)`` so that the largest block scale lands on the
top of the scale format's range (or on a lower target ``S_top``, the spec's
``tensor_target_scale``: 256 as TransformerEngine's 4-over-6 recipe and Quartet II use, which
leaves the block scales headroom above it); ``g = 1`` when tensor scaling is off, when ``A == 0`` or when
``g`` underflows to 0. ``S_top`` caps the target at 2**64 so that ``g`` and ``1/g`` stay normal
float32 numbers for wide scale formats (E8M0's max 2**127 times E would overflow float32);
this cap changes nothing for UE4M3, UE5M3 or any scale format with at most 7 exponent bits.

Each rule yields, per block: the scale ``s`` (a value of ``S``), the scaled elements ``v``
(in element units, to be rounded onto the element grid) and the decode scale ``d`` (in units of
``t``: the dequantized value is ``fl(q * d)`` for a rounded element ``q``).

- floor / ceil / nearest::

      a_g = fl(a * g)                    # = max |fl(t * g)|: rounding is monotone
      floor:   s = round_down(S, a_g * 2**-emax_e)      (OCP MX v1.0's rule for E8M0)
      ceil:    s = round_up(S, fl(a_g / E))             (no element saturates)
      nearest: s = round_nearest_even(S, fl(a_g / E))
      v = fl(fl(t * g) / s);   d = fl(s / g)

  Without tensor scaling (g = 1) this is ``v = t / s``, ``d = s``: gfloat's convention.

- nvfp4, TransformerEngine's NVFP4 (kernel ``core_nvfp4.cuh`` and its Python reference)::

      s = round_nearest_even(S, min(fl(a * fl(g * fl(1 / E))), FLT_MAX))  (saturating at S.max)
      d = fl(s * fl(1 / g));   v = fl(t * min(fl(1 / d), FLT_MAX))

- nvfp4_torchao, torchao's ``nvfp4_quantize``, with ``p = fl(A / fl(S_top * E))`` the per-tensor
  decode scale (``p = 1`` without tensor scaling or when ``A == 0``)::

      s = round_nearest_even(S, clamp(fl(fl(a / E) / p), S.min_normal, S.max))
      d = fl(p * s);   v = fl(t / d)

Scale selection "4 over 6" (the spec's ``scale_select``; Four Over Six, arXiv 2512.02010, and
TransformerEngine's ``nvfp4_4over6``), for the nvfp4 rule on 1-D blocks of a power-of-two
length: each block is scaled twice, with ``E`` (its amax to 6) and with 4 in place of ``E``
(its amax to 4, where E2M1's grid is finer relative to the amax), both candidates are rounded
to nearest, and the one whose dequantized block is closer to ``t`` is kept: by squared error
("4over6_mse") or absolute error ("4over6_mae"), summed over the block as a pairwise tree
(elements 2i and 2i+1, then their sums likewise), a fixed order that a kernel can repeat; a tie
(or a NaN block) keeps the amax-to-6 scale. The kept candidate's ``v`` is then rounded as the
spec says (also stochastically). The tree order, the tie rule and nearest rounding for the
comparison are our choices where the sources leave them open.

Stochastic rounding of the block scale (the spec's ``scale_rounding="sr"``, which the
design-space paper offers beside element SR): for the rules that round the scale to nearest
(nearest, nvfp4, nvfp4_torchao), the ideal scale is rounded stochastically instead, up with
probability its position between its two neighbours in the scale format (24 random bits,
unbiased), with ``u`` from the counter-based stream (``rng.STREAM_SCALES``) whose counter is
the row-major index in ``x`` of the block's first element. A scale rounded down lets the
block's largest elements exceed ``E``: they saturate, as with any rounded-down scale.

MS-EDEN (the spec's ``scale_rounding="ms_eden"``; Quartet II, arXiv 2601.22813, and its
``src/models/quantization/schemes/quartet_2.py``, ``eden_1x16s_fp4_kernel``): the randomness
moves from the elements to the block scales. With ``t`` rotated by a random-sign Hadamard of
size K, the nvfp4 rule gives ``s``, ``d``, ``v``; the elements are rounded to nearest,
``q = rne(v)``; over each Hadamard run of K elements (K / block blocks)::

      c = fl(sum(v * v) / sum(v * q))      (1 where the denominator is 0; EDEN's correction)
      s' = round_stochastic(S, fl(s * c))  (24 bits, the scale stream, as scale SR draws it)
      d' = fl(s' * fl(1 / g));   dequantized = fl(q * d')

so that ``q * d'`` is, in expectation over the scale's rounding, ``q * s * c / g``: EDEN's
rescaled projection (Vargaftik et al. 2022), unbiased in expectation over a uniformly random
rotation, and nearly so over random Hadamard signs drawn afresh at every step
(``Recipe.sign_policy="per_step"``; ``tests/quant/test_ms_eden.py`` measures it: within 0.1 %
where nearest scales fall about 1 % short). Both sums are
pairwise trees over the run, in the order ``pairwise_sum`` gives. Departures from
``quartet_2.py``, where its own choice is either unstated or tied to its hardware: elements
round to nearest with ties to even (it rounds ties away from zero; ties have probability zero
on continuous data); ``u`` comes from ``rng.py``'s stream (its ``tl.rand`` Philox stream is not
reproducible outside Triton); the correction is rounded with the scale format's own rounding
(its ±1-bit neighbours of the E4M3 code, with no rule at code 0 or at 448, and Triton's fp32 to
E4M3 conversion, whose saturation is unstated); its sums are ``tl.sum`` in an unstated order;
its block amax aims at 6 / (17/16 * 0.93) in the backward pass (a headroom this definition
leaves to ``tensor_target_scale``, 256 as its 255.99); a zero scale becomes the format's
smallest positive value (it uses 1).

Pre-scale before stochastic rounding (the spec's ``prescale``, a factor ``c``): after the rule,
``v' = fl(v * c)`` is rounded and ``d' = fl(d / c)`` decodes it, so the grid keeps ``1/c`` of
headroom above the block's largest element. ``c = 16/17`` (as float32): the 17/16 margin of
NVIDIA's and Quartet II's gradient quantizers, which keeps a block scale rounded down by up to
1/16 (UE4M3) from clipping; ``c = 3/4``: Tseng et al.'s (arXiv 2502.20586) scaling of MXFP4
operands before stochastic rounding, which keeps the OCP floor rule's elements (up to 8) at
most 6. Where these sources apply the factor (to the scale before its rounding, or to the
operand before the block scale) this definition applies it to the scaled elements, after the
block scale: a choice of ours that keeps the block scales those of the rule.

Zero or underflowing scales: a scale that rounds below the format's smallest positive value
becomes that smallest positive value (2**-127 for E8M0, 2**-9 for UE4M3, 2**-17 for UE5M3), so
nothing is ever divided by zero and an all-zero block quantizes to zeros. TransformerEngine
instead keeps the zero scale (such a block then dequantizes to zero): the only place where
"nvfp4" departs from it, and only for blocks below about 2**-10 / 448 of the tensor amax.
torchao's rule never underflows (its lower clamp is the smallest normal).

Non-finite values: a NaN makes its block's amax, scale and every element NaN. An infinity makes
its block's scale the format's max and rounds to +-E there, so it dequantizes to +-fl(E * d)
(which overflows back to infinity where E times the scale format's max exceeds float32, as with
E8M0). The tensor amax ignores both, so other blocks are unaffected. (With a transform, a
non-finite value first spreads over its Hadamard run.)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from fp4sweep.quant.formats import FloatFormat
from fp4sweep.quant.rounding import round_magnitude, round_signed
from fp4sweep.quant.spec import PRESCALES, SCALE_RULES

FLT_MAX = torch.finfo(torch.float32).max
TENSOR_TARGET_CAP = 2.0**64
FOUR_OVER_SIX_MAX = 4.0  # the second candidate's target for the block amax


@dataclass(frozen=True)
class ScaledBlocks:
    """One scale rule's result for a blocked tensor ``t`` of shape (..., blocks, block_len).

    elements: ``v``, the scaled values in element units, before element rounding.
    scale: ``s`` per block (shape (..., blocks, 1)), a value of the scale format.
    decode: ``d`` per block: dequantized = fl(rounded element * d), in units of ``t``.
    tensor_scale: the global encode scale ``g`` (0-d; 1 without tensor scaling; ``fl(1 / p)``
        for the torchao rule, which divides by ``p`` instead).
    """

    elements: torch.Tensor
    scale: torch.Tensor
    decode: torch.Tensor
    tensor_scale: torch.Tensor


def finite_amax(t: torch.Tensor) -> torch.Tensor:
    """max |t| over the finite values of ``t`` (0 if there are none), a 0-d float32 tensor."""
    if t.numel() == 0:
        return torch.zeros((), dtype=torch.float32, device=t.device)
    magnitude = t.abs()
    return torch.where(torch.isfinite(magnitude), magnitude, 0.0).amax()


def _f32(value: float, like: torch.Tensor) -> torch.Tensor:
    # Divisors are device tensors, never Python numbers: on CUDA, PyTorch turns a division by a
    # host scalar into a multiplication by its reciprocal, which rounds differently.
    return torch.tensor(value, dtype=torch.float32, device=like.device)


def tensor_target(elem: FloatFormat, scale: FloatFormat, like: torch.Tensor,
                  target_scale: int = 0) -> torch.Tensor:
    """fl(S_top * E): where tensor scaling puts the tensor amax; ``S_top`` is ``target_scale``,
    or with 0 the scale format's max (capped at 2**64)."""
    top = target_scale or min(scale.max, TENSOR_TARGET_CAP)
    return _f32(top, like) * _f32(elem.max, like)


def global_encode_scale(amax: torch.Tensor, elem: FloatFormat, scale: FloatFormat,
                        target_scale: int = 0) -> torch.Tensor:
    """The tensor's encode scale ``g`` (0-d float32), as TransformerEngine computes it."""
    g = torch.clamp(tensor_target(elem, scale, amax, target_scale) / amax, max=FLT_MAX)
    return torch.where((amax == 0) | (g == 0), _f32(1.0, amax), g)


def _at_least_smallest(scale: FloatFormat, s: torch.Tensor) -> torch.Tensor:
    # torch.maximum propagates NaN, so a NaN block keeps its NaN scale.
    return torch.maximum(s, _f32(scale.min_positive, s))


def _round_scale(scale: FloatFormat, ideal: torch.Tensor, u: torch.Tensor | None) -> torch.Tensor:
    """``ideal`` rounded to nearest-even in the scale format, or stochastically with ``u``."""
    if u is None:
        return round_magnitude(scale, ideal, "nearest")
    return round_magnitude(scale, ideal, "stochastic", u)


def _amax_rule(
    rule: str, t: torch.Tensor, amax: torch.Tensor, g: torch.Tensor,
    elem: FloatFormat, scale: FloatFormat, u: torch.Tensor | None,
) -> ScaledBlocks:
    a_g = amax * g
    if rule == "floor":
        s = round_magnitude(scale, a_g * 2.0**-elem.emax, "down")
    elif rule == "ceil":
        s = round_magnitude(scale, a_g / _f32(elem.max, t), "up")
    else:
        s = _round_scale(scale, a_g / _f32(elem.max, t), u)
    s = _at_least_smallest(scale, s)
    return ScaledBlocks(elements=(t * g) / s, scale=s, decode=s / g, tensor_scale=g)


def _nvfp4_rule(
    t: torch.Tensor, amax: torch.Tensor, g: torch.Tensor, elem: FloatFormat, scale: FloatFormat,
    target: float, u: torch.Tensor | None = None,
) -> ScaledBlocks:
    """The nvfp4 rule with the block amax aimed at ``target`` (the element max, or 4)."""
    one = _f32(1.0, t)
    ideal = torch.clamp(amax * (g * (one / _f32(target, t))), max=FLT_MAX)
    s = _at_least_smallest(scale, _round_scale(scale, ideal, u))
    d = s * (one / g)
    encode = torch.clamp(one / d, max=FLT_MAX)
    return ScaledBlocks(elements=t * encode, scale=s, decode=d, tensor_scale=g)


def _torchao_rule(
    t: torch.Tensor, amax: torch.Tensor, tensor_amax: torch.Tensor | None,
    elem: FloatFormat, scale: FloatFormat, target_scale: int, u: torch.Tensor | None,
) -> ScaledBlocks:
    one = _f32(1.0, t)
    if tensor_amax is None:
        p = one
    else:
        p = tensor_amax / tensor_target(elem, scale, t, target_scale)
        p = torch.where(p == 0, one, p)
    ideal = torch.clamp((amax / _f32(elem.max, t)) / p, min=scale.min_normal, max=scale.max)
    s = _round_scale(scale, ideal, u)
    d = p * s
    return ScaledBlocks(elements=t / d, scale=s, decode=d, tensor_scale=one / p)


def scale_blocks(
    rule: str, t: torch.Tensor, elem: FloatFormat, scale: FloatFormat, tensor_scaling: bool,
    tensor_amax: torch.Tensor | None = None, target_scale: int = 0, prescale: str = "1",
    select: str = "max", scale_u: torch.Tensor | None = None,
) -> ScaledBlocks:
    """Apply scale rule ``rule`` to float32 ``t`` of shape (..., blocks, block_len).

    ``target_scale``: the block scale that tensor scaling targets (0: the format's max);
    ``prescale``: a name in ``PRESCALES``; ``select``: one of ``SCALE_SELECTS``; ``scale_u``:
    uniform numbers per block (shape (..., blocks, 1)) to round the scale stochastically with.

    With tensor scaling, ``tensor_amax`` (a 0-d float32 tensor) replaces ``A``, the finite amax
    of ``t``: a delayed scale (``delayed.py``). Where it is below ``t``'s own, the largest
    blocks' scales saturate at the scale format's max and their elements at ``E``.
    """
    if rule not in SCALE_RULES:
        raise ValueError(f"unknown scale rule {rule!r}; valid: {list(SCALE_RULES)}")
    scaled = _scale_rule(rule, t, elem, scale, tensor_scaling, tensor_amax, target_scale, select,
                         scale_u)
    if prescale == "1":
        return scaled
    c = _f32(PRESCALES[prescale], t)
    return dataclasses.replace(scaled, elements=scaled.elements * c, decode=scaled.decode / c)


def _scale_rule(
    rule: str, t: torch.Tensor, elem: FloatFormat, scale: FloatFormat, tensor_scaling: bool,
    tensor_amax: torch.Tensor | None, target_scale: int, select: str, u: torch.Tensor | None,
) -> ScaledBlocks:
    amax = t.abs().amax(dim=-1, keepdim=True)  # NaN-propagating: a NaN poisons its block only
    if not tensor_scaling:
        tensor_amax = None
    elif tensor_amax is None:
        tensor_amax = finite_amax(t)
    if rule == "nvfp4_torchao":
        return _torchao_rule(t, amax, tensor_amax, elem, scale, target_scale, u)
    if tensor_amax is None:
        g = _f32(1.0, t)
    else:
        g = global_encode_scale(tensor_amax, elem, scale, target_scale)
    if rule == "nvfp4":
        six = _nvfp4_rule(t, amax, g, elem, scale, elem.max, u)
        if select == "max":
            return six
        four = _nvfp4_rule(t, amax, g, elem, scale, FOUR_OVER_SIX_MAX)
        squared = select == "4over6_mse"
        keep_four = _block_error(t, four, elem, squared) < _block_error(t, six, elem, squared)
        return ScaledBlocks(
            elements=torch.where(keep_four, four.elements, six.elements),
            scale=torch.where(keep_four, four.scale, six.scale),
            decode=torch.where(keep_four, four.decode, six.decode),
            tensor_scale=g,
        )
    return _amax_rule(rule, t, amax, g, elem, scale, u)


def _block_error(t: torch.Tensor, scaled: ScaledBlocks, elem: FloatFormat, squared: bool) -> torch.Tensor:
    """Each block's error after rounding ``scaled`` to nearest: the sum of squared (or absolute)
    differences from ``t``, added as a pairwise tree (shape (..., blocks, 1))."""
    error = round_signed(elem, scaled.elements, "nearest") * scaled.decode - t
    return pairwise_sum(error * error if squared else error.abs())


def pairwise_sum(values: torch.Tensor) -> torch.Tensor:
    """Sums over the last axis (a power-of-two length) as a pairwise tree, elements 2i and
    2i + 1 first: a fixed order that a kernel repeats (shape (..., 1))."""
    while values.shape[-1] > 1:
        values = values[..., 0::2] + values[..., 1::2]
    return values


def ms_eden(scaled: ScaledBlocks, q: torch.Tensor, scale: FloatFormat, run: int,
            u: torch.Tensor) -> ScaledBlocks:
    """Quartet II's MS-EDEN correction of the nvfp4 rule's blocks (the module docstring):
    ``scaled`` from the rule, ``q`` its elements rounded to nearest (both (..., blocks, block)),
    ``run`` the Hadamard size, ``u`` a uniform number per block (shape (..., blocks, 1))."""
    v = scaled.elements
    *outer, blocks, block = v.shape
    runs = (*outer, blocks * block // run, run)
    num = pairwise_sum((v * v).reshape(runs))
    den = pairwise_sum((v * q).reshape(runs))
    correction = torch.where(den == 0, _f32(1.0, v), num / den)
    per_block = correction.expand(*runs[:-1], run // block).reshape(*outer, blocks, 1)
    s = _at_least_smallest(scale, _round_scale(scale, scaled.scale * per_block, u))
    return dataclasses.replace(scaled, scale=s, decode=s * (_f32(1.0, v) / scaled.tensor_scale))
