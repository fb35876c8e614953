"""Modelled overhead of a recipe on FP4 hardware, and the paper's complexity points.

The unit is time on one machine (``Hardware``): every technique adds elementwise operations on
the vector units and bytes of DRAM traffic; each is converted to seconds with the machine's
throughput and reported as a fraction of the step's GEMM time, i.e. the three GEMMs of every
layer run as FP4 GEMMs. The reference is plain MXFP4 quantisation (E2M1, E8M0 scale per 32,
OCP floor rule, nearest rounding, STE): its quantise-and-cast is what an FP4 GEMM needs anyway,
so it costs 0 here and every cost below is *extra* to it.

Techniques are priced unfused, one pass each: an upper bound that a fused kernel can beat, but
one that ranks techniques by what they add. Per quantised operand of N elements (N counted over
the layer's ``count`` calls), in the pass where the operand is quantised:

- hadamard: a fast Walsh-Hadamard transform of size K is log2(K) add/sub stages per element;
  random signs one more multiply. Fused into the quantiser's read: no extra traffic.
- stochastic_rounding: one random number of ``sr_bits`` bits per element plus the add that
  applies it. Random bits come from a counter-based generator: Philox-4x32-10 spends ~60
  integer ops for four 32-bit words, ~15 ops per word, so ``15 * sr_bits / 32`` ops per element.
- tensor_scaling: one extra read of the high-precision tensor for its amax (and a max per
  element), plus a multiply per block scale by the global encode scale.
- scale_format: scale bytes differ from MX's one byte per 32 elements; each scale is written by
  the quantiser and read by the GEMM. Block sizes above 32, 2-D tiles and one-byte scales make
  this negative (a saving). A scale with mantissa bits (not a power of two) needs a rounding of
  amax / elem_max into the format and a reciprocal: 2 ops per scale over E8M0's exponent add.

Backward pass, for each quantised forward operand (the estimator and the scale gradient
differentiate through the forward quantisers):

- estimator: STE passes the gradient through (free). Others read and write the gradient once
  more and need the operand's quantisation state: clipped STE a 1-bit saturation mask (written
  in the forward, read in the backward), spline and power re-read the high-precision operand
  and locate each element in its interval. Ops per element: select (1); spline: position in
  the interval (3) + band test (2) + multiply (1) = 6; power: position (3) + |2u/d - 1| (2) +
  pow via log2/exp2 (2) + scale and clamp (2) + multiply (1) = 10.
- scale_grad "amax": per element the residual y - t*D (2), its product with the gradient (1),
  the block sum (1) and the scatter to the block's arg-max (1) = 5 ops; it re-reads the operand
  and reads and writes the gradient.
- hadamard (backward): with any gradient adjustment above, the gradient goes into the
  transformed basis and back: two transforms of the operand's size.

gemm_precision: an operand left unquantised (None) runs its GEMM at the machine's BF16 rate,
a 6- or 8-bit element format at its FP8 rate (a 4-bit one, INT4 included, at the FP4 rate);
the extra time over the FP4 GEMM is the cost. The scale rule (floor, ceil, nearest, ...)
costs the same for every rule: not a line item.

Arithmetic and memory time are added, not overlapped, and nothing is fused: the model ranks
recipes by what they add on a given machine; ``Hardware`` holds that machine's rates.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

from fp4sweep.quant.gemm import GemmShape
from fp4sweep.quant.recipe import FORWARD_OPERANDS, GEMM_OPERANDS, Recipe
from fp4sweep.quant.spec import QuantSpec

PASSES = ("fwd", "bwd")
TECHNIQUES = (
    "gemm_precision",
    "hadamard",
    "stochastic_rounding",
    "tensor_scaling",
    "scale_format",
    "estimator",
    "scale_grad",
)

OPS_PER_RANDOM_WORD = 15.0
MX_SCALE_BYTES_PER_ELEMENT = 1 / 32
# (ops per element, bytes per element of operand state) of each estimator's backward, beyond
# the gradient's own read and write; hp = the high-precision element size.
_ESTIMATOR_OPS = {"ste": 0.0, "clipped_ste": 1.0, "spline": 6.0, "power": 10.0}
_MASK_BYTES = 2 / 8  # one bit written in the forward, read in the backward
_SCALE_GRAD_OPS = 5.0


@dataclass(frozen=True)
class Hardware:
    """Throughputs that turn operations and bytes into time (dense rates, per second)."""

    name: str
    fp4_flops: float
    fp8_flops: float
    bf16_flops: float
    vector_ops: float
    memory_bytes: float
    high_precision_bytes: int = 2  # bf16 activations, weights and gradients

    def gemm_flops(self, spec: QuantSpec | None) -> float:
        """Tensor-core rate of a GEMM whose widest operand is quantised by ``spec``."""
        if spec is None:
            return self.bf16_flops
        return self.fp4_flops if spec.elem_format.bits <= 4 else self.fp8_flops


# NVIDIA HGX B200 (1000 W) datasheet, dense: FP4 9 PFLOP/s, FP8/FP6 4.5, BF16 2.25; FP32 vector
# 80 TFLOP/s counts an FMA as two, so 40e12 elementwise instructions/s; HBM3e 8 TB/s.
B200 = Hardware(
    name="B200",
    fp4_flops=9e15,
    fp8_flops=4.5e15,
    bf16_flops=2.25e15,
    vector_ops=40e12,
    memory_bytes=8e12,
)


@dataclass(frozen=True)
class Term:
    """One technique's cost in one pass, as fractions of the step's FP4 GEMM time."""

    technique: str
    pass_: str
    arithmetic: float
    memory: float

    @property
    def total(self) -> float:
        return self.arithmetic + self.memory


@dataclass(frozen=True)
class Overhead:
    """A recipe's modelled cost: ``terms`` per technique and pass, plus complexity points."""

    terms: tuple[Term, ...]
    points: float

    def _sum(self, pass_: str | None = None, technique: str | None = None) -> float:
        return sum(
            t.total
            for t in self.terms
            if (pass_ is None or t.pass_ == pass_) and (technique is None or t.technique == technique)
        )

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
        return sum(t.arithmetic for t in self.terms)

    @property
    def memory(self) -> float:
        return sum(t.memory for t in self.terms)

    def as_dict(self) -> dict[str, float]:
        """Flat str -> float for a results row: model, model_fwd, model_bwd, points,
        model_arith, model_memory and ``<technique>_<pass>`` for every technique and pass."""
        row = {
            "model": self.total,
            "model_fwd": self.forward,
            "model_bwd": self.backward,
            "points": float(self.points),
            "model_arith": self.arithmetic,
            "model_memory": self.memory,
        }
        for t in self.terms:
            row[f"{t.technique}_{t.pass_}"] = t.total
        return row


