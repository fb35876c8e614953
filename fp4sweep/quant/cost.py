"""Modelled overhead of a recipe on FP4 hardware, and the paper's complexity points.

The unit is time on one machine (``Hardware``, rates as data in ``conf/hardware/``) for the linear
layers of one training step (``GemmShape`` list: a target in ``conf/target/`` or a task's own
shapes). A recipe's overhead is its extra time over plain MXFP4 on every layer (E2M1, E8M0 scale
per 32, OCP floor rule, nearest rounding, STE), as a fraction of that MXFP4 step's GEMM time; so
MXFP4 costs 0 and bf16 costs what its slower GEMMs add less the quantizers it does without.
``Overhead.vs_bf16`` is the recipe's linear-layer time over the bf16 step's: below 1, the recipe
is faster than training those layers in bf16. A layer that a layer policy keeps in high precision
(``GemmShape.high_precision``) runs its GEMMs at the BF16 rate with no quantizer.

Two models (``overhead(..., model=...)``):

``fused`` (the default) prices kernels as a production FP4 training stack runs them. Each kernel
takes the larger of its arithmetic time (instructions at ``vector_ops``) and its memory time
(bytes at the streaming bandwidth); a GEMM the larger of its tensor-core time and its operand
and output traffic. Which passes fuse:

- one quantizer kernel per tensor (x and w in the forward pass, dy in the backward): it reads
  the high-precision tensor once and writes each of its quantized operands (x for the forward
  GEMM along k and for the weight gradient along m; w along k and n; dy along n and m), as a
  cast-transpose kernel does. The Hadamard transform, block scales (and their format), the
  tensor scale's multiply, stochastic rounding's random bits and the cast all run inside it, on
  values in registers: they add instructions, never traffic, except the scale bytes written.
- tensor scaling's amax is a pass of its own: the whole tensor's amax must be known before any
  block is scaled (current scaling). It reads the tensor once more and, for a transformed
  operand, runs the transform too (the amax is the rotated tensor's). A delayed amax
  (``Recipe.amax_policy``, ``delayed.py``) changes what a real kernel does: "hold" needs the
  current amax only on its refresh steps, one in D, so the pass is priced at 1/D of its time
  (the mean step); "max" and "most_recent" record an amax every step, but the cast uses the
  history's and does not wait for it, so the quantizer takes it on the fly from the values it
  holds (one max per element, no pass). The margin's multiply is once per tensor: not priced.
- an estimator other than STE and the scale gradient adjust the gradient of each forward operand
  in one pass after the GEMM that produces it: read and write the gradient, read the operand's
  saved state, and (with a Hadamard transform) take the gradient into the rotated basis and back.
- GEMMs read their quantized operands (codes and scales) and write a bf16 output. Machines
  without FP4 tensor cores (H200) run them as this project does: quantize-dequantize into bf16,
  then the bf16 GEMM.

Within a kernel, each technique's term is the time it adds when added in ``TECHNIQUES`` order
(a Hadamard's instructions are free while the kernel waits on memory, and cost once it is bound
by issue); the terms add up to the whole. ``quantize`` is the plain quantize-and-cast kernel's
time relative to MXFP4's: negative where operands stay in bf16, positive for wider elements.

``unfused`` is the upper bound that ranks techniques by what they add: every technique's
arithmetic and traffic are added, nothing overlaps, GEMMs are priced by tensor-core time alone
and MXFP4's own quantize-and-cast costs nothing (it is what an FP4 GEMM needs anyway).

Instruction counts, per element unless said otherwise, shared by both models:

- quantize-and-cast: 5 (unpack, |x| into the block's max, multiply by the scale's reciprocal,
  cast, pack), plus 4 per block scale (amax to scale, its format, reciprocal, store).
- scale format: scales beyond MX's one per 32 elements cost 4 instructions each (fewer scales
  save them); a scale with mantissa bits (not a power of two) rounds amax / elem_max into its
  format: 2 more per scale. Scale bytes are written by the quantizer and read by the GEMM; blocks
  above 32, 2-D tiles and one-byte scales make this term negative (a saving).
- hadamard: a fast Walsh-Hadamard transform of size K is log2(K) add/sub stages; random signs
  one more multiply.
- stochastic_rounding: the add that applies the random bits, plus one 32-bit random word per
  element (up to 8 random bits four elements share a word, up to 16 two, as ``rng.py`` and FP4
  hardware's stochastic conversion draw them) at 15 instructions a word: Philox-4x32-10 makes
  four words in 10 rounds of two wide multiplies, two three-input XORs and two key additions.
  A pre-scale (``prescale`` other than "1") multiplies each scaled element (1) and divides each
  decode scale (1 per block). Stochastic rounding of the block scale (``scale_rounding="sr"``)
  draws a whole word (24 bits) per block scale and adds it: 16 per block; so does MS-EDEN
  ("ms_eden"), whose correction costs 4 per element more (v * v and v * q, each added into its
  run's sum), a division per Hadamard run and a multiply per scale. Its random Hadamard is the
  transform's line.
- scale_select "4 over 6": per element, the second candidate's scaling and cast (2), each
  candidate's dequantize (1) and error term (subtract, square or absolute value, add into the
  block's sum: 3), and the select of the kept candidate's codes (1) = 11; per block, the second
  scale (4) and the compare (1) = 5. All in registers: no traffic.
- hadamard with ``sign_policy="per_step"``: each GEMM's K signs are drawn afresh every step, one
  random word per 32 signs (15 instructions each) per call of the layer: a constant per GEMM
  call (at most 120 instructions, K = 256), not per element. Priced, and negligible beside the
  quantizers' 5 or more instructions an element once a GEMM's operands have a few thousand
  elements (Llama 3 8B with K = 256: 2e-8 of the step).
- tensor_scaling: a max per element in the amax pass, a multiply per block scale.
- estimator (backward, per forward operand): STE is free; clipped STE reads a 1-bit saturation
  mask written in the forward and selects (1); spline re-reads the operand and locates each
  element in its interval: position (3) + band test (2) + multiply (1) = 6; power: position (3)
  + |2u/d - 1| (2) + pow via log2/exp2 (2) + scale and clamp (2) + multiply (1) = 10.
- scale_grad "amax": the residual y - t*D (2), its product with the gradient (1), the block sum
  (1) and the scatter to the block's arg-max (1) = 5; it re-reads the operand.
- gemm_precision: an operand left unquantized (None) runs its GEMM at the BF16 rate, a 6- or
  8-bit element format at the FP8 rate (4-bit, INT4 included, at the FP4 rate). The scale rule
  (floor, ceil, nearest, ...) costs the same for every rule: not a line item.
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from collections.abc import Iterable

from fp4sweep.quant.gemm import GemmShape
from fp4sweep.quant.hardware import (DEFAULT_HARDWARE, Hardware, load_hardware, scale_bytes_per_element,
                                     scales_per_element)
from fp4sweep.quant.recipe import FORWARD_OPERANDS, GEMM_OPERANDS, Recipe
from fp4sweep.quant.spec import QuantSpec

PASSES = ("fwd", "bwd")
TECHNIQUES = (
    "gemm_precision",
    "quantize",
    "hadamard",
    "stochastic_rounding",
    "tensor_scaling",
    "scale_format",
    "scale_select",
    "estimator",
    "scale_grad",
)
MODELS = ("fused", "unfused")
DEFAULT_MODEL = "fused"

QUANTIZE_OPS = 5.0
SCALE_OPS = 4.0
MANTISSA_SCALE_OPS = 2.0
OPS_PER_RANDOM_WORD = 15.0
PRESCALE_OPS, PRESCALE_BLOCK_OPS = 1.0, 1.0
SCALE_SR_BLOCK_OPS = OPS_PER_RANDOM_WORD + 1.0
SCALE_SELECT_OPS, SCALE_SELECT_BLOCK_OPS = 11.0, 5.0
SIGNS_PER_RANDOM_WORD = 32
EDEN_OPS = 4.0  # MS-EDEN's two products and two additions per element
MX_SCALES_PER_ELEMENT = 1 / 32
MX_SCALE_BYTES_PER_ELEMENT = 1 / 32
_ESTIMATOR_OPS = {"ste": 0.0, "clipped_ste": 1.0, "spline": 6.0, "power": 10.0}
_REREADS_OPERAND = ("spline", "power")
_MASK_BYTES = 2 / 8  # one bit written in the forward, read in the backward
_SCALE_GRAD_OPS = 5.0
# Each tensor's operands, quantized together by one kernel in the pass where the tensor appears.
TENSOR_OPERANDS = {"x": ("fwd_x", "wgrad_x"), "w": ("fwd_w", "dgrad_w"), "dy": ("dgrad_dy", "wgrad_dy")}
TENSOR_PASS = {"x": "fwd", "w": "fwd", "dy": "bwd"}
# Each GEMM's output: y = x w^T (m x n), dx = dy w (m x k), dw = dy^T x (n x k).
GEMM_OUTPUT = {"fwd": "dy", "dgrad": "x", "wgrad": "w"}

B200 = load_hardware(DEFAULT_HARDWARE)

# Seconds per (technique, pass): [arithmetic, memory].
Seconds = dict[tuple[str, str], list[float]]


@dataclasses.dataclass(frozen=True)
class Term:
    """One technique's cost in one pass, as fractions of the MXFP4 step's GEMM time."""

    technique: str
    pass_: str
    arithmetic: float
    memory: float

    @property
    def total(self) -> float:
        return self.arithmetic + self.memory


@dataclasses.dataclass(frozen=True)
class Overhead:
    """A recipe's modelled cost: ``terms`` per technique and pass, complexity points, and what
    it needs to compare with bf16: the MXFP4 step's time (``reference``) and the bf16 recipe's
    overhead (``bf16``), both in the same unit as the terms, which lasts ``unit_seconds``."""

    terms: tuple[Term, ...]
    points: float
    reference: float
    bf16: float
    unit_seconds: float

    def _sum(self, pass_: str | None = None) -> float:
        return math.fsum(t.total for t in self.terms if pass_ is None or t.pass_ == pass_)

    @property
    def forward(self) -> float:
        return self._sum("fwd")

    @property
    def backward(self) -> float:
        return self._sum("bwd")

    @property
    def total(self) -> float:
        return self._sum()

    @property
    def arithmetic(self) -> float:
        return math.fsum(t.arithmetic for t in self.terms)

    @property
    def memory(self) -> float:
        return math.fsum(t.memory for t in self.terms)

    @property
    def seconds(self) -> float:
        """The recipe's modelled linear-layer time of one step, in seconds."""
        return (self.reference + self.total) * self.unit_seconds

    @property
    def vs_bf16(self) -> float:
        """The recipe's linear-layer step time over bf16's: below 1 is faster than bf16."""
        return (self.reference + self.total) / (self.reference + self.bf16)

    def as_dict(self) -> dict[str, float]:
        """Flat str -> float for a results row: model, model_fwd, model_bwd, points,
        model_arith, model_memory, vs_bf16 and ``<technique>_<pass>`` for every technique and
        pass."""
        row = {
            "model": self.total,
            "model_fwd": self.forward,
            "model_bwd": self.backward,
            "points": float(self.points),
            "model_arith": self.arithmetic,
            "model_memory": self.memory,
            "vs_bf16": self.vs_bf16,
        }
        for t in self.terms:
            row[f"{t.technique}_{t.pass_}"] = t.total
        return row


