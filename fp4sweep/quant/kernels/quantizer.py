"""The fused quantizer kernels: one pass over the tensor for ``fake_quantize``, one before it
for the tensor amax of tensor scaling.

A program owns a tile of ROWS lines by COLS positions along the quantization axis (the last
axis of the tile, whatever the memory layout). The contiguous input is seen as
(outer, axis, inner). With the quantization axis last in memory (AXIS_CONTIGUOUS) the lines
are its rows and element (line, position) lies at ``line * stride + position``; otherwise the
lines are the contiguous inner elements and it lies at
``outer * stride * length + position * stride + line``, with ``stride`` the inner size. Either
way the offset is also the element's row-major index, the stochastic-rounding counter, and
nothing is copied or transposed. Where the last axis of the load shape holds the counters that
share a random word side by side (``launch._Geometry.holds_runs_of``), a word is hashed once for
each run of them. COLS holds whole blocks and whole Hadamard runs; a block size
that is no power of two is padded to one (masked lanes, one block per tile row). The steps are
those of ``fp4sweep.quant.reference``, in its order; ``device.py`` holds the float32 operations
they share with the reference.
"""

from __future__ import annotations

import triton
import triton.language as tl

from fp4sweep.quant.kernels.device import (
    DOWN, FLT_MAX, NEAREST, STOCHASTIC, UP, copy_sign, grid_step, magnitude_bits,
    random_words, round_element, round_magnitude, to_bfloat16, uniform, walsh_hadamard,
)

# Scale rules, numbered in ``spec.SCALE_RULES`` order.
FLOOR, CEIL, NEAREST_RULE, NVFP4, NVFP4_TORCHAO = (tl.constexpr(i) for i in range(5))
# ``spec.SCALE_SELECTS``, by index.
SELECT_MAX, SELECT_MSE, SELECT_MAE = (tl.constexpr(i) for i in range(3))

# Tile load shapes (see ``_tile``). Triton spreads a tile's lanes over its contiguous dimension
# first; splitting off a vector dimension keeps whole runs of the axis in one thread's
# registers, where butterflies and block maxima need no shuffles. With RUN_LANES > 1 the axis
# vectors give a run's neighbouring vectors to neighbouring lanes instead, so that a warp's
# access covers whole 32-byte sectors, at the cost of shuffles.
PLAIN, AXIS_VECTORS, LINE_VECTORS = (tl.constexpr(i) for i in range(3))

# What ``fake_quantize_kernel`` writes besides its output when DETAILED, in this order: one
# float32 tensor each, in the input's layout, as ``quantize.QuantResult`` names them
# ("saturated" as 0 or 1); then the 0-d tensor scale.
DETAIL_FIELDS = ("transformed", "dequantized", "scaled", "elements", "scale", "block_scale",
                 "block_amax", "step", "saturated")