def overhead(recipe: Recipe, gemm_shapes: list[GemmShape], hardware: Hardware = B200) -> Overhead:
    """The modelled extra cost of ``recipe`` over plain MXFP4 for one training step whose
    linear layers are ``gemm_shapes``, as fractions of that step's FP4 GEMM time."""
    if not gemm_shapes:
        raise ValueError("overhead needs at least one GemmShape: the step's GEMM cost is its unit")
    ops: dict[tuple[str, str], float] = defaultdict(float)
    data: dict[tuple[str, str], float] = defaultdict(float)
    extra_gemm_seconds: dict[str, float] = defaultdict(float)
    for shape in gemm_shapes:
        for name, spec in recipe.operands().items():
            if spec is None:
                continue
            pass_ = "fwd" if name in FORWARD_OPERANDS else "bwd"
            n = operand_elements(shape, name)
            for technique, (o, b) in quantiser_costs(spec, n, hardware).items():
                ops[technique, pass_] += o
                data[technique, pass_] += b
        for name in FORWARD_OPERANDS:
            spec = getattr(recipe, name)
            if spec is None:
                continue
            n = operand_elements(shape, name)
            for technique, (o, b) in gradient_costs(recipe, spec, n, hardware).items():
                ops[technique, "bwd"] += o
                data[technique, "bwd"] += b
        for gemm, (a, b) in GEMM_OPERANDS.items():
            rate = min(hardware.gemm_flops(getattr(recipe, a)), hardware.gemm_flops(getattr(recipe, b)))
            flops = shape.flops_per_pass
            extra = flops / rate - flops / hardware.fp4_flops
            extra_gemm_seconds["fwd" if gemm == "fwd" else "bwd"] += extra
    step_seconds = sum(3 * s.flops_per_pass for s in gemm_shapes) / hardware.fp4_flops
    terms = []
    for technique in TECHNIQUES:
        for pass_ in PASSES:
            if technique == "gemm_precision":
                arithmetic, memory = extra_gemm_seconds[pass_], 0.0
            else:
                arithmetic = ops[technique, pass_] / hardware.vector_ops
                memory = data[technique, pass_] / hardware.memory_bytes
            terms.append(Term(technique, pass_, arithmetic / step_seconds, memory / step_seconds))
    return Overhead(terms=tuple(terms), points=float(complexity_points(recipe)))


