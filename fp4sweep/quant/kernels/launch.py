"""Host side of the fused quantiser: checks, tile geometry, tuning, launches.

``fake_quantize`` here returns the same bits as ``fp4sweep.quant.quantize.fake_quantize`` (the
reference) for every spec that ``supports`` accepts; the reference's own helpers supply the
Hadamard signs and the stochastic-rounding key, so those agree by construction.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass

import torch
import triton

from fp4sweep.quant.formats import FloatFormat
from fp4sweep.quant.kernels import quantiser
from fp4sweep.quant.quantize import _check_input
from fp4sweep.quant.rng import STREAM_ROUNDING, stream_key
from fp4sweep.quant.scaling import SCALE_RULES, tensor_target
from fp4sweep.quant.spec import QuantSpec
from fp4sweep.quant.transforms import hadamard_signs

WIDE_NUMEL = 2**31  # from here on, offsets (and counters) need 64 bits
MAX_AXIS_COLS = 128  # positions per tile along a contiguous quantisation axis (PLAIN layout)
MAX_THREAD_RUN = 64  # float32 values of one line a thread may hold (vector layouts)
VECTOR_BYTES = 16  # the widest load of one thread
TUNED_NUMEL = 2**22  # tensors from this size on get their tile shape tuned
PLAIN, AXIS_VECTORS, LINE_VECTORS = range(3)  # quantiser.py's tile layouts

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"

# (elements per tile, warps). The interpreter runs one: tuning there would only cost time.
_TILES = ((4096, 4), (8192, 8))
if INTERPRETED:
    _TILES = _TILES[:1]
_CONFIGS = [triton.Config({"TILE": tile, "WARPS": warps}, num_warps=warps)
            for tile, warps in _TILES]


def _rows(args: dict) -> int:
    """Lines per tile: about TILE elements, and never so few that threads would share elements.

    The vector layouts take enough lines that every lane of every warp holds lines of its own
    (with fewer, Triton 3.6 spread the runs over lanes and warps or copied them, and blocks came
    out wrong on the GPU); the plain layout takes at most what the tensor has, but one vector
    for each thread. All take whole 2-D blocks and whole line vectors. The interpreter has no
    threads to keep apart: there, tiles shrink to small tensors and small tests stay fast.
    """
    rows = args["TILE"] // args["COLS"]
    fitted = min(rows, triton.next_power_of_2(args["n_lines"]))
    whole = max(args["BLOCK"] if args["BLOCK_2D"] else 1,
                args["VEC"] if args["LAYOUT"] == LINE_VECTORS else 1)
    if INTERPRETED:
        return max(fitted, whole)
    every_thread = 32 * args["WARPS"]
    if args["LAYOUT"] == AXIS_VECTORS:
        return max(rows, every_thread, whole)
    if args["LAYOUT"] == LINE_VECTORS:
        return max(rows, every_thread * args["VEC"], whole)
    return max(fitted, every_thread * args["VEC"] // args["COLS"], whole)


def _tuning_pays(configs: list, named_args: dict, **constants) -> list:
    """Tune on tensors large enough for it to matter; take the first config on small ones."""
    numel = named_args["n_lines"] * named_args["n_axis_tiles"] * constants["COLS"]
    return configs if numel >= TUNED_NUMEL else configs[:1]


def _tuned(kernel):
    tuned = triton.heuristics({"ROWS": _rows})(kernel)
    return triton.autotune(
        _CONFIGS, key=["n_lines", "n_axis_tiles", "stride", "AXIS_CONTIGUOUS", "LAYOUT"],
        prune_configs_by={"early_config_prune": _tuning_pays},
    )(tuned)


_fake_quantize = _tuned(quantiser.fake_quantize_kernel)
_tensor_amax = _tuned(quantiser.tensor_amax_kernel)


def supports(spec: QuantSpec) -> bool:
    """Whether the kernels implement ``spec``: every spec whose block is a power of two, and
    1-D blocks of any size without a transform (a tile dimension must be a power of two)."""
    power_of_two = spec.block & (spec.block - 1) == 0
    return power_of_two or (not spec.block_2d and not spec.hadamard_size)


@dataclass(frozen=True)
class _Geometry:
    """The contiguous tensor as (outer, axis, inner) and its tiles (module ``quantiser``)."""

    n_outer: int
    n_lines: int
    stride: int
    axis_contiguous: bool
    n_axis_tiles: int
    cols: int
    padded: bool
    layout: int
    vec: int  # elements of a thread's widest load; the vector layouts' vector length

    @classmethod
    def of(cls, x: torch.Tensor | _Shape, axis: int, spec: QuantSpec) -> _Geometry:
        length = x.shape[axis]
        outer, inner = math.prod(x.shape[:axis]), math.prod(x.shape[axis + 1:])
        if inner == 1:  # the axis is contiguous: lines are rows
            n_outer, n_lines, strides = 1, outer, (length, True)
        else:  # lines are the contiguous inner elements, one set per outer index
            n_outer, n_lines, strides = outer, inner, (inner, False)
        vec = VECTOR_BYTES // x.element_size()
        if spec.block & (spec.block - 1):  # padded to a power of two, one block per tile row
            return cls(n_outer, n_lines, *strides, length // spec.block,
                       triton.next_power_of_2(spec.block), True, PLAIN, vec)
        cols = max(spec.block, spec.hadamard_size)
        # Measured on an H200 (docs/benchmarks.md): along a contiguous axis the plain layout
        # reads best, unless butterflies want whole Hadamard runs in one thread; along a strided
        # axis the line vectors do.
        if inner == 1 and spec.hadamard_size and vec <= cols <= MAX_THREAD_RUN:
            return cls(n_outer, n_lines, *strides, length // cols, cols, False, AXIS_VECTORS, vec)
        if inner > 1 and cols <= MAX_THREAD_RUN:
            vec = max(1, min(vec, MAX_THREAD_RUN // cols))
            return cls(n_outer, n_lines, *strides, length // cols, cols, False, LINE_VECTORS, vec)
        if inner == 1:
            # Longer contiguous runs per tile row, as long as they divide the axis.
            while cols * 2 <= MAX_AXIS_COLS and length % (cols * 2) == 0:
                cols *= 2
        return cls(n_outer, n_lines, *strides, length // cols, cols, False, PLAIN, vec)

    def launch(self, kernel, x: torch.Tensor, *args, **constants) -> None:
        def grid(meta: dict) -> tuple[int]:
            return (self.n_axis_tiles * self.n_outer * triton.cdiv(self.n_lines, meta["ROWS"]),)

        kernel[grid](
            x, *args, self.n_lines, self.n_axis_tiles, self.stride,
            AXIS_CONTIGUOUS=self.axis_contiguous, LAYOUT=self.layout, VEC=self.vec,
            COLS=self.cols, PADDED=self.padded,
            WIDE=x.numel() >= WIDE_NUMEL, enable_fp_fusion=False, **constants,
        )


@functools.lru_cache(maxsize=None)
def _tensor_target(elem: FloatFormat, scale: FloatFormat) -> float:
    return tensor_target(elem, scale, torch.empty(0)).item()


@functools.lru_cache(maxsize=None)
def _signs(size: int, seed: int, device: torch.device) -> torch.Tensor:
    return hadamard_signs(size, seed).to(device)


def _transform_constants(spec: QuantSpec) -> dict:
    k = spec.hadamard_size
    normaliser = torch.tensor(1.0 / math.sqrt(k), dtype=torch.float32).item() if k else 1.0
    return dict(BLOCK=spec.block, BLOCK_2D=spec.block_2d, HAD=k,
                LOG_HAD=k.bit_length() - 1 if k else 0, NORMALISER=normaliser,
                RANDOM_SIGNS=spec.random_signs)


def _format_constants(prefix: str, fmt: FloatFormat) -> dict:
    return {f"{prefix}_EMIN": fmt.emin, f"{prefix}_MAN": fmt.man_bits, f"{prefix}_MAX": fmt.max}


@dataclass(frozen=True)
class _Plan:
    """Everything about a launch that the seed and the tensor's values do not change."""

    geometry: _Geometry
    amax_constants: dict  # the tensor-amax kernel's (used with tensor scaling only)
    constants: dict  # the quantiser kernel's