def overhead(
    recipe: Recipe, gemm_shapes: list[GemmShape], hardware: Hardware = B200, model: str = DEFAULT_MODEL
) -> Overhead:
    """The modelled extra cost of ``recipe`` over plain MXFP4 for one training step whose
    linear layers are ``gemm_shapes``, as fractions of the MXFP4 step's GEMM time."""
    if not gemm_shapes:
        raise ValueError("overhead needs at least one GemmShape: the step's GEMM cost is its unit")
    if model not in MODELS:
        raise ValueError(f"unknown overhead model {model!r}; valid: {list(MODELS)}")
    seconds = _fused_seconds if model == "fused" else _unfused_seconds
    every_layer_fp4 = [dataclasses.replace(s, high_precision=False) for s in gemm_shapes]
    mx = seconds(Recipe.preset("mxfp4"), every_layer_fp4, hardware)
    unit = math.fsum(sum(mx["gemm_precision", p]) for p in PASSES)
    own = seconds(recipe, gemm_shapes, hardware)
    terms = tuple(
        Term(
            technique,
            pass_,
            (own[technique, pass_][0] - mx[technique, pass_][0]) / unit,
            (own[technique, pass_][1] - mx[technique, pass_][1]) / unit,
        )
        for technique in TECHNIQUES
        for pass_ in PASSES
    )
    bf16 = (_total(seconds(Recipe(), gemm_shapes, hardware)) - _total(mx)) / unit
    return Overhead(terms, float(complexity_points(recipe)), _total(mx) / unit, bf16, unit)


