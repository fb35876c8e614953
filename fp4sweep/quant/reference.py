"""The reference quantizer: quantize-dequantize ("fake quantization") of a tensor along one
axis, in pure PyTorch.

The one semantic definition of every quantizer in fp4sweep. For ``x`` and a ``QuantSpec``:

1. ``t = T(x)``: float32, after the spec's transform along ``axis`` (``transforms.py``);
2. ``t`` is cut into blocks: runs of ``block`` elements along ``axis``, or ``block x block``
   tiles of a 2-D tensor when ``block_2d``;
3. the scale rule gives each block its scale, the scaled elements ``v`` and the decode scale
   ``d`` (``scaling.py``, which also covers tensor scaling, zero blocks and non-finite values);
4. each ``v`` is rounded onto the element grid, nearest-even or stochastically, saturating at
   the element format's max (``rounding.py``); stochastic rounding draws ``u`` from the
   counter-based stream (``rng.py``) with the element's row-major index in ``x`` as counter;
   with MS-EDEN the block scales are then corrected and rounded stochastically (``scaling.py``);
5. the dequantized values ``fl(q * d)`` are mapped back through the inverse transform and
   cast to ``x.dtype``.

Every step is a fixed sequence of float32 operations whatever ``x.dtype`` is, so a kernel can
reproduce it bit for bit, provided it rounds every operation as IEEE 754 does: correctly
rounded division (``div_rn``, not an approximate reciprocal), no fused multiply-add contraction,
``rint`` for ties-to-even, and the butterfly order of ``transforms.walsh_hadamard``.

Lengths that the block (or the Hadamard size) does not divide are rejected with a ValueError;
nothing is padded. The result carries no gradient: the gradient estimators wrap this function.

This module imports no kernel; ``dispatch`` chooses between it and the kernels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fp4sweep.quant.rng import STREAM_SCALES, check_seed, uniform
from fp4sweep.quant.rounding import grid_step, round_signed
from fp4sweep.quant.scaling import ScaledBlocks, ms_eden, scale_blocks
from fp4sweep.quant.spec import QuantSpec
from fp4sweep.quant.transforms import apply_transform, check_transform_axis, invert_transform


@dataclass(frozen=True)
class QuantResult:
    """Everything one quantization computed.

    ``output`` is in the original basis and dtype; every other tensor field is float32, has
    ``x``'s shape and lies in the TRANSFORMED basis (the basis of the quantization grid; it is
    the original basis when the spec has no transform):

    output: the dequantized tensor mapped back through the inverse transform, ``x.dtype``.
    transformed: ``t``, ``x`` after the transform, before any scaling.
    dequantized: ``q * scale`` before the inverse transform (what the GEMM sees).
    scaled: ``v``, the block-scaled values in element units, before element rounding.
    elements: ``q``, ``v`` rounded onto the element grid (values of the element format).
    scale: effective scale of each element's block in units of ``t`` (block scale combined with
        the tensor scale): ``dequantized = fl(elements * scale)``.
    block_scale: each element's block scale, a value of the scale format.
    block_amax: max |t| over each element's block.
    step: width of the element-grid interval containing the element's scaled value, in units of
        ``t`` (the top binade's spacing for saturated elements).
    saturated: the element's scaled magnitude exceeded the element format's max.
    tensor_scale: the global encode scale (0-d; 1 without tensor scaling).

    ``scale`` and ``step`` are positive, except where the decode scale underflows float32: with
    tensor scaling on a scale format as wide as float32 (E8M0, fp32), blocks near zero get
    ``scale == 0`` (and dequantize to 0).
    """

    output: torch.Tensor
    transformed: torch.Tensor
    dequantized: torch.Tensor
    scaled: torch.Tensor
    elements: torch.Tensor
    scale: torch.Tensor
    block_scale: torch.Tensor
    block_amax: torch.Tensor
    step: torch.Tensor
    saturated: torch.Tensor
    tensor_scale: torch.Tensor


@dataclass(frozen=True)
class _Blocking:
    """How an axis-last tensor is cut into blocks: (..., L) <-> (..., blocks, block_len)."""

    shape: torch.Size
    block: int
    two_d: bool

    def split(self, y: torch.Tensor) -> torch.Tensor:
        b = self.block
        if not self.two_d:
            return y.reshape(*self.shape[:-1], self.shape[-1] // b, b)
        rows, cols = self.shape
        tiles = y.reshape(rows // b, b, cols // b, b).permute(0, 2, 1, 3)
        return tiles.reshape(rows // b, cols // b, b * b)

    def merge(self, blocks: torch.Tensor) -> torch.Tensor:
        b = self.block
        if not self.two_d:
            return blocks.reshape(self.shape)
        rows, cols = self.shape
        tiles = blocks.reshape(rows // b, cols // b, b, b).permute(0, 2, 1, 3)
        return tiles.reshape(rows, cols)


def check_input(x: torch.Tensor, spec: QuantSpec, axis: int) -> int:
    """The quantization axis of ``x`` as a non-negative int, or a ValueError saying what about
    ``x``, ``spec`` or ``axis`` cannot be quantized."""
    if not isinstance(spec, QuantSpec):
        raise ValueError(f"spec must be a QuantSpec, got {type(spec).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"only floating-point tensors can be quantized, got {x.dtype}")
    if x.dim() == 0:
        raise ValueError("a 0-d tensor has no axis to quantize along")
    if not -x.dim() <= axis < x.dim():
        raise ValueError(f"axis {axis} is out of range for a {x.dim()}-d tensor")
    axis %= x.dim()
    length = x.shape[axis]
    if length % spec.block:
        raise ValueError(
            f"the quantization axis (axis {axis}, length {length}) must be a multiple of the "
            f"block size {spec.block}"
        )
    check_transform_axis(spec, length)
    if spec.block_2d:
        if x.dim() != 2:
            raise ValueError(f"block_2d quantizes 2-d tensors (weights), got {x.dim()}-d")
        other = x.shape[1 - axis]
        if other % spec.block:
            raise ValueError(
                f"block_2d needs both axes to be multiples of the block size {spec.block}, "
                f"got shape {tuple(x.shape)}"
            )
    return axis


def _element_counters(x: torch.Tensor, axis: int, blocking: _Blocking) -> torch.Tensor:
    """Row-major index of every element in ``x``, laid out like the blocked values."""
    index = torch.arange(x.numel(), dtype=torch.int64, device=x.device).reshape(x.shape)
    return blocking.split(index.movedim(axis, -1))


@dataclass(frozen=True)
class _Quantized:
    """The blocked intermediate values of one quantization (axis last, float32)."""

    axis: int
    blocking: _Blocking
    blocks: torch.Tensor
    scaled: ScaledBlocks
    elements: torch.Tensor
    dequantized: torch.Tensor

    def to_x_layout(self, blocked: torch.Tensor) -> torch.Tensor:
        """A blocked (or per-block) tensor back in ``x``'s layout."""
        full = blocked.expand(self.blocks.shape)
        return self.blocking.merge(full).movedim(-1, self.axis)


def check_tensor_amax(tensor_amax: torch.Tensor | None, spec: QuantSpec) -> None:
    """A ValueError unless ``tensor_amax`` is None or a 0-d float32 tensor for a spec with
    tensor scaling (its value, a finite magnitude, is the caller's to keep: checking it would
    wait for the device)."""
    if tensor_amax is None:
        return
    if not spec.tensor_scale:
        raise ValueError("a given tensor_amax needs a spec with tensor_scale=True")
    if tensor_amax.dim() != 0 or tensor_amax.dtype != torch.float32:
        raise ValueError(
            f"tensor_amax must be a 0-d float32 tensor, got {tensor_amax.dtype} of shape "
            f"{tuple(tensor_amax.shape)}"
        )


def _quantize(x: torch.Tensor, spec: QuantSpec, axis: int, seed: int,
              tensor_amax: torch.Tensor | None) -> _Quantized:
    axis = check_input(x, spec, axis)
    check_seed(seed)
    check_tensor_amax(tensor_amax, spec)
    t = apply_transform(x.detach(), spec, axis).movedim(axis, -1)
    blocking = _Blocking(t.shape, spec.block, spec.block_2d)
    blocks = blocking.split(t)
    elem = spec.elem_format
    scale_u = None
    if spec.scale_rounding != "nearest":
        # Each block's counter: the row-major index of its first element, its least.
        first = _element_counters(x, axis, blocking)[..., :1]
        scale_u = uniform(first, seed, 24, STREAM_SCALES)
    scaled = scale_blocks(spec.scale_rule, blocks, elem, spec.scale_format, spec.tensor_scale,
                          tensor_amax, spec.tensor_target_scale, spec.prescale,
                          spec.scale_select, scale_u if spec.scale_rounding == "sr" else None)
    if spec.rounding == "rne":
        q = round_signed(elem, scaled.elements, "nearest")
    else:
        u = uniform(_element_counters(x, axis, blocking), seed, spec.sr_bits)
        q = round_signed(elem, scaled.elements, "stochastic", u)
    if spec.scale_rounding == "ms_eden":
        scaled = ms_eden(scaled, q, spec.scale_format, spec.hadamard_size, scale_u)
    return _Quantized(axis, blocking, blocks, scaled, q, q * scaled.decode)


def _output(x: torch.Tensor, spec: QuantSpec, quantized: _Quantized) -> torch.Tensor:
    dequantized = quantized.to_x_layout(quantized.dequantized)
    return invert_transform(dequantized, spec, quantized.axis).to(x.dtype)


def fake_quantize(
    x: torch.Tensor, spec: QuantSpec, axis: int = -1, seed: int = 0,
    tensor_amax: torch.Tensor | None = None,
) -> torch.Tensor:
    """Quantize-dequantize ``x`` along ``axis`` as ``spec`` says; same shape and dtype as ``x``.

    ``seed`` (an int in [0, 2**64)) keys stochastic rounding; "rne" ignores it.
    ``tensor_amax`` (0-d float32, on ``x``'s device) replaces the tensor amax of tensor scaling
    (a delayed scale, ``delayed.py``).
    """
    with torch.no_grad():
        return _output(x, spec, _quantize(x, spec, axis, seed, tensor_amax))


def quantize_detailed(
    x: torch.Tensor, spec: QuantSpec, axis: int = -1, seed: int = 0,
    tensor_amax: torch.Tensor | None = None,
) -> QuantResult:
    """``fake_quantize`` with its intermediate values (see ``QuantResult``)."""
    with torch.no_grad():
        return _detailed(x, spec, axis, seed, tensor_amax)


def _detailed(x: torch.Tensor, spec: QuantSpec, axis: int, seed: int,
              tensor_amax: torch.Tensor | None) -> QuantResult:
    quantized = _quantize(x, spec, axis, seed, tensor_amax)
    layout = quantized.to_x_layout
    scaled, elem = quantized.scaled, spec.elem_format
    magnitude = scaled.elements.abs()
    return QuantResult(
        output=_output(x, spec, quantized),
        transformed=layout(quantized.blocks),
        dequantized=layout(quantized.dequantized),
        scaled=layout(scaled.elements),
        elements=layout(quantized.elements),
        scale=layout(scaled.decode),
        block_scale=layout(scaled.scale),
        block_amax=layout(quantized.blocks.abs().amax(dim=-1, keepdim=True)),
        step=layout(grid_step(elem, magnitude) * scaled.decode),
        saturated=layout(magnitude > elem.max),
        tensor_scale=scaled.tensor_scale,
    )