@functools.lru_cache(maxsize=4096)
def _plan(spec: QuantSpec, x: _Shape) -> _Plan:
    elem, scale = spec.elem_format, spec.scale_format
    transform = _transform_constants(spec)
    constants = dict(
        transform, RULE=SCALE_RULES.index(spec.scale_rule), TENSOR_SCALE=spec.tensor_scale,
        TARGET=_tensor_target(elem, scale),
        S_MIN_POSITIVE=scale.min_positive, S_MIN_NORMAL=scale.min_normal,
        S_BIAS=scale.bias, E_EMAX=elem.emax, SR=spec.rounding == "sr", SR_BITS=spec.sr_bits,
        # The interpreter truncates a float32 -> bfloat16 cast; compiled code rounds.
        NATIVE_BF16=not INTERPRETED,
        **_format_constants("S", scale), **_format_constants("E", elem),
    )
    return _Plan(_Geometry.of(x, x.axis, spec), transform, constants)


@dataclass(frozen=True)
class _Shape:
    """What a plan needs of the tensor: hashable, unlike the tensor."""

    shape: tuple[int, ...]
    axis: int
    itemsize: int

    def element_size(self) -> int:
        return self.itemsize


def fake_quantize(x: torch.Tensor, spec: QuantSpec, axis: int = -1, seed: int = 0) -> torch.Tensor:
    """The reference's ``fake_quantize`` as fused kernels; same arguments, same bits."""
    axis = _check_input(x, spec, axis)
    key = stream_key(seed, STREAM_ROUNDING)  # also checks the seed
    if not supports(spec):
        raise ValueError(
            f"the kernels need a power-of-two block for block_2d or a transform, got "
            f"block={spec.block} (block_2d={spec.block_2d}, transform={spec.transform!r})"
        )
    x = x.detach().contiguous()
    out = torch.empty_like(x)
    if x.numel() == 0:
        return out
    plan = _plan(spec, _Shape(tuple(x.shape), axis, x.element_size()))
    signs = _signs(spec.hadamard_size, spec.transform_seed, x.device) if spec.random_signs else x
    amax_bits = x
    if spec.tensor_scale:
        amax_bits = torch.zeros(1, dtype=torch.int32, device=x.device)
        plan.geometry.launch(_tensor_amax, x, signs, amax_bits, **plan.amax_constants)
    plan.geometry.launch(_fake_quantize, x, out, signs, amax_bits,
                         key - 2**32 if key >= 2**31 else key, **plan.constants)
    return out
