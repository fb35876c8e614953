"""Host side of the fused quantizer: checks, tile geometry, tuning, launches.

``fake_quantize`` here returns the same bits as ``fp4sweep.quant.reference.fake_quantize`` (the
reference) for every spec that ``supports`` accepts; the reference's own helpers supply the
Hadamard signs and the stochastic-rounding key, so those agree by construction.

A training step quantizes hundreds of tensors of a few shapes, so the host's share of a call
must be small. Everything that the seed and the tensor's values do not change (checks, tile
geometry, the tuned tile shape, the kernel's compile-time arguments and the compiled kernel
itself) is worked out on a shape's first call and kept in a ``_Plan``; later calls allocate the
output, look the plan up and launch, without a host sync. The random Hadamard signs are an
argument of each call (kept on the device per seed), so that signs redrawn every step
(``Recipe.sign_policy``) share one plan.
"""

from __future__ import annotations

import contextlib
import math
import os
import dataclasses
import functools
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import triton
import triton.testing

from fp4sweep.quant.formats import FloatFormat
from fp4sweep.quant.kernels import quantizer
from fp4sweep.quant.reference import check_input, check_tensor_amax
from fp4sweep.quant.rng import STREAM_ROUNDING, STREAM_SCALES, slot_bits, stream_key
from fp4sweep.quant.scaling import tensor_target
from fp4sweep.quant.spec import PRESCALES, SCALE_RULES, SCALE_SELECTS, QuantSpec
from fp4sweep.quant.transforms import hadamard_signs

WIDE_NUMEL = 2**31  # from here on, offsets (and counters) need 64 bits
MAX_AXIS_COLS = 128  # positions per tile along a contiguous quantization axis (PLAIN layout)
MAX_THREAD_RUN = 64  # float32 values of one line a thread may hold (vector layouts)
SHORTEST_LINE_VECTORS = 32  # float32 values a thread keeps when line vectors are shortened
VECTOR_BYTES = 16  # the widest load of one thread
TUNED_NUMEL = 2**22  # tensors from this size on get their tile shape tuned
PLAIN, AXIS_VECTORS, LINE_VECTORS = range(3)  # quantizer.py's tile layouts

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
ALIGNMENT = 16  # bytes; compiled kernels assume it of a pointer that has it (Triton specialises)

# (elements per tile, warps), tried in this order. The interpreter runs one: tuning there
# would only cost time.
TILES = ((4096, 4), (8192, 8))
if INTERPRETED:
    TILES = TILES[:1]
# Lanes that share each line's runs in the axis-vector layout, tried in this order (with every
# tile shape): with 2, a warp's access covers whole 32-byte sectors, for a shuffle in one
# butterfly stage. Which wins depends on the kernel, so tuning tries both
# (scripts/bench_quant.py shows the difference).
RUN_LANES = (1, 2)


def supports(spec: QuantSpec) -> bool:
    """Whether the kernels implement ``spec``: every spec whose block is a power of two, and
    1-D blocks of any size without a transform (a tile dimension must be a power of two)."""
    power_of_two = spec.block & (spec.block - 1) == 0
    return power_of_two or (not spec.block_2d and not spec.hadamard_size)