def _total(seconds: Seconds) -> float:
    return math.fsum(a + m for a, m in seconds.values())


def _new_seconds() -> Seconds:
    return defaultdict(lambda: [0.0, 0.0])


def layer_recipe(recipe: Recipe, shape: GemmShape) -> Recipe:
    """The recipe a layer runs: bf16 (nothing quantized) where a layer policy keeps it so."""
    return Recipe() if shape.high_precision else recipe


def operand_elements(shape: GemmShape, operand: str) -> int:
    """Elements of one operand (or tensor: x, w, dy) over the layer's ``count`` calls: x is
    m*k, w n*k, dy m*n."""
    sizes = {"x": shape.m * shape.k, "w": shape.n * shape.k, "dy": shape.m * shape.n}
    return sizes[operand.split("_")[-1]] * shape.count


# -- instruction counts shared by both models ---------------------------------------------------


def transform_ops(spec: QuantSpec) -> float:
    if not spec.hadamard_size:
        return 0.0
    return math.log2(spec.hadamard_size) + (1.0 if spec.random_signs else 0.0)


def rounding_ops(spec: QuantSpec) -> float:
    """Stochastic rounding's instructions per element: an element's share of a random word and
    the add, the pre-scale's multiplies, a random word per stochastically rounded scale, and
    MS-EDEN's correction (its sums per element, a division per run, a multiply per scale)."""
    ops = 0.0
    if spec.rounding == "sr":
        ops += 1.0 + OPS_PER_RANDOM_WORD / (32 // spec.sr_bits)
    if spec.prescale != "1":
        ops += PRESCALE_OPS + PRESCALE_BLOCK_OPS * scales_per_element(spec)
    if spec.scale_rounding != "nearest":
        ops += SCALE_SR_BLOCK_OPS * scales_per_element(spec)
    if spec.scale_rounding == "ms_eden":
        ops += EDEN_OPS + 1.0 / spec.hadamard_size + scales_per_element(spec)
    return ops


def scale_select_ops(spec: QuantSpec) -> float:
    """Instructions per element of choosing each block's scale "4 over 6" (0 for "max")."""
    if spec.scale_select == "max":
        return 0.0
    return SCALE_SELECT_OPS + SCALE_SELECT_BLOCK_OPS * scales_per_element(spec)


def sign_ops(recipe: Recipe, gemm: str) -> float:
    """Instructions per call of a layer to redraw one GEMM's random Hadamard signs for the step
    (``sign_policy="per_step"``; 0 otherwise): a random word per 32 signs."""
    spec = getattr(recipe, GEMM_OPERANDS[gemm][0]) or getattr(recipe, GEMM_OPERANDS[gemm][1])
    if recipe.sign_policy != "per_step" or spec is None or not spec.random_signs:
        return 0.0
    return math.ceil(spec.hadamard_size / SIGNS_PER_RANDOM_WORD) * OPS_PER_RANDOM_WORD


def scale_format_ops(spec: QuantSpec) -> float:
    """Instructions per element for block scales beyond MX's one per 32 elements: the scales'
    own work, and a rounding into a format with mantissa bits."""
    scales = scales_per_element(spec)
    mantissa = MANTISSA_SCALE_OPS if spec.scale_format.man_bits else 0.0
    return (scales - MX_SCALES_PER_ELEMENT) * SCALE_OPS + scales * mantissa


def _gradient_parts(recipe: Recipe, spec: QuantSpec, n: int, hp: int) -> list[tuple[str, float, float]]:
    """(technique, ops, bytes) of the backward through one forward quantizer of ``n`` elements:
    the estimator's derivative, the scale gradient and the transforms they need. The gradient's
    read and write and the operand's re-read are counted once, by the first that needs them."""
    parts = []
    gradient_pass, operand_read = 2 * hp, hp
    if recipe.estimator != "ste":
        state = hp if recipe.estimator in _REREADS_OPERAND else _MASK_BYTES
        parts.append(("estimator", n * _ESTIMATOR_OPS[recipe.estimator], n * (gradient_pass + state)))
        gradient_pass = 0
        if recipe.estimator in _REREADS_OPERAND:
            operand_read = 0
    if recipe.scale_grad == "amax":
        parts.append(("scale_grad", n * _SCALE_GRAD_OPS, n * (gradient_pass + operand_read)))
    if parts and spec.hadamard_size:
        parts.append(("hadamard", 2 * n * transform_ops(spec), 0.0))
    return parts


# -- the fused roofline ---------------------------------------------------------------------------


def _kernel(
    out: Seconds, pass_: str, parts: Iterable[tuple[str, float, float]], hardware: Hardware
) -> None:
    """Add one kernel's time to ``out``: parts are (technique, compute seconds, bytes); the
    kernel takes the larger of its compute and memory time, and each part the time it adds."""
    compute = data = elapsed = 0.0
    for technique, seconds, nbytes in parts:
        compute += seconds
        data += nbytes
        memory = data / hardware.stream_bytes
        now = max(compute, memory)
        out[technique, pass_][0 if compute >= memory else 1] += now - elapsed
        elapsed = now


def _fused_seconds(recipe: Recipe, shapes: list[GemmShape], hardware: Hardware) -> Seconds:
    out = _new_seconds()
    hp = hardware.high_precision_bytes
    for shape in shapes:
        layer = layer_recipe(recipe, shape)
        for gemm, (a, b) in GEMM_OPERANDS.items():
            specs = [getattr(layer, a), getattr(layer, b)]
            rate = min(hardware.gemm_flops(s) for s in specs)
            sizes = [operand_elements(shape, a), operand_elements(shape, b)]
            output = operand_elements(shape, GEMM_OUTPUT[gemm]) * hp
            operands = [n * _mx_operand_bytes(s, hardware) for s, n in zip(specs, sizes)]
            scales = [n * _scale_bytes_over_mx(s, hardware) for s, n in zip(specs, sizes)]
            pass_ = "fwd" if gemm == "fwd" else "bwd"
            _kernel(out, pass_, [
                ("gemm_precision", shape.flops_per_pass / rate, sum(operands) + output),
                ("scale_format", 0.0, sum(scales)),
            ], hardware)
            signs = shape.count * sign_ops(layer, gemm)
            if signs:
                _kernel(out, pass_, [("hadamard", signs / hardware.vector_ops, 0.0)], hardware)
        for tensor, names in TENSOR_OPERANDS.items():
            specs = [s for s in (getattr(layer, name) for name in names) if s is not None]
            n = operand_elements(shape, tensor)
            amax = (layer.amax_policy, layer.amax_window)
            for parts in quantizer_kernels(specs, n, hardware, amax):
                _kernel(out, TENSOR_PASS[tensor], parts, hardware)
        for name in FORWARD_OPERANDS:
            spec = getattr(layer, name)
            if spec is None:
                continue
            parts = _gradient_parts(layer, spec, operand_elements(shape, name), hp)
            _kernel(out, "bwd", [(t, ops / hardware.vector_ops, nbytes) for t, ops, nbytes in parts],
                    hardware)
    return out


def quantizer_kernels(
    specs: list[QuantSpec], n: int, hardware: Hardware, amax: tuple[str, int] = ("current", 1)
) -> list[list[tuple[str, float, float]]]:
    """The kernels that quantize one tensor of ``n`` elements into the operands ``specs``: the
    fused quantizer, and tensor scaling's amax pass before it where an operand needs it (``amax``
    is the recipe's amax policy and window). Each kernel is its parts: (technique, compute
    seconds, bytes), over one step on average."""
    if not specs:
        return []
    vector, hp = hardware.vector_ops, hardware.high_precision_bytes
    kernels = []
    scaled = [s for s in specs if s.tensor_scale]
    policy, window = amax
    if scaled and policy in ("current", "hold"):
        # one more read, and the transform where the amax is the rotated tensor's; held, only on
        # the refresh steps: a roofline kernel run one step in D costs 1/D of it on average
        share = 1.0 / window if policy == "hold" else 1.0
        ops = n * sum(1.0 + transform_ops(s) for s in scaled)
        kernels.append([("tensor_scaling", share * ops / vector, share * n * hp)])
    on_the_fly = len(scaled) if policy in ("max", "most_recent") else 0  # a max per element
    kernels.append([
        ("quantize", n * len(specs) * (QUANTIZE_OPS + SCALE_OPS * MX_SCALES_PER_ELEMENT) / vector,
         n * (hp + sum(_mx_operand_bytes(s, hardware) for s in specs))),
        ("hadamard", n * sum(transform_ops(s) for s in specs) / vector, 0.0),
        ("stochastic_rounding", n * sum(rounding_ops(s) for s in specs) / vector, 0.0),
        ("tensor_scaling", n * (on_the_fly + sum(scales_per_element(s) for s in scaled)) / vector, 0.0),
        ("scale_format", n * sum(scale_format_ops(s) for s in specs) / vector,
         n * sum(_scale_bytes_over_mx(s, hardware) for s in specs)),
        ("scale_select", n * sum(scale_select_ops(s) for s in specs) / vector, 0.0),
    ])
    return kernels


def kernel_seconds(parts: Iterable[tuple[str, float, float]], hardware: Hardware) -> float:
    """A kernel's time: the larger of its compute time and its bytes at the streaming bandwidth."""
    out = _new_seconds()
    _kernel(out, "fwd", parts, hardware)
    return _total(out)


def _mx_operand_bytes(spec: QuantSpec | None, hardware: Hardware) -> float:
    """Bytes per element a GEMM reads for an operand, with MX's scale bytes in place of its own."""
    if spec is None or not hardware.native_fp4:
        return hardware.operand_bytes(spec)
    return spec.elem_format.bits / 8 + MX_SCALE_BYTES_PER_ELEMENT


def _scale_bytes_over_mx(spec: QuantSpec | None, hardware: Hardware) -> float:
    """Scale bytes per element beyond MX's, for an operand stored with its scales."""
    if spec is None or not hardware.native_fp4:
        return 0.0
    return scale_bytes_per_element(spec) - MX_SCALE_BYTES_PER_ELEMENT


# -- the unfused upper bound ----------------------------------------------------------------------


def _unfused_seconds(recipe: Recipe, shapes: list[GemmShape], hardware: Hardware) -> Seconds:
    ops: dict[tuple[str, str], float] = defaultdict(float)
    data: dict[tuple[str, str], float] = defaultdict(float)
    out = _new_seconds()
    hp = hardware.high_precision_bytes
    for shape in shapes:
        layer = layer_recipe(recipe, shape)
        hold = layer.amax_window if layer.amax_policy == "hold" else 1
        for name, spec in layer.operands().items():
            if spec is None:
                continue
            pass_ = "fwd" if name in FORWARD_OPERANDS else "bwd"
            n = operand_elements(shape, name)
            for technique, (o, b) in _unfused_quantizer_costs(spec, n, hp, hold).items():
                ops[technique, pass_] += o
                data[technique, pass_] += b
        for name in FORWARD_OPERANDS:
            spec = getattr(layer, name)
            if spec is None:
                continue
            for technique, o, b in _gradient_parts(layer, spec, operand_elements(shape, name), hp):
                ops[technique, "bwd"] += o
                data[technique, "bwd"] += b
        for gemm, (a, b) in GEMM_OPERANDS.items():
            rate = min(hardware.gemm_flops(getattr(layer, a)), hardware.gemm_flops(getattr(layer, b)))
            out["gemm_precision", "fwd" if gemm == "fwd" else "bwd"][0] += shape.flops_per_pass / rate
            ops["hadamard", "fwd" if gemm == "fwd" else "bwd"] += shape.count * sign_ops(layer, gemm)
    for key in set(ops) | set(data):
        out[key][0] += ops[key] / hardware.vector_ops
        out[key][1] += data[key] / hardware.memory_bytes
    return out


def _unfused_quantizer_costs(
    spec: QuantSpec, n: int, hp: int, hold: int
) -> dict[str, tuple[float, float]]:
    """(ops, bytes) per technique of quantizing one operand of ``n`` elements with ``spec``,
    beyond MXFP4's own quantize-and-cast; ``hold`` is the steps a held amax lasts (1 when the
    amax is taken every step: the upper bound keeps a pass for it, delayed or not)."""
    costs = {
        "hadamard": (n * transform_ops(spec), 0.0),
        "stochastic_rounding": (n * rounding_ops(spec), 0.0),
        # each scale written by the quantizer and read by the GEMM
        "scale_format": (n * scale_format_ops(spec),
                         2 * n * (scale_bytes_per_element(spec) - MX_SCALE_BYTES_PER_ELEMENT)),
        "scale_select": (n * scale_select_ops(spec), 0.0),
    }
    if spec.tensor_scale:
        costs["tensor_scaling"] = (n * (1 / hold + scales_per_element(spec)), n * hp / hold)
    return costs


def complexity_points(recipe: Recipe) -> int:
    """The paper's complexity points: one per technique enabled anywhere in the recipe (a
    Hadamard transform, stochastic rounding, tensor scaling, a scale format other than E8M0,
    2-D weight blocks, an estimator other than STE, a gradient through the scale), and one for
    each technique beyond the paper's (4-over-6 scale selection, stochastic scale rounding, a
    pre-scale, a delayed amax, per-step Hadamard signs)."""
    specs = [s for s in recipe.operands().values() if s is not None]
    enabled = {
        "hadamard": any(s.hadamard_size for s in specs),
        "stochastic_rounding": any(s.rounding == "sr" for s in specs),
        "tensor_scaling": any(s.tensor_scale for s in specs),
        "scale_format": any(s.scale != "e8m0" for s in specs),
        "weight_block_2d": any(s.block_2d for s in specs),
        "estimator": recipe.estimator != "ste",
        "scale_grad": recipe.scale_grad != "stop",
        "scale_select": any(s.scale_select != "max" for s in specs),
        "scale_rounding": any(s.scale_rounding == "sr" for s in specs),
        "prescale": any(s.prescale != "1" for s in specs),
        "delayed_amax": recipe.amax_policy != "current",
        "per_step_signs": recipe.sign_policy == "per_step",
    }
    return sum(enabled.values())
