"""Recipe: a quantizer for each of the six GEMM operands of a linear layer (see
``operands.py``), how to differentiate through them, and which layers stay in bf16.

``None`` leaves an operand in the model's precision. ``estimator`` says how the gradient flows
through the two forward quantizers (the backward ones sit on the gradient path and need no
derivative); ``scale_grad`` whether it also flows through their block scales (see
``estimators.py``); ``high_precision`` is the layer policy (``layer_policy.py``) that the task
applies when it quantizes its model. ``amax_policy``, ``amax_window`` and ``amax_margin`` say
which tensor amax the tensor-scaled operands use: their own ("current") or a delayed one held by
the layer (``delayed.py``). ``sign_policy`` says when random Hadamard signs (``rhadamardK``) are
drawn: once for the run from the specs' ``transform_seed`` ("fixed"), or afresh at every step
("per_step", TransformerEngine's and Quartet's practice): the layer draws each GEMM's signs from
its seed and the step, shared by the GEMM's two operands (``layers.step_recipe``). A transform
without signs is ``hadamardK``. ``gemm_model`` says how the GEMMs sum their products: exactly, or
as an FP4 tensor core accumulates (``accumulation.py``). ``optimizer`` and ``loss_scale`` say how
the task trains: AdamW or Stable-SPAM (``tasks/optimizers.py``), with or without dynamic loss
scaling (``tasks/loss_scaling.py``). Recipes are built from axis values (``from_axes``, the schema in
``axes.py``) or by name (``preset``). Fields at their defaults are left out of ``to_dict``, so
adding one changes no existing recipe's dict (trial ids are hashes of it).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fp4sweep.quant.axes import AXES, recipe_fields
from fp4sweep.quant.layer_policy import parse_policy
from fp4sweep.quant.operands import BACKWARD_OPERANDS, FORWARD_OPERANDS, GEMM_OPERANDS, OPERANDS
from fp4sweep.quant.spec import QuantSpec

__all__ = ["BACKWARD_OPERANDS", "FORWARD_OPERANDS", "GEMM_OPERANDS", "OPERANDS", "PRESETS", "Recipe"]
ESTIMATORS = tuple(AXES["estimator"].options)
SCALE_GRADS = tuple(AXES["scale_grad"].options)
GEMM_MODELS = tuple(AXES["gemm_model"].options)
NO_POLICY = "none"
AMAX_POLICIES = ("current", "hold", "max", "most_recent")
SIGN_POLICIES = ("fixed", "per_step")
OPTIMIZERS = tuple(AXES["optimizer"].options)
LOSS_SCALES = tuple(AXES["loss_scale"].options)
# Fields that to_dict leaves out at their default value.
_OMITTED_AT_DEFAULT = ("high_precision", "amax_policy", "amax_window", "amax_margin", "sign_policy",
                       "optimizer", "loss_scale", "gemm_model")


@dataclass(frozen=True)
class Recipe:
    """Six operand quantizers (``None``: not quantized), a gradient estimator, a scale gradient
    and the tensor-amax policy of the tensor-scaled operands.

    amax_policy: "current", "hold", "max" or "most_recent" (``delayed.py``).
    amax_window: D, the steps an amax is held ("hold"), or H, the history length ("max");
        1 for the other policies.
    amax_margin: m >= 0, the amax used is multiplied by 2**m; 0 for "current".
    sign_policy: "fixed" or "per_step": when random Hadamard signs are drawn.
    optimizer: "adamw" or "stable_spam".
    loss_scale: "none" or "dynamic".
    gemm_model: "exact" or "blackwell": how a GEMM whose two operands are quantized sums its
        products (``accumulation.py``).
    """

    fwd_x: QuantSpec | None = None
    fwd_w: QuantSpec | None = None
    dgrad_dy: QuantSpec | None = None
    dgrad_w: QuantSpec | None = None
    wgrad_dy: QuantSpec | None = None
    wgrad_x: QuantSpec | None = None
    estimator: str = "ste"
    scale_grad: str = "stop"
    high_precision: str = NO_POLICY
    amax_policy: str = "current"
    amax_window: int = 1
    amax_margin: int = 0
    sign_policy: str = "fixed"
    optimizer: str = "adamw"
    loss_scale: str = "none"
    gemm_model: str = "exact"

    def __post_init__(self) -> None:
        for name in OPERANDS:
            spec = getattr(self, name)
            if spec is not None and not isinstance(spec, QuantSpec):
                raise ValueError(
                    f"Recipe.{name} must be a QuantSpec or None, got {type(spec).__name__}"
                )
        _check_choice("estimator", self.estimator, ESTIMATORS)
        _check_choice("gemm_model", self.gemm_model, GEMM_MODELS)
        _check_choice("scale_grad", self.scale_grad, SCALE_GRADS)
        try:
            parse_policy(self.high_precision)
        except ValueError as error:
            raise ValueError(f"Recipe.high_precision: {error}") from None
        self._check_amax_policy()
        _check_choice("sign_policy", self.sign_policy, SIGN_POLICIES)
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        _check_choice("loss_scale", self.loss_scale, LOSS_SCALES)
        if self.sign_policy != "fixed" and not any(
            spec is not None and spec.random_signs for spec in self.operands().values()
        ):
            raise ValueError(
                f"Recipe.sign_policy={self.sign_policy!r} redraws random Hadamard signs, but no "
                "operand has an 'rhadamardK' transform"
            )
        for gemm, (a, b) in GEMM_OPERANDS.items():
            if _rotation(getattr(self, a)) != _rotation(getattr(self, b)):
                raise ValueError(
                    f"Recipe: the {gemm} GEMM's operands {a} and {b} must share one transform "
                    f"(transform and transform_seed), got {_rotation(getattr(self, a))} and "
                    f"{_rotation(getattr(self, b))}"
                )
        if self.fwd_x is None and self.fwd_w is None:
            if self.estimator != "ste" or self.scale_grad != "stop":
                raise ValueError(
                    f"Recipe: estimator={self.estimator!r} and scale_grad={self.scale_grad!r} "
                    "act on the forward quantizers, but fwd_x and fwd_w are both None; use "
                    "estimator='ste', scale_grad='stop'"
                )

    def _check_amax_policy(self) -> None:
        _check_choice("amax_policy", self.amax_policy, AMAX_POLICIES)
        for name in ("amax_window", "amax_margin"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"Recipe.{name} must be int, got {type(value).__name__} {value!r}")
        if self.amax_window < 1:
            raise ValueError(f"Recipe.amax_window must be >= 1, got {self.amax_window}")
        if self.amax_policy not in ("hold", "max") and self.amax_window != 1:
            raise ValueError(
                f"Recipe.amax_window={self.amax_window} has no meaning for amax_policy="
                f"{self.amax_policy!r}; use 1 (it counts steps for 'hold' and 'max')"
            )
        if self.amax_margin < 0:
            raise ValueError(f"Recipe.amax_margin must be >= 0, got {self.amax_margin}")
        if self.amax_policy == "current":
            if self.amax_margin:
                raise ValueError("Recipe.amax_margin needs a delayed amax_policy, not 'current'")
            return
        if not any(spec is not None and spec.tensor_scale for spec in self.operands().values()):
            raise ValueError(
                f"Recipe.amax_policy={self.amax_policy!r} acts on tensor scaling, but no operand "
                "has tensor_scale=True"
            )

    # -- queries -------------------------------------------------------------------------------

    def operands(self) -> dict[str, QuantSpec | None]:
        """Operand name -> spec, in ``OPERANDS`` order."""
        return {name: getattr(self, name) for name in OPERANDS}

    @property
    def quantizes_anything(self) -> bool:
        return any(spec is not None for spec in self.operands().values())

    # -- construction --------------------------------------------------------------------------

    @classmethod
    def preset(cls, name: str) -> Recipe:
        """A named recipe (see ``PRESETS``: each built from axis values, its source named there)."""
        return cls.from_axes(preset_axes(name))

    @classmethod
    def from_axes(cls, values: Mapping[str, Any] | None = None, /, **keywords: Any) -> Recipe:
        """The recipe that axis values give (``axes.py``): keys ``AXIS`` or ``AXIS@SCOPE`` in
        ``values``, or keywords ``AXIS`` / ``AXIS__SCOPE``; options by name or by value
        (``block=16``, ``tensor_scale=True``); axes not named take their defaults (MXFP4).
        ``Recipe.from_axes({"rounding@dy": "sr", "transform@wgrad": "rhadamard16"})``."""
        fields = recipe_fields({**(values or {}), **keywords})
        specs = {op: None if fields[op] is None else _spec(tuple(fields[op].items())) for op in OPERANDS}
        return cls(**{**fields, **specs})

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-serialisable values; ``Recipe.from_dict(r.to_dict()) == r``."""
        values: dict[str, Any] = {
            name: None if spec is None else dict(_spec_values(spec)) for name, spec in self.operands().items()
        }
        values["estimator"] = self.estimator
        values["scale_grad"] = self.scale_grad
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for name in _OMITTED_AT_DEFAULT:
            if getattr(self, name) != defaults[name]:
                values[name] = getattr(self, name)
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Recipe:
        """Build from plain values: each operand None or a QuantSpec field dict; missing keys
        take their defaults, unknown keys are errors."""
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise ValueError(f"unknown Recipe field(s) {unknown}; valid: {names}")
        fields = dict(values)
        for name in OPERANDS:
            spec = fields.get(name)
            if isinstance(spec, dict):
                fields[name] = QuantSpec.from_dict(spec)
        return cls(**fields)


