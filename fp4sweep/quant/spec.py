"""QuantSpec: the settings of one quantizer, as short values a Hydra YAML can hold."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from fp4sweep.quant.formats import ELEMENT_FORMATS, FloatFormat, element_format, scale_format

# The names of the scale settings (``scaling.py`` implements them); here, so that the settings
# and the axis schema import without torch.
SCALE_RULES = ("floor", "ceil", "nearest", "nvfp4", "nvfp4_torchao")
SCALE_SELECTS = ("max", "4over6_mse", "4over6_mae")
SCALE_ROUNDINGS = ("nearest", "sr", "ms_eden")
# The rules whose scale is rounded to nearest, which stochastic scale rounding replaces.
NEAREST_SCALE_RULES = ("nearest", "nvfp4", "nvfp4_torchao")
# Pre-scale name -> its factor c, a float32 value.
PRESCALES = {"1": 1.0, "16/17": float(np.float32(16 / 17)), "3/4": 0.75}
# The NVFP4 conventions multiply block scales by the tensor's decode scale; with a scale format
# as wide as float32 (E8M0, fp32) that product underflows, so they are defined for narrow ones.
NARROW_SCALE_RULES = ("nvfp4", "nvfp4_torchao")
ROUNDINGS = ("rne", "sr")
HADAMARD_SIZES = (16, 32, 64, 128, 256)
TRANSFORMS = ("none",) + tuple(
    f"{kind}{k}" for kind in ("hadamard", "rhadamard") for k in HADAMARD_SIZES
)
BLOCK_RANGE = (8, 128)
SR_BITS_RANGE = (1, 24)
_TRANSFORM_NAME = re.compile(r"(r?)hadamard(\d+)")
_OMITTED_AT_DEFAULT = ("tensor_target_scale", "prescale", "scale_select", "scale_rounding")


@dataclass(frozen=True)
class QuantSpec:
    """How one GEMM operand is quantized along its reduction axis.

    elem: element format: "e2m1", "e2m3", "e3m2", "e4m3", "e5m2" or "int4".
    scale: block-scale format: "e8m0", "ue4m3", "ue5m3", "fp32" (unquantized, "ideal") or any
        unsigned "ueXmY" (see ``formats.scale_format``).
    block: elements sharing one scale along the quantization axis, 8..128.
    block_2d: scale square ``block x block`` tiles of a 2-D tensor (for weights) instead of
        ``1 x block`` runs.
    scale_rule: how a block's scale is chosen from its absolute maximum ``amax``:
        "floor" (OCP MX: 2**(floor(log2 amax) - emax_elem), rounded down in the scale format),
        "ceil" (amax / elem_max rounded up: no element saturates),
        "nearest" (amax / elem_max rounded to nearest-even in the scale format),
        "nvfp4" (TransformerEngine's NVFP4 operation order; subnormal scales kept),
        "nvfp4_torchao" (torchao's NVFP4 operation order; scales clamped below at the scale
        format's smallest normal, 2**-6 for UE4M3); the two NVFP4 rules need a scale format
        with at most 5 exponent bits. ``scaling.py`` gives each rule exactly.
    rounding: element rounding: "rne" (round to nearest, ties to even) or "sr" (stochastic).
    sr_bits: random bits per stochastic rounding decision, 1..24 (24, the default, is unbiased,
        see ``rounding.py``; the UE5M3 authors' recipe uses 8). Up to 8 bits, four decisions
        share one 32-bit random word (up to 16, two), as FP4 hardware draws them (``rng.py``).
    transform: "none", "hadamardK" or "rhadamardK" (K in 16..256): block-diagonal orthonormal
        Hadamard transform of size K along the quantization axis, "r" with random signs. K may
        be smaller or larger than the block; the axis length must be a multiple of both.
    transform_seed: seed of the random signs; part of the spec so that both operands of a GEMM
        share one rotation (independent of the stochastic-rounding seed).
    tensor_scale: two-level scaling: a per-tensor fp32 scale so that block scales use their
        format's whole range.
    tensor_target_scale: with tensor scaling, the block scale that the tensor amax's block is
        given: 0 (default) for the scale format's max (448 for UE4M3: TransformerEngine's
        NVFP4), or a positive integer up to it, such as 256 (TransformerEngine's 4-over-6
        recipe, Quartet II), which leaves the block scales headroom (``scaling.py``).
    prescale: with stochastic rounding, the factor the scaled elements are multiplied by before
        rounding (and the decode scale divided by): "1" (default), "16/17" (NVIDIA's and
        Quartet II's 17/16 margin) or "3/4" (Tseng et al.); ``scaling.py`` defines it.
    scale_select: "max" (default: each block's amax to the element max) or "4over6_mse" /
        "4over6_mae" (Four Over Six: per block, the amax to 6 or to 4, whichever quantizes
        the block with the lower squared / absolute error); for the "nvfp4" rule on 1-D
        blocks of a power-of-two length (``scaling.py``).
    scale_rounding: "nearest" (default), "sr": the block scale rounded stochastically (rules
        "nearest", "nvfp4", "nvfp4_torchao"; blocks of a power-of-two length), or "ms_eden":
        Quartet II's MS-EDEN, elements rounded to nearest and each block scale corrected over
        its random Hadamard run, then rounded stochastically (rule "nvfp4", 1-D blocks, a
        transform "rhadamardK" with K a multiple of the block); ``scaling.py`` defines both.
    """

    elem: str = "e2m1"
    scale: str = "e8m0"
    block: int = 32
    block_2d: bool = False
    scale_rule: str = "floor"
    rounding: str = "rne"
    sr_bits: int = 24
    transform: str = "none"
    transform_seed: int = 0
    tensor_scale: bool = False
    tensor_target_scale: int = 0
    prescale: str = "1"
    scale_select: str = "max"
    scale_rounding: str = "nearest"

    def __post_init__(self) -> None:
        _check_choice("elem", self.elem, sorted(ELEMENT_FORMATS))
        _check_type("scale", self.scale, str)
        try:
            scale_format(self.scale)
        except ValueError as error:
            raise ValueError(f"QuantSpec.scale: {error}") from None
        _check_int_range("block", self.block, BLOCK_RANGE)
        _check_type("block_2d", self.block_2d, bool)
        _check_choice("scale_rule", self.scale_rule, SCALE_RULES)
        _check_choice("rounding", self.rounding, ROUNDINGS)
        _check_int_range("sr_bits", self.sr_bits, SR_BITS_RANGE)
        _check_choice("transform", self.transform, TRANSFORMS)
        _check_type("transform_seed", self.transform_seed, int)
        if self.transform_seed < 0:
            raise ValueError(f"QuantSpec.transform_seed must be >= 0, got {self.transform_seed}")
        _check_type("tensor_scale", self.tensor_scale, bool)
        _check_type("tensor_target_scale", self.tensor_target_scale, int)
        if self.tensor_target_scale:
            top = min(self.scale_format.max, 2.0**64)
            if not self.tensor_scale:
                raise ValueError("QuantSpec.tensor_target_scale needs tensor_scale=True")
            if not 0 < self.tensor_target_scale <= top:
                raise ValueError(
                    f"QuantSpec.tensor_target_scale must be 0 (the scale format's max) or in "
                    f"1..{top:g}, got {self.tensor_target_scale}"
                )
        _check_choice("prescale", self.prescale, PRESCALES)
        if self.prescale != "1" and self.rounding != "sr":
            raise ValueError(
                f"QuantSpec.prescale={self.prescale!r} acts before stochastic rounding; it needs "
                f"rounding='sr', got {self.rounding!r}"
            )
        _check_choice("scale_select", self.scale_select, SCALE_SELECTS)
        if self.scale_select != "max" and (
            self.scale_rule != "nvfp4" or self.block_2d or self.block & (self.block - 1)
        ):
            raise ValueError(
                f"QuantSpec.scale_select={self.scale_select!r} needs scale_rule='nvfp4' and 1-D "
                f"blocks of a power-of-two length, got scale_rule={self.scale_rule!r}, "
                f"block={self.block}, block_2d={self.block_2d}"
            )
        _check_choice("scale_rounding", self.scale_rounding, SCALE_ROUNDINGS)
        if self.scale_rounding == "ms_eden":
            self._check_ms_eden()
        if self.scale_rounding == "sr" and (
            self.scale_rule not in NEAREST_SCALE_RULES or self.scale_select != "max"
            or self.block & (self.block - 1)
        ):
            raise ValueError(
                f"QuantSpec.scale_rounding='sr' replaces a nearest scale rounding: it needs "
                f"scale_rule in {list(NEAREST_SCALE_RULES)}, scale_select='max' and a "
                f"power-of-two block, got scale_rule={self.scale_rule!r}, scale_select="
                f"{self.scale_select!r}, block={self.block}"
            )
        if self.scale_rule in NARROW_SCALE_RULES and self.scale_format.exp_bits > 5:
            raise ValueError(
                f"QuantSpec.scale_rule={self.scale_rule!r} needs a scale format with at most 5 "
                f"exponent bits (e.g. 'ue4m3', 'ue5m3'), got scale={self.scale!r}"
            )

    def _check_ms_eden(self) -> None:
        k = self.hadamard_size
        if (self.scale_rule != "nvfp4" or self.scale_select != "max" or self.rounding != "rne"
                or self.block_2d or not self.random_signs or k % self.block):
            raise ValueError(
                f"QuantSpec.scale_rounding='ms_eden' corrects each block scale over its random "
                f"Hadamard run: it needs scale_rule='nvfp4', scale_select='max', rounding='rne', "
                f"1-D blocks and transform='rhadamardK' with K a multiple of the block, got "
                f"scale_rule={self.scale_rule!r}, scale_select={self.scale_select!r}, rounding="
                f"{self.rounding!r}, block_2d={self.block_2d}, transform={self.transform!r}, "
                f"block={self.block}"
            )

    # -- derived -------------------------------------------------------------------------------

    @property
    def elem_format(self) -> FloatFormat:
        return element_format(self.elem)

    @property
    def scale_format(self) -> FloatFormat:
        return scale_format(self.scale)

    @property
    def hadamard_size(self) -> int:
        """Size of the Hadamard blocks, 0 without a transform."""
        match = _TRANSFORM_NAME.fullmatch(self.transform)
        return int(match[2]) if match else 0

    @property
    def random_signs(self) -> bool:
        return self.transform.startswith("rhadamard")

    # -- construction --------------------------------------------------------------------------

    @classmethod
    def preset(cls, name: str) -> QuantSpec:
        """A named quantizer: "mxfp4", "nvfp4", "nvfp4_torchao" (see ``PRESETS``)."""
        try:
            return cls(**PRESETS[name])
        except KeyError:
            raise ValueError(
                f"unknown QuantSpec preset {name!r}; valid: {sorted(PRESETS)}"
            ) from None

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-serialisable fields; ``from_dict(to_dict(s)) == s``. Fields added after
        the first release are left out at their defaults, so that existing specs (and the trial
        ids hashed from them) keep their dicts."""
        values = dataclasses.asdict(self)
        for name in _OMITTED_AT_DEFAULT:
            if values[name] == _DEFAULTS[name]:
                del values[name]
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> QuantSpec:
        """Build from plain values (missing fields take their defaults; unknown keys are errors)."""
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise ValueError(f"unknown QuantSpec field(s) {unknown}; valid: {names}")
        return cls(**values)


_DEFAULTS = {field.name: field.default for field in dataclasses.fields(QuantSpec)}

PRESETS: dict[str, dict[str, Any]] = {
    # OCP MX v1.0 MXFP4: E2M1 elements, E8M0 scale per 32, OCP floor rule, nearest-even.
    "mxfp4": dict(elem="e2m1", scale="e8m0", block=32, scale_rule="floor"),
    # NVIDIA NVFP4 as TransformerEngine quantizes it: UE4M3 scale per 16 and an fp32 tensor scale.
    "nvfp4": dict(elem="e2m1", scale="ue4m3", block=16, scale_rule="nvfp4", tensor_scale=True),
    # The same format with torchao's convention (block scales clamped below at 2**-6).
    "nvfp4_torchao": dict(
        elem="e2m1", scale="ue4m3", block=16, scale_rule="nvfp4_torchao", tensor_scale=True
    ),
}


def _check_choice(field: str, value: Any, choices: Any) -> None:
    _check_type(field, value, str)
    if value not in choices:
        raise ValueError(f"QuantSpec.{field}={value!r} is not valid; valid: {list(choices)}")


def _check_type(field: str, value: Any, expected: type) -> None:
    # bool is an int subclass: a flag must not pass for a number, nor a number for a flag.
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise ValueError(
            f"QuantSpec.{field} must be {expected.__name__}, got {type(value).__name__} {value!r}"
        )


def _check_int_range(field: str, value: Any, bounds: tuple[int, int]) -> None:
    _check_type(field, value, int)
    low, high = bounds
    if not low <= value <= high:
        raise ValueError(f"QuantSpec.{field} must be in {low}..{high}, got {value}")
