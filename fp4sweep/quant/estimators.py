"""Gradient estimators: how the gradient flows back through a forward quantizer.

A quantizer maps ``x`` to ``x_q = T^-1(y)``, ``y = s * Q(t / s)`` with ``t = T(x)`` (the spec's
orthonormal transform along the axis), ``s`` the effective scale of ``t``'s block and ``Q`` the
rounding onto the element grid. ``Q`` is a staircase; an estimator replaces its derivative with
a surrogate ``D(t)``, per element of the transformed basis:

- "ste": straight-through, ``D = 1``.
- "clipped_ste": ``D = 1``, but 0 where the element saturated (``|t / s|`` beyond the element
  format's max): the gradient of the clipping that saturation is.
- "spline": ``Q`` replaced by a continuous piecewise-linear relaxation ``Q~`` on the element
  grid, and ``D = Q~'`` clipped at 1. Its knots are the grid points ``g`` and the rounding
  boundaries ``m`` (the interval midpoints); ``Q~(g) = g`` at a grid point, and at a boundary
  ``Q~(m)`` lies halfway between ``m`` and the grid point that ties-to-even rounds ``m`` to,
  a quarter interval from that "even" end. Each interval ``[lo, lo + d]`` thus has two pieces:
  the half next to its even end rises by ``d / 4`` over ``d / 2`` (slope 1/2), the other by
  ``3d / 4`` (slope 3/2, clipped to 1). So ``D`` is 1/2 or 1 inside the element range and 0
  only beyond it (saturated elements). Exactly at a knot (a kink), the piece to its right is
  taken (half-open pieces); the top grid point, with no interval above it in range, takes the
  flat piece's 1/2. What is the design-space paper's (Hu et al. 2025, arXiv 2509.17791):
  piecewise linear on the grid's intervals, gradient clipped at 1.0, ties-to-even rounding,
  Wang et al.'s estimator as its baseline. What is our choice, where its text cannot be
  read: the knot values at the boundaries (halfway towards the tie's grid point). A spline
  through the staircase's own values at these knots would have slopes 0 and 2, a gradient
  that vanishes on half of every interval; through ``Q~(m) = m`` it would be STE.
- "power" (Wang et al. 2025, arXiv 2501.17116): ``Q`` replaced inside each interval of width
  ``d`` by ``lo + d/2 * (1 + sign(2u/d - 1) * |2u/d - 1| ** (1/k))``, ``u = |t| - lo``, ``k = 5``,
  whose derivative ``D = |2u/d - 1| ** (1/k - 1) / k`` is unbounded at the interval's midpoint;
  it is clipped at 1 as the design-space paper clips its relaxations' gradients (the bound is
  our choice for this estimator), and is 0 beyond the range.

Gradient through the scale ("scale_grad"). With "stop", ``s`` is a constant. With "amax", the
effective scale is taken to follow its block's absolute maximum ``a = max_j |t_j|``: ``s = c * a``
with ``c = s / a`` held fixed (the rounding of the scale into its format and the tensor scale
pass the gradient straight through, as STE does for the elements). Differentiating
``y_j = s * Q(t_j / s)`` with ``Q' := D``::

    dy_j/dt_i = D_j * [i == j] + (Q(t_j/s) - (t_j/s) * D_j) * ds/dt_i
    ds/dt_i   = c * sign(t_i) * [i is the block's arg-max]

and since ``s * Q(t_j / s) = y_j``, the constant ``c`` cancels::

    grad_t_i = D_i * g_i + [i = argmax] * sign(t_i) / a * sum_{j in block} g_j * (y_j - t_j * D_j)

Ties for the maximum share the second term equally (as ``torch.amax``'s gradient does); an
all-zero block has no scale gradient. Finally the gradient goes back through the transform: for
an orthonormal ``T``, ``grad_x = T^T(grad_t) = T^-1(grad_t)`` with ``g = T(grad_x_q)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from fp4sweep.quant.dispatch import fake_quantize, quantize_detailed
from fp4sweep.quant.formats import FloatFormat
from fp4sweep.quant.reference import QuantResult
from fp4sweep.quant.recipe import ESTIMATORS, SCALE_GRADS
from fp4sweep.quant.rounding import grid_step, round_magnitude
from fp4sweep.quant.spec import QuantSpec
from fp4sweep.quant.transforms import apply_transform, invert_transform

# The relaxations' gradient bound (the design-space paper's); the spline's slopes on the half
# interval next to its ties-to-even grid point and on the other half, before the bound;
# Wang et al.'s power.
GRADIENT_CLIP = 1.0
SPLINE_SLOPES = (0.5, 1.5)
POWER_K = 5.0


def interval_position(r: QuantResult) -> torch.Tensor:
    """``u / d`` in [0, 1]: where ``|t|`` lies in its grid interval ``[lo, lo + d]``.

    The interval's lower end is the quantized magnitude if ``t`` was rounded down, else one
    step below it (this holds for nearest and stochastic rounding alike).
    """
    magnitude, quantized = r.transformed.abs(), r.dequantized.abs()
    lower = torch.where(quantized <= magnitude, quantized, quantized - r.step)
    # A zero block's step can underflow to 0; its elements sit on the grid point 0.
    position = torch.where(r.step == 0, 0.0, (magnitude - lower) / r.step)
    return position.clamp(0.0, 1.0)


def _clipped_ste(r: QuantResult, elem: FloatFormat) -> torch.Tensor:
    return ~r.saturated


def _spline(r: QuantResult, elem: FloatFormat) -> torch.Tensor:
    # In element units, where the grid and its ties are exact: [lo, lo + d) holds |v|.
    magnitude = r.scaled.abs()
    lo = round_magnitude(elem, magnitude, "down")
    half = grid_step(elem, magnitude) * 0.5
    ties_down = round_magnitude(elem, lo + half, "nearest") == lo
    in_lower_half = magnitude - lo < half
    flat, steep = (min(slope, GRADIENT_CLIP) for slope in SPLINE_SLOPES)
    slope = torch.where(in_lower_half == ties_down, flat, steep)
    return torch.where(r.saturated, 0.0, slope)


def _power(r: QuantResult, elem: FloatFormat) -> torch.Tensor:
    distance = (2 * interval_position(r) - 1).abs()
    slope = (distance.pow(1 / POWER_K - 1) / POWER_K).clamp(max=GRADIENT_CLIP)
    return torch.where(r.saturated, 0.0, slope)


# Each estimator's derivative D of the quantizer (bool or float32, transformed basis) from a
# quantization and its element format; STE's is the constant 1 and needs no tensor.
DERIVATIVES: dict[str, Callable[[QuantResult, FloatFormat], torch.Tensor]] = {
    "clipped_ste": _clipped_ste,
    "spline": _spline,
    "power": _power,
}


def block_sum(v: torch.Tensor, spec: QuantSpec, axis: int) -> torch.Tensor:
    """Each element replaced by the sum of ``v`` over its quantization block (same shape)."""
    b = spec.block
    if spec.block_2d:
        rows, cols = v.shape
        tiles = v.reshape(rows // b, b, cols // b, b)
        return tiles.sum(dim=(1, 3), keepdim=True).expand_as(tiles).reshape(v.shape)
    runs = v.movedim(axis, -1)
    blocks = runs.reshape(*runs.shape[:-1], -1, b)
    sums = blocks.sum(dim=-1, keepdim=True).expand_as(blocks)
    return sums.reshape(runs.shape).movedim(-1, axis)


@dataclass
class GradientMap:
    """The backward of one forward quantization: gradient w.r.t. ``x_q`` -> w.r.t. ``x``.

    ``derivative`` is D (None: 1); ``residual`` (y - t * D) and ``argmax_weight``
    (sign(t) / (a * ties) at each block's arg-max, else 0) carry the scale gradient (None:
    stopped). With neither, the map is the identity and is applied as such, exactly.
    """

    spec: QuantSpec
    axis: int
    derivative: torch.Tensor | None = None
    residual: torch.Tensor | None = None
    argmax_weight: torch.Tensor | None = None

    def __call__(self, grad: torch.Tensor) -> torch.Tensor:
        if self.derivative is None and self.residual is None:
            return grad
        g = apply_transform(grad, self.spec, self.axis)
        grad_t = g if self.derivative is None else g * self.derivative
        if self.residual is not None:
            grad_t = grad_t + self.argmax_weight * block_sum(g * self.residual, self.spec, self.axis)
        return invert_transform(grad_t, self.spec, self.axis).to(grad.dtype)


def quantize_for_training(
    x: torch.Tensor,
    spec: QuantSpec,
    axis: int,
    seed: int,
    estimator: str = "ste",
    scale_grad: str = "stop",
    tensor_amax: torch.Tensor | None = None,
) -> tuple[torch.Tensor, GradientMap]:
    """Quantize ``x`` (no autograd) and return the map its gradient takes on the way back;
    ``tensor_amax`` as ``fake_quantize`` takes it."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; valid: {list(ESTIMATORS)}")
    if scale_grad not in SCALE_GRADS:
        raise ValueError(f"unknown scale_grad {scale_grad!r}; valid: {list(SCALE_GRADS)}")
    if estimator == "ste" and scale_grad == "stop":
        return fake_quantize(x, spec, axis, seed, tensor_amax), GradientMap(spec, axis)
    r = quantize_detailed(x, spec, axis, seed, tensor_amax)
    derivative = None if estimator == "ste" else DERIVATIVES[estimator](r, spec.elem_format)
    if scale_grad == "stop":
        return r.output, GradientMap(spec, axis, derivative)
    residual, argmax_weight = _scale_gradient_terms(r, derivative, spec, axis)
    return r.output, GradientMap(spec, axis, derivative, residual, argmax_weight)