def _check_choice(field: str, value: Any, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ValueError(f"Recipe.{field}={value!r} is not valid; valid: {list(valid)}")


# A sweep builds thousands of recipes from a few dozen distinct operand specs: build and
# serialise each spec once.
@functools.lru_cache(maxsize=4096)
def _spec(fields: tuple[tuple[str, Any], ...]) -> QuantSpec:
    return QuantSpec(**dict(fields))


@functools.lru_cache(maxsize=4096)
def _spec_values(spec: QuantSpec) -> dict[str, Any]:
    return spec.to_dict()  # callers copy it: the cached dict stays as built


def _rotation(spec: QuantSpec | None) -> tuple[str, int]:
    """What fixes an operand's basis: the transform and, for random signs, their seed."""
    if spec is None or spec.transform == "none":
        return ("none", 0)
    return (spec.transform, spec.transform_seed if spec.random_signs else 0)


def preset_axes(name: str) -> dict[str, str]:
    """The axis values of a named recipe; ValueError lists the names."""
    try:
        return dict(PRESETS[name])
    except KeyError:
        raise ValueError(f"unknown Recipe preset {name!r}; valid: {sorted(PRESETS)}") from None


# TransformerEngine's NVFP4 training recipe (NVFP4BlockScaling; NVIDIA, "Pretraining Large Language
# Models with NVFP4", arXiv 2509.25149): E2M1 with an E4M3 scale per 16 and an fp32 tensor scale,
# 16x16 weight tiles so that w and w.T quantize alike, a random Hadamard of 16 on the weight-
# gradient GEMM's operands, stochastic rounding of the gradient dy, nearest rounding elsewhere.
# TE redraws the Hadamard signs every step; here they are fixed per layer (the core's transform).
_TE_NVFP4 = {
    "scale": "ue4m3", "block": "16", "scale_rule": "nvfp4", "tensor_scale": "fp32",
    "block_2d@w": "true", "transform@wgrad": "rhadamard16", "rounding@dy": "sr",
}  # fmt: skip

# Named recipes as axis values.
PRESETS: dict[str, dict[str, str]] = {
    # Everything in the model's precision: the baseline.
    "bf16": {"quantize": "false"},
    # OCP MX v1.0 MXFP4 on all six operands: E2M1, an E8M0 scale per 32, the floor rule (the
    # axes' defaults).
    "mxfp4": {},
    "nvfp4": _TE_NVFP4,
    "te_nvfp4": _TE_NVFP4,
    # TE's recipe with the last block in bf16 as well (Megatron's --num-layers-at-end-in-bf16;
    # arXiv 2509.25149 keeps the final blocks of its models in bf16).
    "nvidia_nvfp4": {**_TE_NVFP4, "high_precision": "last1"},
    # Tseng, Yu, Park, "Training LLMs with MXFP4" (AISTATS 2025, amazon-science/mxfp4-llm): the
    # forward in bf16, both backward GEMMs in MXFP4 with stochastic rounding and a random
    # Hadamard of 64 (their default block). Their SR first scales by 3/4 against clipping; the
    # floor rule here does not.
    "tseng_mxfp4": {"quantize@fwd": "false", "rounding@bwd": "sr", "transform@bwd": "rhadamard64"},
    # Hu, Luschi, Balanca (arXiv 2509.17791): the best quality-to-overhead trade-off combines a
    # Hadamard transform, tensor scaling and stochastic rounding in the backward pass, with
    # UE5M3 block scales and the straight-through estimator. The block of 32 is the one at which
    # the paper sets UE5M3 against E8M0; a random-sign Hadamard of the block's size rotates each
    # block on its own; "nearest" is the amax / elem_max rule that non-power-of-two scale
    # formats use (NVFP4's rule, here without the E4M3 specifics).
    "paper_best": {
        "scale": "ue5m3", "scale_rule": "nearest", "rounding@bwd": "sr", "transform": "rhadamard32",
        "tensor_scale": "fp32",
    },
    # The UE5M3 authors' proposed recipe (MrHuff/ue5m3-fp4, recipes/proposed_b16_d50.yaml and
    # docs/numerics.md): E2M1 with a UE5M3 scale per 16, rounded to nearest even from
    # block amax * (g / 6) as TE's NVFP4 rule does, under an fp32 tensor scale whose target is
    # 448 (not UE5M3's max of 61440); 16x16 weight tiles; the tensor amax of every operand sampled
    # at steps 0, 50, 100, ... and held in between; stochastic rounding with 8 random bits for dy
    # only, in both backward GEMMs; no Hadamard transform. Where the core differs: their 8-bit
    # "midpoint" rounding goes up iff p + (2r + 1) / 512 >= 1, the core's iff r / 256 < p (r
    # uniform on 0..255, p the position between neighbours): P(up) is 256 p rounded to nearest
    # over 256 for them, rounded up for the core, at most 1/256 apart; a block scale that rounds
    # to zero is 1 for them, the format's smallest value here; their 2048 target for dy of some
    # Nemotron-H layers is architecture-specific and left out.
    "ue5m3_2026": {
        "scale": "ue5m3", "block": "16", "scale_rule": "nvfp4", "tensor_scale": "fp32",
        "tensor_target": "448", "block_2d@w": "true", "amax": "hold50", "rounding@dy": "sr",
        "sr_bits@dy": "8",
    },
}  # fmt: skip
