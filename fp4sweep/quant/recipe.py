"""Recipe: a quantiser for each of the six GEMM operands of a linear layer, and how to
differentiate through them.

A linear layer ``y[m, n] = x[m, k] @ w[n, k].T`` runs three GEMMs per training step, each
reducing over its own axis, and each of their two operands may be quantised differently:

    forward         y  = Q(x) @ Q(w).T      fwd_x, fwd_w         along k
    input grad      dx = Q(dy) @ Q(w)       dgrad_dy, dgrad_w    along n
    weight grad     dw = Q(dy).T @ Q(x)     wgrad_dy, wgrad_x    along m

``None`` leaves an operand in the model's precision. ``estimator`` says how the gradient flows
through the two forward quantisers (the backward ones sit on the gradient path and need no
derivative); ``scale_grad`` whether it also flows through their block scales (see
``estimators.py``). ``amax_policy``, ``amax_window`` and ``amax_margin`` say which tensor amax
the tensor-scaled operands use: their own ("current") or a delayed one held by the layer
(``delayed.py``). ``sign_policy`` says when random Hadamard signs (``rhadamardK``) are drawn:
once for the run from the specs' ``transform_seed`` ("fixed"), or afresh at every step
("per_step", TransformerEngine's and Quartet's practice): the layer draws each GEMM's signs from
its seed and the step, shared by the GEMM's two operands (``layers.step_recipe``). A transform
without signs is ``hadamardK``. Fields at their defaults are left out of ``to_dict``, so adding one changes
no existing recipe's dict (trial ids are hashes of it).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

from fp4sweep.quant.spec import QuantSpec

OPERANDS = ("fwd_x", "fwd_w", "dgrad_dy", "dgrad_w", "wgrad_dy", "wgrad_x")
FORWARD_OPERANDS = ("fwd_x", "fwd_w")
BACKWARD_OPERANDS = ("dgrad_dy", "dgrad_w", "wgrad_dy", "wgrad_x")
# The two operands of each GEMM: they must share a transform for the product to stay exact.
GEMM_OPERANDS = {
    "fwd": ("fwd_x", "fwd_w"),
    "dgrad": ("dgrad_dy", "dgrad_w"),
    "wgrad": ("wgrad_dy", "wgrad_x"),
}
ESTIMATORS = ("ste", "clipped_ste", "spline", "power")
SCALE_GRADS = ("stop", "amax")
AMAX_POLICIES = ("current", "hold", "max", "most_recent")
SIGN_POLICIES = ("fixed", "per_step")
# Fields that to_dict leaves out at their default value.
_OMITTED_AT_DEFAULT = ("amax_policy", "amax_window", "amax_margin", "sign_policy")


@dataclass(frozen=True)
class Recipe:
    """Six operand quantisers (``None``: not quantised), a gradient estimator, a scale gradient
    and the tensor-amax policy of the tensor-scaled operands.

    amax_policy: "current", "hold", "max" or "most_recent" (``delayed.py``).
    amax_window: D, the steps an amax is held ("hold"), or H, the history length ("max");
        1 for the other policies.
    amax_margin: m >= 0, the amax used is multiplied by 2**m; 0 for "current".
    sign_policy: "fixed" or "per_step": when random Hadamard signs are drawn.
    """

    fwd_x: QuantSpec | None = None
    fwd_w: QuantSpec | None = None
    dgrad_dy: QuantSpec | None = None
    dgrad_w: QuantSpec | None = None
    wgrad_dy: QuantSpec | None = None
    wgrad_x: QuantSpec | None = None
    estimator: str = "ste"
    scale_grad: str = "stop"
    amax_policy: str = "current"
    amax_window: int = 1
    amax_margin: int = 0
    sign_policy: str = "fixed"

    def __post_init__(self) -> None:
        for name in OPERANDS:
            spec = getattr(self, name)
            if spec is not None and not isinstance(spec, QuantSpec):
                raise ValueError(
                    f"Recipe.{name} must be a QuantSpec or None, got {type(spec).__name__}"
                )
        if self.estimator not in ESTIMATORS:
            raise ValueError(
                f"Recipe.estimator={self.estimator!r} is not valid; valid: {list(ESTIMATORS)}"
            )
        if self.scale_grad not in SCALE_GRADS:
            raise ValueError(
                f"Recipe.scale_grad={self.scale_grad!r} is not valid; valid: {list(SCALE_GRADS)}"
            )
        self._check_amax_policy()
        if self.sign_policy not in SIGN_POLICIES:
            raise ValueError(
                f"Recipe.sign_policy={self.sign_policy!r} is not valid; valid: {list(SIGN_POLICIES)}"
            )
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
                    "act on the forward quantisers, but fwd_x and fwd_w are both None; use "
                    "estimator='ste', scale_grad='stop'"
                )

    def _check_amax_policy(self) -> None:
        if self.amax_policy not in AMAX_POLICIES:
            raise ValueError(
                f"Recipe.amax_policy={self.amax_policy!r} is not valid; valid: {list(AMAX_POLICIES)}"
            )
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
        """A named recipe: "bf16", "mxfp4", "nvfp4" or "paper_best" (see ``PRESETS``)."""
        try:
            build = PRESETS[name]
        except KeyError:
            raise ValueError(f"unknown Recipe preset {name!r}; valid: {sorted(PRESETS)}") from None
        return build()

    @classmethod
    def from_axes(
        cls,
        elem: str = "e2m1",
        scale: str = "e8m0",
        block: int = 32,
        scale_rule: str = "floor",
        rounding_fwd: str = "rne",
        rounding_bwd: str = "rne",
        transform: str = "none",
        tensor_scale: bool = False,
        estimator: str = "ste",
        scale_grad: str = "stop",
        weight_block_2d: bool = False,
        sr_bits: int = 24,
    ) -> Recipe:
        """A uniform recipe from sweep-axis values: all six operands quantised alike.

        The forward operands round with ``rounding_fwd``, the four backward ones with
        ``rounding_bwd``; with ``weight_block_2d`` the two weight operands (fwd_w, dgrad_w) use
        ``block x block`` tiles, so the weight and its transpose quantise identically.
        """
        base = QuantSpec(
            elem=elem,
            scale=scale,
            block=block,
            scale_rule=scale_rule,
            transform=transform,
            tensor_scale=tensor_scale,
            sr_bits=sr_bits,
        )
        fwd = dataclasses.replace(base, rounding=rounding_fwd)
        bwd = dataclasses.replace(base, rounding=rounding_bwd)
        return cls(
            fwd_x=fwd,
            fwd_w=dataclasses.replace(fwd, block_2d=weight_block_2d),
            dgrad_dy=bwd,
            dgrad_w=dataclasses.replace(bwd, block_2d=weight_block_2d),
            wgrad_dy=bwd,
            wgrad_x=bwd,
            estimator=estimator,
            scale_grad=scale_grad,
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-serialisable values; ``Recipe.from_dict(r.to_dict()) == r``."""
        values: dict[str, Any] = {
            name: None if spec is None else spec.to_dict() for name, spec in self.operands().items()
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


def _rotation(spec: QuantSpec | None) -> tuple[str, int]:
    """What fixes an operand's basis: the transform and, for random signs, their seed."""
    if spec is None or spec.transform == "none":
        return ("none", 0)
    return (spec.transform, spec.transform_seed if spec.random_signs else 0)


def _bf16() -> Recipe:
    return Recipe()


def _mxfp4() -> Recipe:
    mx = QuantSpec.preset("mxfp4")
    return Recipe(**{name: mx for name in OPERANDS})


def _nvfp4() -> Recipe:
    # NVIDIA's NVFP4 training recipe (arXiv 2509.25149, TransformerEngine's NVFP4BlockScaling):
    # NVFP4 on every operand; 16x16 weight tiles so w and w.T quantise alike; a random
    # Hadamard transform of size 16 on the weight-gradient GEMM's inputs; stochastic rounding
    # of the gradient dy; round-to-nearest-even elsewhere.
    nv = QuantSpec.preset("nvfp4")
    weight = dataclasses.replace(nv, block_2d=True)
    wgrad = dataclasses.replace(nv, transform="rhadamard16")
    return Recipe(
        fwd_x=nv,
        fwd_w=weight,
        dgrad_dy=dataclasses.replace(nv, rounding="sr"),
        dgrad_w=weight,
        wgrad_dy=dataclasses.replace(wgrad, rounding="sr"),
        wgrad_x=wgrad,
    )


def _paper_best() -> Recipe:
    # Hu, Luschi, Balanca (arXiv 2509.17791): the best quality-to-overhead trade-off combines a
    # Hadamard transform, tensor scaling and stochastic rounding in the backward pass, with
    # UE5M3 block scales and the straight-through estimator. The block of 32 is the one at which
    # the paper sets UE5M3 against E8M0; a random-sign Hadamard of the block's size rotates each
    # block on its own; "nearest" is the amax / elem_max rule that non-power-of-two scale
    # formats use (NVFP4's rule, here without the E4M3 specifics).
    return Recipe.from_axes(
        elem="e2m1",
        scale="ue5m3",
        block=32,
        scale_rule="nearest",
        rounding_fwd="rne",
        rounding_bwd="sr",
        transform="rhadamard32",
        tensor_scale=True,
        estimator="ste",
    )


PRESETS: dict[str, Callable[[], Recipe]] = {
    "bf16": _bf16,
    "mxfp4": _mxfp4,
    "nvfp4": _nvfp4,
    "paper_best": _paper_best,
}
