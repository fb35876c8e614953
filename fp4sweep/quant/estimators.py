"""Gradient estimators: how the gradient flows back through a forward quantiser.

A quantiser maps ``x`` to ``x_q = T^-1(y)``, ``y = s * Q(t / s)`` with ``t = T(x)`` (the spec's
orthonormal transform along the axis), ``s`` the effective scale of ``t``'s block and ``Q`` the
rounding onto the element grid. ``Q`` is a staircase; an estimator replaces its derivative with
a surrogate ``D(t)``, per element of the transformed basis:

- "ste": straight-through, ``D = 1``.
- "clipped_ste": ``D = 1``, but 0 where the element saturated (``|t / s|`` beyond the element
  format's max): the gradient of the clipping that saturation is.
- "spline": ``Q`` replaced, inside each grid interval ``[lo, lo + d]``, by the linear spline
  that stays flat near both grid points and rises linearly across the middle band
  ``[a, b] = lo + d * (1 -+ SPLINE_BAND) / 2``; its derivative is ``1 / SPLINE_BAND`` inside
  the band and 0 outside it, clipped to 0 beyond the element format's range. The band of a
  third of the interval gives a top slope of 3, the power estimator's clamp.
- "power" (Wang et al. 2025, arXiv 2501.17116): with ``u`` the position of ``|t|`` within its
  interval of width ``d``, ``D = clamp(|2u/d - 1| ** (1/k - 1) / k, max=3)``, ``k = 5``; also
  0 beyond the range.

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
from fp4sweep.quant.reference import QuantResult
from fp4sweep.quant.recipe import ESTIMATORS, SCALE_GRADS
from fp4sweep.quant.spec import QuantSpec
from fp4sweep.quant.transforms import apply_transform, invert_transform

SPLINE_BAND = 1 / 3
POWER_K = 5.0
POWER_MAX = 3.0


def interval_position(r: QuantResult) -> torch.Tensor:
    """``u / d`` in [0, 1]: where ``|t|`` lies in its grid interval ``[lo, lo + d]``.

    The interval's lower end is the quantised magnitude if ``t`` was rounded down, else one
    step below it (this holds for nearest and stochastic rounding alike).
    """
    magnitude, quantised = r.transformed.abs(), r.dequantized.abs()
    lower = torch.where(quantised <= magnitude, quantised, quantised - r.step)
    # A zero block's step can underflow to 0; its elements sit on the grid point 0.
    position = torch.where(r.step == 0, 0.0, (magnitude - lower) / r.step)
    return position.clamp(0.0, 1.0)


def _clipped_ste(r: QuantResult) -> torch.Tensor:
    return ~r.saturated


def _spline(r: QuantResult) -> torch.Tensor:
    in_band = (interval_position(r) - 0.5).abs() <= SPLINE_BAND / 2
    return torch.where(in_band & ~r.saturated, 1 / SPLINE_BAND, 0.0)


def _power(r: QuantResult) -> torch.Tensor:
    distance = (2 * interval_position(r) - 1).abs()
    slope = (distance.pow(1 / POWER_K - 1) / POWER_K).clamp(max=POWER_MAX)
    return torch.where(r.saturated, 0.0, slope)


# Each estimator's derivative D of the quantiser (bool or float32, transformed basis); STE's is
# the constant 1 and needs no tensor.
DERIVATIVES: dict[str, Callable[[QuantResult], torch.Tensor]] = {
    "clipped_ste": _clipped_ste,
    "spline": _spline,
    "power": _power,
}


def block_sum(v: torch.Tensor, spec: QuantSpec, axis: int) -> torch.Tensor:
    """Each element replaced by the sum of ``v`` over its quantisation block (same shape)."""
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
    """The backward of one forward quantisation: gradient w.r.t. ``x_q`` -> w.r.t. ``x``.

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
) -> tuple[torch.Tensor, GradientMap]:
    """Quantise ``x`` (no autograd) and return the map its gradient takes on the way back."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; valid: {list(ESTIMATORS)}")
    if scale_grad not in SCALE_GRADS:
        raise ValueError(f"unknown scale_grad {scale_grad!r}; valid: {list(SCALE_GRADS)}")
    if estimator == "ste" and scale_grad == "stop":
        return fake_quantize(x, spec, axis, seed), GradientMap(spec, axis)
    r = quantize_detailed(x, spec, axis, seed)
    derivative = None if estimator == "ste" else DERIVATIVES[estimator](r)
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
    """Differentiable quantise-dequantise of ``x`` along ``axis`` (see the module docstring)."""
    return FakeQuantize.apply(x, spec, axis, seed, estimator, scale_grad)