@triton.jit
def _tile(
    n_lines, n_axis_tiles, stride, AXIS_CONTIGUOUS: tl.constexpr, LAYOUT: tl.constexpr,
    VEC: tl.constexpr, RUN_LANES: tl.constexpr, ROWS: tl.constexpr, COLS: tl.constexpr,
    BLOCK: tl.constexpr, PADDED: tl.constexpr, WIDE: tl.constexpr, REVERSED: tl.constexpr,
):
    """Offsets (= row-major indices) and mask of this program's tile, in its load shape
    (``LAYOUT``). Consecutive programs take consecutive tiles along the axis, then the next
    lines; REVERSED, in the opposite order."""
    pid = tl.program_id(0)
    if REVERSED:
        pid = tl.num_programs(0) - 1 - pid
    pid_axis = pid % n_axis_tiles
    pid_lines = pid // n_axis_tiles
    n_line_tiles = tl.cdiv(n_lines, ROWS)
    outer = pid_lines // n_line_tiles
    first_line = (pid_lines % n_line_tiles) * ROWS
    if PADDED:
        step: tl.constexpr = BLOCK  # one padded block per tile row
    else:
        step: tl.constexpr = COLS
    first_position = pid_axis * step
    if WIDE:
        outer = outer.to(tl.int64)
        first_line = first_line.to(tl.int64)
        first_position = first_position.to(tl.int64)
    # The vector layouts are 2-D, [A * B, VEC] with row k = (a, b) = (k // B, k % B), so that
    # the vector is the one contiguous dimension and lanes take consecutive b: no ties for
    # Triton's layout choice to break, and offsets it can see are aligned vectors.
    if LAYOUT == AXIS_VECTORS:
        # A = COLS // VEC, B = ROWS: each thread holds whole runs of the axis, or with
        # RUN_LANES > 1 every RUN_LANES-th vector of them, its neighbour lanes the vectors
        # between (k = (a // RUN_LANES, b, a % RUN_LANES)).
        k = tl.arange(0, COLS // VEC * ROWS)[:, None]
        lines = first_line + (k // RUN_LANES) % ROWS
        vector = (k // (RUN_LANES * ROWS)) * RUN_LANES + k % RUN_LANES
        offsets = lines * stride + first_position + vector * VEC + tl.arange(0, VEC)[None, :]
        mask = tl.broadcast_to(lines < n_lines, [COLS // VEC * ROWS, VEC])
    elif LAYOUT == LINE_VECTORS:
        # A = COLS, B = ROWS // VEC: VEC contiguous lines at every position of the axis.
        k = tl.arange(0, COLS * (ROWS // VEC))[:, None]
        lines = first_line + (k % (ROWS // VEC)) * VEC + tl.arange(0, VEC)[None, :]
        positions = first_position + k // (ROWS // VEC)
        offsets = outer * stride * (n_axis_tiles * step) + positions * stride + lines
        mask = lines < n_lines
    else:
        # [ROWS, COLS] as it comes.
        lines = first_line + tl.arange(0, ROWS)[:, None]
        cols = tl.arange(0, COLS)[None, :]
        positions = first_position + cols
        if AXIS_CONTIGUOUS:
            offsets = lines * stride + positions
        else:
            offsets = outer * stride * (n_axis_tiles * step) + positions * stride + lines
        mask = (lines < n_lines) & (cols < step)
    return offsets, mask


@triton.jit
def _logical(x, LAYOUT: tl.constexpr, VEC: tl.constexpr, RUN_LANES: tl.constexpr,
             ROWS: tl.constexpr, COLS: tl.constexpr):
    """A tile in its load shape as [ROWS, COLS] (lines by positions along the axis)."""
    if LAYOUT == AXIS_VECTORS:
        x = tl.reshape(x, [COLS // VEC // RUN_LANES, ROWS, RUN_LANES, VEC])
        x = tl.reshape(tl.permute(x, [1, 0, 2, 3]), [ROWS, COLS])
    elif LAYOUT == LINE_VECTORS:
        x = tl.reshape(tl.permute(tl.reshape(x, [COLS, ROWS // VEC, VEC]), [1, 2, 0]),
                       [ROWS, COLS])
    return x


@triton.jit
def _physical(y, LAYOUT: tl.constexpr, VEC: tl.constexpr, RUN_LANES: tl.constexpr,
              ROWS: tl.constexpr, COLS: tl.constexpr):
    """The inverse of ``_logical``."""
    if LAYOUT == AXIS_VECTORS:
        y = tl.reshape(y, [ROWS, COLS // VEC // RUN_LANES, RUN_LANES, VEC])
        y = tl.reshape(tl.permute(y, [1, 0, 2, 3]), [COLS // VEC * ROWS, VEC])
    elif LAYOUT == LINE_VECTORS:
        y = tl.reshape(tl.permute(tl.reshape(y, [ROWS // VEC, VEC, COLS]), [2, 0, 1]),
                       [COLS * (ROWS // VEC), VEC])
    return y


@triton.jit
def _hadamard(t, signs_ptr, VEC: tl.constexpr, RUN_LANES: tl.constexpr, ROWS: tl.constexpr,
              COLS: tl.constexpr, HAD: tl.constexpr, LOG_HAD: tl.constexpr,
              NORMALISER: tl.constexpr, RANDOM_SIGNS: tl.constexpr, INVERSE: tl.constexpr):
    """``transforms.apply_transform`` (or ``invert_transform``) along the tile's last axis."""
    if RANDOM_SIGNS:
        signs = tl.load(signs_ptr + tl.arange(0, HAD))
    runs: tl.constexpr = [ROWS, COLS // HAD, HAD]
    if RANDOM_SIGNS and not INVERSE:
        t = tl.reshape(tl.reshape(t, runs) * signs[None, None, :], [ROWS, COLS])
    # RUN_LANES > 1 only in the axis-vector layout, where positions VEC to VEC * RUN_LANES
    # apart lie in other lanes.
    t = walsh_hadamard(t, ROWS, COLS, LOG_HAD, VEC, VEC * RUN_LANES) * NORMALISER
    if RANDOM_SIGNS and INVERSE:
        t = tl.reshape(tl.reshape(t, runs) * signs[None, None, :], [ROWS, COLS])
    return t


@triton.jit
def _load_transformed(
    x_ptr, signs_ptr, n_lines, n_axis_tiles, stride, AXIS_CONTIGUOUS: tl.constexpr,
    LAYOUT: tl.constexpr, VEC: tl.constexpr, RUN_LANES: tl.constexpr, ROWS: tl.constexpr,
    COLS: tl.constexpr, BLOCK: tl.constexpr, PADDED: tl.constexpr, WIDE: tl.constexpr,
    HAD: tl.constexpr, LOG_HAD: tl.constexpr, NORMALISER: tl.constexpr,
    RANDOM_SIGNS: tl.constexpr, REVERSED: tl.constexpr,
):
    """``t``, this program's tile in float32 after the spec's transform, as [ROWS, COLS];
    and the tile's offsets and mask in its load shape."""
    offsets, mask = _tile(n_lines, n_axis_tiles, stride, AXIS_CONTIGUOUS, LAYOUT, VEC,
                          RUN_LANES, ROWS, COLS, BLOCK, PADDED, WIDE, REVERSED)
    t = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    t = _logical(t, LAYOUT, VEC, RUN_LANES, ROWS, COLS)
    if HAD > 0:
        t = _hadamard(t, signs_ptr, VEC, RUN_LANES, ROWS, COLS, HAD, LOG_HAD, NORMALISER,
                      RANDOM_SIGNS, False)
    return t, offsets, mask


@triton.jit
def tensor_amax_kernel(
    x_ptr, signs_ptr, amax_bits_ptr,
    n_lines, n_axis_tiles, stride, AXIS_CONTIGUOUS: tl.constexpr, LAYOUT: tl.constexpr,
    VEC: tl.constexpr, RUN_LANES: tl.constexpr, ROWS: tl.constexpr,
    COLS: tl.constexpr, BLOCK: tl.constexpr, BLOCK_2D: tl.constexpr, PADDED: tl.constexpr,
    WIDE: tl.constexpr, HAD: tl.constexpr, LOG_HAD: tl.constexpr, NORMALISER: tl.constexpr,
    RANDOM_SIGNS: tl.constexpr,
):
    """``scaling.finite_amax`` of the transformed tensor, as float32 bits max-ed atomically
    into ``amax_bits_ptr`` (an int32 zero): integer max of magnitudes is exact and order-free.

    The transform's normaliser c (below 1) scales the tile's maximum rather than each element:
    rounding is monotone, so the largest fl(|h| * c) is fl(max |h| * c), and h is finite exactly
    where fl(h * c) is."""
    h, offsets, mask = _load_transformed(
        x_ptr, signs_ptr, n_lines, n_axis_tiles, stride, AXIS_CONTIGUOUS, LAYOUT, VEC, RUN_LANES,
        ROWS, COLS, BLOCK, PADDED, WIDE, HAD, LOG_HAD, 1.0, RANDOM_SIGNS, False)
    # Shifted by the smallest normal's bits, finite magnitudes stay positive and infinities and
    # NaN wrap to negative int32: the maximum of the shifted bits skips them.
    shifted = magnitude_bits(h) + 0x00800000
    amax = tl.maximum(tl.max(tl.max(shifted, axis=1), axis=0) - 0x00800000, 0)
    amax = (amax.to(tl.float32, bitcast=True) * NORMALISER).to(tl.int32, bitcast=True)
    # Relaxed: the quantizer reads the maximum in a later kernel, whose launch orders it.
    tl.atomic_max(amax_bits_ptr, amax, sem="relaxed")


@triton.jit
def _block_amax(t, ROWS: tl.constexpr, COLS: tl.constexpr, BLOCK: tl.constexpr,
                PADDED: tl.constexpr, BLOCK_2D: tl.constexpr):
    """Each block's NaN-propagating max |t|: [ROWS, COLS // BLOCK] (1-D blocks) or
    [ROWS // BLOCK, COLS // BLOCK] (BLOCK x BLOCK tiles); [ROWS, 1] for a padded block."""
    bits = magnitude_bits(t)
    if PADDED:
        amax = tl.max(bits, axis=1, keep_dims=True)
    elif BLOCK_2D:
        tiles = tl.reshape(bits, [ROWS // BLOCK, BLOCK, COLS // BLOCK, BLOCK])
        amax = tl.max(tl.max(tiles, axis=3), axis=1)
    else:
        amax = tl.max(tl.reshape(bits, [ROWS, COLS // BLOCK, BLOCK]), axis=2)
    return amax.to(tl.float32, bitcast=True)


@triton.jit
def _per_element(block_values, ROWS: tl.constexpr, COLS: tl.constexpr, BLOCK: tl.constexpr,
                 PADDED: tl.constexpr, BLOCK_2D: tl.constexpr):
    """Per-block values (as ``_block_amax`` lays them out) broadcast to the [ROWS, COLS] tile."""
    if PADDED:
        full = tl.broadcast_to(block_values, [ROWS, COLS])
    elif BLOCK_2D:
        full = tl.broadcast_to(block_values[:, None, :, None],
                               [ROWS // BLOCK, BLOCK, COLS // BLOCK, BLOCK])
    else:
        full = tl.broadcast_to(block_values[:, :, None], [ROWS, COLS // BLOCK, BLOCK])
    return tl.reshape(full, [ROWS, COLS])


@triton.jit
def _scale_uniform(offsets, scale_key, LAYOUT: tl.constexpr, VEC: tl.constexpr,
                   RUN_LANES: tl.constexpr, ROWS: tl.constexpr, COLS: tl.constexpr,
                   BLOCK: tl.constexpr, BLOCK_2D: tl.constexpr, WIDE: tl.constexpr):
    """``rng.uniform`` (24 bits, one word each) of each block's least element index, laid out
    as ``_block_amax`` lays out blocks (unpadded blocks)."""
    index = _logical(offsets, LAYOUT, VEC, RUN_LANES, ROWS, COLS)
    if BLOCK_2D:
        tiles = tl.reshape(index, [ROWS // BLOCK, BLOCK, COLS // BLOCK, BLOCK])
        first = tl.min(tl.min(tiles, axis=3), axis=1)
    else:
        first = tl.min(tl.reshape(index, [ROWS, COLS // BLOCK, BLOCK]), axis=2)
    words = random_words(first, scale_key, WIDE)
    return ((words >> 8) & 0xFFFFFF).to(tl.float32) * (2.0**-24)


@triton.jit
def _round_scale(ideal, u, SCALE_SR: tl.constexpr, S_EMIN: tl.constexpr, S_MAN: tl.constexpr,
                 S_BIAS: tl.constexpr, S_MAX: tl.constexpr):
    """``scaling._round_scale``: nearest-even, or stochastic with ``u``."""
    if SCALE_SR:
        s = round_magnitude(ideal, u, STOCHASTIC, S_EMIN, S_MAN, S_BIAS, S_MAX)
    else:
        s = round_magnitude(ideal, ideal, NEAREST, S_EMIN, S_MAN, S_BIAS, S_MAX)
    return s


@triton.jit
def _nvfp4_candidate(t, amax, g, TARGET_MAX: tl.constexpr, min_positive, scale_u,
                     SCALE_SR: tl.constexpr, ROWS: tl.constexpr,
                     COLS: tl.constexpr, BLOCK: tl.constexpr, PADDED: tl.constexpr,
                     BLOCK_2D: tl.constexpr, S_EMIN: tl.constexpr, S_MAN: tl.constexpr,
                     S_BIAS: tl.constexpr, S_MAX: tl.constexpr):
    """``scaling._nvfp4_rule`` with the block amax aimed at TARGET_MAX: (s, d, v)."""
    one = tl.full([], 1.0, tl.float32)
    target = tl.full([], TARGET_MAX, tl.float32)
    ideal = tl.minimum(amax * (g * tl.math.div_rn(one, target)), FLT_MAX,
                       propagate_nan=tl.PropagateNan.ALL)
    s = _round_scale(ideal, scale_u, SCALE_SR, S_EMIN, S_MAN, S_BIAS, S_MAX)
    s = tl.maximum(s, min_positive, propagate_nan=tl.PropagateNan.ALL)
    d = s * tl.math.div_rn(one, g)
    encode = tl.minimum(tl.math.div_rn(one, d), FLT_MAX, propagate_nan=tl.PropagateNan.ALL)
    return s, d, t * _per_element(encode, ROWS, COLS, BLOCK, PADDED, BLOCK_2D)


@triton.jit
def _block_error(t, d, v, SELECT: tl.constexpr, ROWS: tl.constexpr, COLS: tl.constexpr,
                 BLOCK: tl.constexpr, LOG_BLOCK: tl.constexpr, E_EMIN: tl.constexpr, E_MAN: tl.constexpr,
                 E_EMAX: tl.constexpr, E_MAX: tl.constexpr):
    """``scaling._block_error`` of 1-D blocks: [ROWS, COLS // BLOCK], summed as its pairwise
    tree."""
    q = copy_sign(round_element(tl.abs(v), v, False, E_EMIN, E_MAN, E_EMAX, E_MAX), v)
    error = q * _per_element(d, ROWS, COLS, BLOCK, False, False) - t
    if SELECT == SELECT_MSE:
        error = error * error
    else:
        error = tl.abs(error)
    return _pairwise_sum(error, ROWS, COLS, LOG_BLOCK)


@triton.jit
def _pairwise_sum(values, ROWS: tl.constexpr, COLS: tl.constexpr, LEVELS: tl.constexpr):
    """``scaling.pairwise_sum`` over each run of 2**LEVELS positions: [ROWS, COLS >> LEVELS]
    (elements 2i and 2i + 1 first: one addition each, so the order is the reference's)."""
    for level in tl.static_range(LEVELS):
        values = tl.sum(tl.reshape(values, [ROWS, COLS >> (level + 1), 2]), axis=2)
    return values


@triton.jit
def _eden_correction(v, q, ROWS: tl.constexpr, COLS: tl.constexpr, HAD: tl.constexpr,
                     LOG_HAD: tl.constexpr):
    """MS-EDEN's correction per Hadamard run, ``sum(v * v) / sum(v * q)`` (1 where the
    denominator is 0): [ROWS, COLS // HAD]."""
    num = _pairwise_sum(v * v, ROWS, COLS, LOG_HAD)
    den = _pairwise_sum(v * q, ROWS, COLS, LOG_HAD)
    return tl.where(den == 0.0, 1.0, tl.math.div_rn(num, den))


@triton.jit
def _tensor_scale(amax_bits_ptr, RULE: tl.constexpr, TARGET: tl.constexpr):
    """``scaling.global_encode_scale`` (g), or torchao's per-tensor decode scale p for
    NVFP4_TORCHAO, from the finite tensor amax A; TARGET = fl(S_top * E)."""
    amax = tl.load(amax_bits_ptr).to(tl.float32, bitcast=True)
    if RULE == NVFP4_TORCHAO:
        p = tl.math.div_rn(amax, TARGET)
        scale = tl.where(p == 0.0, 1.0, p)
    else:
        g = tl.minimum(tl.math.div_rn(TARGET, amax), FLT_MAX)
        scale = tl.where((amax == 0.0) | (g == 0.0), 1.0, g)
    return scale


@triton.jit
def _store_tile(ptrs, values, mask, LAYOUT: tl.constexpr, VEC: tl.constexpr,
                RUN_LANES: tl.constexpr, ROWS: tl.constexpr, COLS: tl.constexpr):
    """A [ROWS, COLS] tile to ``ptrs``, pointers in the tile's load shape."""
    tl.store(ptrs, _physical(values, LAYOUT, VEC, RUN_LANES, ROWS, COLS), mask=mask)


# The key differs on every call: specialising on its value (divisible by 16, equal to 1) would
# compile new variants for some seeds, and a compiled kernel could not be reused for any seed.
# n_elements stays a tensor too (a 1 would become a constant), so that it widens to int64.
@triton.jit(do_not_specialize=["sr_key", "scale_key", "n_elements"])
def fake_quantize_kernel(
    x_ptr, out_ptr, signs_ptr, amax_bits_ptr, details_ptr, sr_key, scale_key,
    n_lines, n_axis_tiles, stride, AXIS_CONTIGUOUS: tl.constexpr, LAYOUT: tl.constexpr,
    VEC: tl.constexpr, RUN_LANES: tl.constexpr, ROWS: tl.constexpr,
    COLS: tl.constexpr, BLOCK: tl.constexpr, PADDED: tl.constexpr, BLOCK_2D: tl.constexpr,
    WIDE: tl.constexpr,
    HAD: tl.constexpr, LOG_HAD: tl.constexpr, NORMALISER: tl.constexpr,
    RANDOM_SIGNS: tl.constexpr,
    RULE: tl.constexpr, TENSOR_SCALE: tl.constexpr, TARGET: tl.constexpr,
    PRESCALE: tl.constexpr, SELECT: tl.constexpr, LOG_BLOCK: tl.constexpr,
    SCALE_SR: tl.constexpr, EDEN: tl.constexpr,
    S_EMIN: tl.constexpr, S_MAN: tl.constexpr, S_BIAS: tl.constexpr, S_MAX: tl.constexpr,
    S_MIN_POSITIVE: tl.constexpr, S_MIN_NORMAL: tl.constexpr,
    E_EMIN: tl.constexpr, E_MAN: tl.constexpr, E_MAX: tl.constexpr, E_EMAX: tl.constexpr,
    SR: tl.constexpr, SR_BITS: tl.constexpr, SR_SLOT: tl.constexpr, SR_GROUP: tl.constexpr,
    NATIVE_BF16: tl.constexpr,
    DETAILED: tl.constexpr, n_elements,
):
    """``quantize.fake_quantize`` of one tile (see the module docstring); with DETAILED also
    ``quantize.quantize_detailed``'s intermediate values (``DETAIL_FIELDS``) into
    ``details_ptr``, a float32 buffer of ``len(DETAIL_FIELDS) * n_elements + 1``."""
    # After the amax pass, the tiles it read last are the ones still in L2: start with them.
    t, offsets, mask = _load_transformed(
        x_ptr, signs_ptr, n_lines, n_axis_tiles, stride, AXIS_CONTIGUOUS, LAYOUT, VEC, RUN_LANES,
        ROWS, COLS, BLOCK, PADDED, WIDE, HAD, LOG_HAD, NORMALISER, RANDOM_SIGNS, TENSOR_SCALE)
    amax = _block_amax(t, ROWS, COLS, BLOCK, PADDED, BLOCK_2D)

    # Scale rule (``scaling.py``): block scale s, decode scale d per block, scaled elements v.
    one = tl.full([], 1.0, tl.float32)
    # Constants below float32's normal range would be typed float64: make them float32.
    min_positive = tl.full([], S_MIN_POSITIVE, tl.float32)
    if TENSOR_SCALE:
        g = _tensor_scale(amax_bits_ptr, RULE, TARGET)
    else:
        g = one
    if SCALE_SR or EDEN:
        scale_u = _scale_uniform(offsets, scale_key, LAYOUT, VEC, RUN_LANES, ROWS, COLS, BLOCK,
                                 BLOCK_2D, WIDE)
    else:
        scale_u = amax
    if RULE == NVFP4:
        s, d, v = _nvfp4_candidate(t, amax, g, E_MAX, min_positive, scale_u, SCALE_SR, ROWS,
                                   COLS, BLOCK, PADDED, BLOCK_2D, S_EMIN, S_MAN, S_BIAS, S_MAX)
        if SELECT != SELECT_MAX:
            # ``scaling``'s 4 over 6: the amax-to-4 candidate where it quantizes the block closer.
            s4, d4, v4 = _nvfp4_candidate(t, amax, g, 4.0, min_positive, scale_u, False, ROWS,
                                          COLS, BLOCK, PADDED, BLOCK_2D, S_EMIN, S_MAN, S_BIAS,
                                          S_MAX)
            keep_four = (_block_error(t, d4, v4, SELECT, ROWS, COLS, BLOCK, LOG_BLOCK, E_EMIN, E_MAN, E_EMAX,
                                      E_MAX)
                         < _block_error(t, d, v, SELECT, ROWS, COLS, BLOCK, LOG_BLOCK, E_EMIN, E_MAN, E_EMAX,
                                        E_MAX))
            s = tl.where(keep_four, s4, s)
            d = tl.where(keep_four, d4, d)
            v = tl.where(_per_element(keep_four, ROWS, COLS, BLOCK, PADDED, BLOCK_2D), v4, v)
    elif RULE == NVFP4_TORCHAO:
        # g holds torchao's decode scale p here.
        ideal = tl.math.div_rn(tl.math.div_rn(amax, E_MAX), g)
        ideal = tl.maximum(ideal, S_MIN_NORMAL, propagate_nan=tl.PropagateNan.ALL)
        ideal = tl.minimum(ideal, S_MAX, propagate_nan=tl.PropagateNan.ALL)
        s = _round_scale(ideal, scale_u, SCALE_SR, S_EMIN, S_MAN, S_BIAS, S_MAX)
        d = g * s
        v = tl.math.div_rn(t, _per_element(d, ROWS, COLS, BLOCK, PADDED, BLOCK_2D))
    else:
        a_g = amax * g
        if RULE == FLOOR:
            s = round_magnitude(a_g * (2.0**-E_EMAX), a_g, DOWN, S_EMIN, S_MAN, S_BIAS, S_MAX)
        elif RULE == CEIL:
            s = round_magnitude(tl.math.div_rn(a_g, E_MAX), a_g, UP, S_EMIN, S_MAN, S_BIAS, S_MAX)
        else:
            s = _round_scale(tl.math.div_rn(a_g, E_MAX), scale_u, SCALE_SR, S_EMIN, S_MAN, S_BIAS,
                             S_MAX)
        s = tl.maximum(s, min_positive, propagate_nan=tl.PropagateNan.ALL)
        d = tl.math.div_rn(s, g)
        if S_MAN == 0:
            # s is a power of two whose reciprocal is exact: fl(y * (1/s)) == fl(y / s).
            v = (t * g) * _per_element(tl.math.div_rn(one, s), ROWS, COLS, BLOCK, PADDED,
                                       BLOCK_2D)
        else:
            v = tl.math.div_rn(t * g, _per_element(s, ROWS, COLS, BLOCK, PADDED, BLOCK_2D))

    if PRESCALE != 1.0:
        # ``scaling``'s pre-scale c: v' = fl(v * c), d' = fl(d / c).
        c = tl.full([], PRESCALE, tl.float32)
        v = v * c
        d = tl.math.div_rn(d, c)

    # Element rounding (``rounding.round_signed``) and dequantization.
    magnitude = tl.abs(v)
    if SR:
        # In the load shape, where the counters that share a random word lie side by side.
        u = _logical(uniform(offsets, sr_key, SR_BITS, SR_SLOT, SR_GROUP, WIDE), LAYOUT, VEC,
                     RUN_LANES, ROWS, COLS)
    else:
        u = magnitude
    q = round_element(magnitude, u, SR, E_EMIN, E_MAN, E_EMAX, E_MAX)
    elements = copy_sign(q, v)
    if EDEN:
        # ``scaling.ms_eden``: each block scale corrected over its Hadamard run, then rounded
        # stochastically.
        correction = _eden_correction(v, elements, ROWS, COLS, HAD, LOG_HAD)
        per_block = tl.reshape(tl.broadcast_to(correction[:, :, None],
                                               [ROWS, COLS // HAD, HAD // BLOCK]),
                               [ROWS, COLS // BLOCK])
        s = round_magnitude(s * per_block, scale_u, STOCHASTIC, S_EMIN, S_MAN, S_BIAS, S_MAX)
        s = tl.maximum(s, min_positive, propagate_nan=tl.PropagateNan.ALL)
        d = s * tl.math.div_rn(one, g)
    decode = _per_element(d, ROWS, COLS, BLOCK, PADDED, BLOCK_2D)
    y = elements * decode

    if DETAILED:
        # One plane of n_elements per field, in DETAIL_FIELDS order.
        ptrs = details_ptr + offsets.to(tl.int64)
        plane = n_elements.to(tl.int64)
        block_scale = _per_element(s, ROWS, COLS, BLOCK, PADDED, BLOCK_2D)
        block_amax = _per_element(amax, ROWS, COLS, BLOCK, PADDED, BLOCK_2D)
        step = grid_step(magnitude, E_EMIN, E_EMAX, E_MAN) * decode
        saturated = (magnitude > E_MAX).to(tl.float32)
        _store_tile(ptrs, t, mask, LAYOUT, VEC, RUN_LANES, ROWS, COLS)
        _store_tile(ptrs + plane, y, mask, LAYOUT, VEC, RUN_LANES, ROWS, COLS)
        _store_tile(ptrs + 2 * plane, v, mask, LAYOUT, VEC, RUN_LANES, ROWS, COLS)
        _store_tile(ptrs + 3 * plane, elements, mask, LAYOUT, VEC, RUN_LANES, ROWS, COLS)
        _store_tile(ptrs + 4 * plane, decode, mask, LAYOUT, VEC, RUN_LANES, ROWS, COLS)
        _store_tile(ptrs + 5 * plane, block_scale, mask, LAYOUT, VEC, RUN_LANES, ROWS, COLS)
        _store_tile(ptrs + 6 * plane, block_amax, mask, LAYOUT, VEC, RUN_LANES, ROWS, COLS)
        _store_tile(ptrs + 7 * plane, step, mask, LAYOUT, VEC, RUN_LANES, ROWS, COLS)
        _store_tile(ptrs + 8 * plane, saturated, mask, LAYOUT, VEC, RUN_LANES, ROWS, COLS)
        if tl.program_id(0) == 0:
            if RULE == NVFP4_TORCHAO:
                tensor_scale = tl.math.div_rn(one, g)  # g holds torchao's decode scale p
            else:
                tensor_scale = g
            tl.store(details_ptr + 9 * plane, tensor_scale)

    if HAD > 0:
        y = _hadamard(y, signs_ptr, VEC, RUN_LANES, ROWS, COLS, HAD, LOG_HAD, NORMALISER,
                      RANDOM_SIGNS, True)
    if out_ptr.dtype.element_ty == tl.bfloat16 and not NATIVE_BF16:
        y = to_bfloat16(y)
    y = _physical(y, LAYOUT, VEC, RUN_LANES, ROWS, COLS)
    tl.store(out_ptr + offsets, y.to(out_ptr.dtype.element_ty), mask=mask)