@dataclass(frozen=True)
class _Geometry:
    """The contiguous tensor as (outer, axis, inner) and its tiles (module ``quantizer``)."""

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
    def of(cls, x: torch.Tensor, axis: int, spec: QuantSpec) -> _Geometry:
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
        # Along a contiguous axis the plain layout reads best, unless butterflies want whole
        # Hadamard runs in one thread; along a strided axis the line vectors do
        # (scripts/bench_quant.py).
        if inner == 1 and spec.hadamard_size and vec <= cols <= MAX_THREAD_RUN:
            return cls(n_outer, n_lines, *strides, length // cols, cols, False, AXIS_VECTORS, vec)
        if inner > 1 and cols <= MAX_THREAD_RUN:
            # A transform wants two lines a thread at least, or its strided runs read far below
            # copy speed; without a transform one line of 64 reads best (scripts/bench_quant.py).
            fewest = 2 if spec.hadamard_size else 1
            vec = max(fewest, min(vec, MAX_THREAD_RUN // cols))
            # Shorter vectors, down to SHORTEST_LINE_VECTORS values a thread, where the first
            # tile shape's lines would leave its last tile of lines part empty (768 lines in
            # tiles of 512: a quarter of the work masked; scripts/bench_quant.py).
            while (vec > 2 and vec * cols > SHORTEST_LINE_VECTORS
                   and inner % (32 * TILES[0][1] * vec)):
                vec //= 2
            return cls(n_outer, n_lines, *strides, length // cols, cols, False, LINE_VECTORS, vec)
        if inner == 1:
            # Longer contiguous runs per tile row, as long as they divide the axis.
            while cols * 2 <= MAX_AXIS_COLS and length % (cols * 2) == 0:
                cols *= 2
        return cls(n_outer, n_lines, *strides, length // cols, cols, False, PLAIN, vec)

    def choices(self) -> list[tuple[int, int, int]]:
        """The (elements per tile, warps, run lanes) a launcher may take, the untuned one
        first; run lanes other than 1 only in the axis-vector layout, one vector a lane at
        least."""
        lanes = [1]
        if self.layout == AXIS_VECTORS:
            lanes = [n for n in RUN_LANES if n <= self.cols // self.vec]
        return [(tile, warps, n) for n in lanes for tile, warps in TILES]

    def rows(self, tile: int, warps: int, block: int, block_2d: bool) -> int:
        """Lines per tile: about ``tile`` elements, and never so few that threads would share
        elements.

        The vector layouts take enough lines that every lane of every warp holds lines of its
        own (with fewer, Triton 3.6 spread the runs over lanes and warps or copied them, and
        blocks came out wrong on the GPU); the plain layout takes at most what the tensor has,
        but one vector for each thread. All take whole 2-D blocks and whole line vectors. The
        interpreter has no threads to keep apart: there, tiles shrink to small tensors and small
        tests stay fast.
        """
        rows = tile // self.cols
        fitted = min(rows, triton.next_power_of_2(self.n_lines))
        whole = max(block if block_2d else 1, self.vec if self.layout == LINE_VECTORS else 1)
        if INTERPRETED:
            return max(fitted, whole)
        every_thread = 32 * warps
        if self.layout == AXIS_VECTORS:
            return max(rows, every_thread, whole)
        if self.layout == LINE_VECTORS:
            return max(rows, every_thread * self.vec, whole)
        return max(fitted, every_thread * self.vec // self.cols, whole)

    def holds_runs_of(self, run: int, block: int) -> bool:
        """Whether the last axis of every tile's load shape holds consecutive row-major
        indices in whole runs of ``run`` that start at multiples of ``run`` (a power of two).

        Along a contiguous axis that axis is the tile's positions (plain) or a thread's vector
        of them; along a strided one, the line vectors' contiguous lines (the plain layout runs
        across the axis there). Rows, tiles and padded blocks begin at multiples of the stride,
        the tile width and the block.
        """
        if self.layout == LINE_VECTORS or (self.axis_contiguous and self.layout == AXIS_VECTORS):
            width = self.vec
        elif self.axis_contiguous:
            width = self.cols
        else:
            return False
        starts = block if self.padded else width
        return width % run == 0 and starts % run == 0 and self.stride % run == 0

    def grid(self, rows: int) -> tuple[int, int, int]:
        return (self.n_axis_tiles * self.n_outer * triton.cdiv(self.n_lines, rows), 1, 1)

    def arguments(self, numel: int) -> dict:
        """The kernels' arguments that describe the geometry."""
        return dict(n_lines=self.n_lines, n_axis_tiles=self.n_axis_tiles, stride=self.stride,
                    AXIS_CONTIGUOUS=self.axis_contiguous, LAYOUT=self.layout, VEC=self.vec,
                    COLS=self.cols, PADDED=self.padded, WIDE=numel >= WIDE_NUMEL)


class Launcher:
    """One kernel with every argument but the leading per-call ones (tensors, key) fixed.

    Compiled, it launches the kernel that Triton compiled for these arguments directly (the
    per-call arguments must keep the dtypes and pointer alignment of the ones it was built
    with), without re-binding and re-specialising three dozen arguments on every call; under
    the interpreter it calls the kernel as usual.
    """

    def __init__(self, kernel, per_call: tuple, arguments: dict, grid: tuple[int, int, int],
                 warps: int):
        names = kernel.arg_names[len(per_call):]
        missing, unknown = set(names) - set(arguments), set(arguments) - set(names)
        if missing or unknown:
            raise TypeError(f"arguments of {kernel.__name__}: missing {sorted(missing)}, "
                            f"unknown {sorted(unknown)}")
        self.kernel, self.grid = kernel, grid
        self.fixed = tuple(arguments[name] for name in names)
        # No multiply-add contraction: the reference rounds every product (``device.py``).
        self.options = dict(num_warps=warps, enable_fp_fusion=False)
        self.compiled: Callable | None = None
        if not INTERPRETED:
            compiled = kernel.warmup(*per_call, *self.fixed, grid=grid, **self.options)
            self.compiled = compiled[grid]

    def __call__(self, *per_call) -> None:
        if self.compiled is not None:
            self.compiled(*per_call, *self.fixed)
        else:
            self.kernel[self.grid](*per_call, *self.fixed, **self.options)


def _fastest(kernel, per_call: tuple, arguments: dict, geometry: _Geometry, numel: int,
             tuned: bool = True) -> Launcher:
    """The launcher of the fastest of ``geometry.choices()``, timed on this call's tensors;
    the first for tensors too small for the choice to matter, or unless ``tuned``."""
    choices = geometry.choices()
    candidates = []
    for tile, warps, lanes in choices if tuned and numel >= TUNED_NUMEL else choices[:1]:
        rows = geometry.rows(tile, warps, arguments["BLOCK"], arguments["BLOCK_2D"])
        candidates.append(Launcher(kernel, per_call, dict(arguments, ROWS=rows, RUN_LANES=lanes),
                                    geometry.grid(rows), warps))
    if len(candidates) == 1:
        return candidates[0]
    times = [triton.testing.do_bench(lambda launcher=launcher: launcher(*per_call), warmup=5,
                                     rep=25, return_mode="median") for launcher in candidates]
    return candidates[times.index(min(times))]


def _tensor_target(spec: QuantSpec) -> float:
    return tensor_target(spec.elem_format, spec.scale_format, torch.empty(0),
                         spec.tensor_target_scale).item()


def _transform_constants(spec: QuantSpec) -> dict:
    k = spec.hadamard_size
    normaliser = torch.tensor(1.0 / math.sqrt(k), dtype=torch.float32).item() if k else 1.0
    return dict(BLOCK=spec.block, BLOCK_2D=spec.block_2d, HAD=k,
                LOG_HAD=k.bit_length() - 1 if k else 0, NORMALISER=normaliser,
                RANDOM_SIGNS=spec.random_signs)


def _format_constants(prefix: str, fmt: FloatFormat) -> dict:
    return {f"{prefix}_EMIN": fmt.emin, f"{prefix}_MAN": fmt.man_bits, f"{prefix}_MAX": fmt.max}


def _quantizer_constants(spec: QuantSpec, detailed: bool) -> dict:
    elem, scale = spec.elem_format, spec.scale_format
    return dict(
        _transform_constants(spec), RULE=SCALE_RULES.index(spec.scale_rule),
        TENSOR_SCALE=spec.tensor_scale, TARGET=_tensor_target(spec),
        PRESCALE=PRESCALES[spec.prescale], SELECT=SCALE_SELECTS.index(spec.scale_select),
        LOG_BLOCK=spec.block.bit_length() - 1, SCALE_SR=spec.scale_rounding == "sr",
        EDEN=spec.scale_rounding == "ms_eden",
        S_MIN_POSITIVE=scale.min_positive, S_MIN_NORMAL=scale.min_normal,
        S_BIAS=scale.bias, E_EMAX=elem.emax, SR=spec.rounding == "sr", SR_BITS=spec.sr_bits,
        SR_SLOT=slot_bits(spec.sr_bits),
        # The interpreter truncates a float32 -> bfloat16 cast; compiled code rounds.
        NATIVE_BF16=not INTERPRETED, DETAILED=detailed,
        **_format_constants("S", scale), **_format_constants("E", elem),
    )


@dataclass(frozen=True)
class KernelArguments:
    """What the kernels for tensors like one ``x`` are compiled with, but ROWS (lines per tile,
    ``geometry.rows`` of the tile shape) and RUN_LANES (``geometry.choices``): the geometry,
    and the arguments of the amax kernel (None without tensor scaling) and of the quantizer."""

    geometry: _Geometry
    tensor_amax: dict | None
    quantize: dict

    @classmethod
    def of(cls, x: torch.Tensor, spec: QuantSpec, axis: int, detailed: bool) -> KernelArguments:
        """For contiguous ``x``, ``axis`` non-negative; ``detailed``: the quantizer that also
        writes ``quantizer.DETAIL_FIELDS``."""
        geometry = _Geometry.of(x, axis, spec)
        arguments = geometry.arguments(x.numel())
        tensor_amax = dict(arguments, **_transform_constants(spec)) if spec.tensor_scale else None
        quantize = dict(arguments, n_elements=x.numel(), **_quantizer_constants(spec, detailed))
        # Draw each random word once for the elements that share it, or for as many of them as
        # a tile holds together (``rng``: four decisions of up to 8 bits a word, two of up to 16).
        sharing = 32 // quantize["SR_SLOT"] if spec.rounding == "sr" else 1
        while sharing > 1 and not geometry.holds_runs_of(sharing, spec.block):
            sharing //= 2
        quantize["SR_GROUP"] = sharing
        return cls(geometry, tensor_amax, quantize)


@dataclass(frozen=True)
class _Plan:
    """Everything about a call that the seed and the tensor's values do not change."""

    tensor_amax: Launcher | None  # with tensor scaling
    quantize: Launcher

    @classmethod
    def build(cls, x: torch.Tensor, out: torch.Tensor, details: torch.Tensor | None,
              spec: QuantSpec, axis: int) -> _Plan:
        """The plan for tensors like ``x`` (contiguous), compiled and tuned on ``x`` and
        ``out``, whose contents the tuning overwrites; with ``details`` (a float32 buffer for
        ``quantizer.DETAIL_FIELDS``), the kernel that also writes those, untuned."""
        if not supports(spec):
            raise ValueError(
                f"the kernels need a power-of-two block for block_2d or a transform, got "
                f"block={spec.block} (block_2d={spec.block_2d}, transform={spec.transform!r})"
            )
        arguments = KernelArguments.of(x, spec, axis, details is not None)
        geometry = arguments.geometry
        signs_or_x = _signs(spec, x)
        tensor_amax, amax_bits = None, x
        if arguments.tensor_amax is not None:
            amax_bits = torch.zeros(1, dtype=torch.int32, device=x.device)
            tensor_amax = _fastest(quantizer.tensor_amax_kernel, (x, signs_or_x, amax_bits),
                                   arguments.tensor_amax, geometry, x.numel())
        quantize = _fastest(quantizer.fake_quantize_kernel,
                            (x, out, signs_or_x, amax_bits, x if details is None else details, 0,
                             0),
                            arguments.quantize, geometry, x.numel(), tuned=details is None)
        return cls(tensor_amax, quantize)


_plans: dict[tuple, _Plan] = {}


@functools.lru_cache(maxsize=256)
def _without_signs_seed(spec: QuantSpec) -> QuantSpec:
    """``spec`` as a plan's key: the signs' seed is a per-call argument, not part of the plan."""
    return dataclasses.replace(spec, transform_seed=0)


@functools.lru_cache(maxsize=64)
def _device_signs(size: int, seed: int, device: torch.device) -> torch.Tensor:
    return hadamard_signs(size, seed).to(device)


def _signs(spec: QuantSpec, x: torch.Tensor) -> torch.Tensor:
    """The kernels' signs argument: the random Hadamard signs on ``x``'s device (``x`` itself,
    unread, without them)."""
    return _device_signs(spec.hadamard_size, spec.transform_seed, x.device) if spec.random_signs else x


def clear_plans() -> None:
    """Forget every plan (after changing this module's tuning constants)."""
    _plans.clear()


_observers: list[Callable[[torch.Tensor, QuantSpec], None]] = []


@contextlib.contextmanager
def observe_calls(observer: Callable[[torch.Tensor, QuantSpec], None]) -> Iterator[None]:
    """Call ``observer(x, spec)`` on every quantization the kernels run in the enclosed code,
    before its launch (``scripts/bench_step.py --traffic`` counts the bytes moved with it)."""
    _observers.append(observer)
    try:
        yield
    finally:
        _observers.remove(observer)


def _run(x: torch.Tensor, spec: QuantSpec, axis: int, seed: int, detailed: bool,
         tensor_amax: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The output like ``x`` and, if ``detailed``, the float32 details buffer (see
    ``quantizer.fake_quantize_kernel``); ``x`` made contiguous first. A given ``tensor_amax``
    is the quantizer's input in place of the amax pass's."""
    for observer in _observers:
        observer(x, spec)
    key = stream_key(seed, STREAM_ROUNDING)  # also checks the seed
    scale_key = stream_key(seed, STREAM_SCALES)
    check_tensor_amax(tensor_amax, spec)
    x = x.detach().contiguous()
    out = torch.empty_like(x)
    details = None
    if detailed:
        details = torch.empty(len(quantizer.DETAIL_FIELDS) * x.numel() + 1,
                              dtype=torch.float32, device=x.device)
    plan_key = (_without_signs_seed(spec), x.shape, axis, x.dtype, x.device,
                x.data_ptr() % ALIGNMENT == 0, detailed)
    plan = _plans.get(plan_key)
    if plan is None:
        normalised_axis = check_input(x, spec, axis)
        if x.numel() == 0:
            return out, details
        plan = _plans[plan_key] = _Plan.build(x, out, details, spec, normalised_axis)
    signs = _signs(spec, x)
    amax_bits = x
    if tensor_amax is not None:
        # A magnitude's float32 bits, as the amax pass leaves them.
        amax_bits = tensor_amax.to(x.device).reshape(1).view(torch.int32)
    elif plan.tensor_amax is not None:
        # Zeroed on the device, max-ed into by the amax kernel, read by the quantizer: no sync.
        amax_bits = torch.zeros(1, dtype=torch.int32, device=x.device)
        plan.tensor_amax(x, signs, amax_bits)
    # The kernel takes the keys as int32.
    plan.quantize(x, out, signs, amax_bits, x if details is None else details,
                  key - 2**32 if key >= 2**31 else key,
                  scale_key - 2**32 if scale_key >= 2**31 else scale_key)
    return out, details


def fake_quantize(x: torch.Tensor, spec: QuantSpec, axis: int = -1, seed: int = 0,
                  tensor_amax: torch.Tensor | None = None) -> torch.Tensor:
    """The reference's ``fake_quantize`` as fused kernels; same arguments, same bits."""
    return _run(x, spec, axis, seed, False, tensor_amax)[0]


def quantize_detailed(
    x: torch.Tensor, spec: QuantSpec, axis: int = -1, seed: int = 0,
    tensor_amax: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """The reference's ``quantize_detailed`` as fused kernels: the output, the per-element
    fields of ``QuantResult`` by name (float32 tensors shaped like ``x``, ``saturated`` bool)
    and the 0-d tensor scale; the same bits."""
    out, details = _run(x, spec, axis, seed, True, tensor_amax)
    if x.numel() == 0:
        fields = {name: torch.empty(x.shape, dtype=torch.float32, device=x.device)
                  for name in quantizer.DETAIL_FIELDS}
        fields["saturated"] = fields["saturated"].bool()
        return out, fields, torch.ones((), dtype=torch.float32, device=x.device)
    planes = details[:-1].view(len(quantizer.DETAIL_FIELDS), *x.shape)
    fields = dict(zip(quantizer.DETAIL_FIELDS, planes.unbind(0)))
    fields["saturated"] = fields["saturated"] != 0
    return out, fields, details[-1]