def _scale_gradient_terms(
    r: QuantResult, derivative: torch.Tensor | None, spec: QuantSpec, axis: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``y - t * D`` and ``sign(t) / (a * ties)`` at each block's arg-max (0 elsewhere)."""
    t = r.transformed
    residual = r.dequantized - (t if derivative is None else t * derivative)
    is_max = (t.abs() == r.block_amax) & (r.block_amax > 0)
    ties = block_sum(is_max.to(torch.float32), spec, axis)
    argmax_weight = torch.where(is_max, torch.sign(t) / (r.block_amax * ties.clamp(min=1.0)), 0.0)
    return residual, argmax_weight


class FakeQuantize(torch.autograd.Function):
    """``fake_quantize`` with a gradient: the chosen estimator and scale gradient."""

    @staticmethod
    def forward(ctx, x, spec, axis, seed, estimator, scale_grad):  # type: ignore[override]
        output, ctx.gradient_map = quantize_for_training(x, spec, axis, seed, estimator, scale_grad)
        return output

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        return ctx.gradient_map(grad), None, None, None, None, None


def quantize(
    x: torch.Tensor,
    spec: QuantSpec,
    axis: int = -1,
    seed: int = 0,
    estimator: str = "ste",
    scale_grad: str = "stop",
) -> torch.Tensor:
    """Differentiable quantize-dequantize of ``x`` along ``axis`` (see the module docstring)."""
    return FakeQuantize.apply(x, spec, axis, seed, estimator, scale_grad)