def operand_elements(shape: GemmShape, operand: str) -> int:
    """Elements of one operand over the layer's ``count`` calls: x is m*k, w n*k, dy m*n."""
    sizes = {"x": shape.m * shape.k, "w": shape.n * shape.k, "dy": shape.m * shape.n}
    return sizes[operand.split("_", 1)[1]] * shape.count


def scales_per_element(spec: QuantSpec) -> float:
    return 1 / (spec.block * spec.block) if spec.block_2d else 1 / spec.block


def quantiser_costs(spec: QuantSpec, n: int, hardware: Hardware) -> dict[str, tuple[float, float]]:
    """(ops, bytes) per technique of quantising one operand of ``n`` elements with ``spec``."""
    costs = {}
    if spec.hadamard_size:
        costs["hadamard"] = (n * _transform_ops_per_element(spec), 0.0)
    if spec.rounding == "sr":
        costs["stochastic_rounding"] = (n * (1 + OPS_PER_RANDOM_WORD * spec.sr_bits / 32), 0.0)
    scales = n * scales_per_element(spec)
    if spec.tensor_scale:
        costs["tensor_scaling"] = (n + scales, n * hardware.high_precision_bytes)
    scale_bytes = math.ceil(spec.scale_format.bits / 8)
    scale_ops = 2.0 if spec.scale_format.man_bits else 0.0
    costs["scale_format"] = (
        scales * scale_ops,
        2 * (scales * scale_bytes - n * MX_SCALE_BYTES_PER_ELEMENT),
    )
    return costs


def gradient_costs(
    recipe: Recipe, spec: QuantSpec, n: int, hardware: Hardware
) -> dict[str, tuple[float, float]]:
    """(ops, bytes) per technique of the backward through one forward quantiser of ``n``
    elements: the estimator's derivative, the scale gradient and the transforms they need."""
    hp = hardware.high_precision_bytes
    gradient_pass = 2 * hp  # read and write the gradient once more
    costs = {}
    if recipe.estimator != "ste":
        state = _MASK_BYTES if recipe.estimator == "clipped_ste" else hp
        costs["estimator"] = (n * _ESTIMATOR_OPS[recipe.estimator], n * (gradient_pass + state))
    if recipe.scale_grad == "amax":
        costs["scale_grad"] = (n * _SCALE_GRAD_OPS, n * (gradient_pass + hp))
    if costs and spec.hadamard_size:
        costs["hadamard"] = (2 * n * _transform_ops_per_element(spec), 0.0)
    return costs


def _transform_ops_per_element(spec: QuantSpec) -> float:
    return math.log2(spec.hadamard_size) + (1.0 if spec.random_signs else 0.0)


def complexity_points(recipe: Recipe) -> int:
    """The paper's complexity points: one per technique enabled anywhere in the recipe (a
    Hadamard transform, stochastic rounding, tensor scaling, a scale format other than E8M0,
    2-D weight blocks, an estimator other than STE, a gradient through the scale)."""
    specs = [s for s in recipe.operands().values() if s is not None]
    enabled = {
        "hadamard": any(s.hadamard_size for s in specs),
        "stochastic_rounding": any(s.rounding == "sr" for s in specs),
        "tensor_scaling": any(s.tensor_scale for s in specs),
        "scale_format": any(s.scale != "e8m0" for s in specs),
        "weight_block_2d": any(s.block_2d for s in specs),
        "estimator": recipe.estimator != "ste",
        "scale_grad": recipe.scale_grad != "stop",
    }
    return sum(enabled.values())
