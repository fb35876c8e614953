"""The technique axes of a sweep, declared once.

Each axis has a name, its options (the names a sweep file uses, each with the value it sets), a
default, the scopes it may be placed on and one line of meaning. Everything else derives from
``AXES``: the defaults of a trial, the `quant.AXIS` pins and `axes:` keys a sweep accepts and their
error messages, recipe construction (``Recipe.from_axes``), the store's ``axis.*`` columns and
``fp4sweep axes``. Adding an axis is one entry here.

A key is ``AXIS`` (every operand) or ``AXIS@SCOPE`` (see ``operands.SCOPES``); ``AXIS__SCOPE`` is
the same key spelt for command lines, where ``@`` means something else to Hydra. When several keys
of one axis cover an operand, the narrowest scope decides (``rounding: sr`` with ``rounding@x:
rne`` leaves x to nearest rounding); two keys of equal width that disagree on an operand are an
error.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fp4sweep.quant.formats import ELEMENT_FORMATS
from fp4sweep.quant.layer_policy import KINDS
from fp4sweep.quant.operands import ALL, GEMM_SCOPES, OPERANDS, SCOPES
from fp4sweep.quant.spec import PRESCALES, ROUNDINGS, SCALE_ROUNDINGS, SCALE_RULES, SCALE_SELECTS, TRANSFORMS

SCOPE_SEPARATOR, COMMAND_LINE_SEPARATOR = "@", "__"
RECIPE_LEVEL = (ALL,)  # the scope of an axis that sets the whole recipe, not its operands
MIXED = "mixed"  # the value of a key whose operands resolve to different options


def _named(*names: str) -> dict[str, str]:
    return {name: name for name in names}


@dataclass(frozen=True)
class Axis:
    """One technique axis. ``sets`` is the QuantSpec field it sets on each operand in its scope,
    ``quantize`` (whether the operand is quantized at all) or, for a recipe-level axis, the Recipe
    field it sets; an axis whose options set several fields together names them all, and each
    option's value is a tuple of their values in that order."""

    name: str
    meaning: str
    options: Mapping[str, Any]  # option name -> value, in the order listings show them
    default: str
    sets: str | tuple[str, ...]
    scopes: tuple[str, ...] = tuple(SCOPES)
    scope_rule: str = ""  # why narrower scopes are refused, when some are

    @property
    def per_operand(self) -> bool:
        return self.scopes != RECIPE_LEVEL

    def option(self, value: Any) -> str:
        """The option named by ``value``: an option name, or the value an option sets (``16`` for
        block "16", ``True`` for tensor_scale "fp32"); ValueError lists the options."""
        if isinstance(value, str) and value in self.options:  # the common case, and the fast one
            return value
        for name, setting in self.options.items():
            if _same(value, name) or _same(value, setting):
                return name
        raise ValueError(f"unknown {self.name} {value!r}; valid: {list(self.options)}")

    def fields(self, option: str) -> dict[str, Any]:
        """The fields that ``option`` (a name) sets, field name -> value."""
        value = self.options[option]
        return {self.sets: value} if isinstance(self.sets, str) else dict(zip(self.sets, value))

    def check_scope(self, scope: str) -> None:
        if scope not in SCOPES:
            raise ValueError(f"unknown scope {scope!r} of {self.name}; valid: {_scope_names(tuple(SCOPES))}")
        if scope not in self.scopes:
            raise ValueError(
                f"{self.name} cannot be placed on {scope!r}: {self.scope_rule}; "
                f"its scopes: {_scope_names(self.scopes)}"
            )


def _scope_names(scopes: tuple[str, ...]) -> str:
    """Scopes as a sweep file writes them: no scope at all for every operand."""
    return ", ".join("none (AXIS alone)" if scope == ALL else scope for scope in scopes)


def _same(value: Any, candidate: Any) -> bool:
    # YAML gives `true` and `16` where option names are "true" and "16"; a bool is no int here.
    if isinstance(value, bool):
        return candidate is value or candidate == str(value).lower()
    if isinstance(candidate, bool):
        return False
    return value == candidate or (isinstance(value, int) and str(value) == candidate)


_FLAGS = {"false": False, "true": True}
_LAYER_STATE = "a layer holds one amax history policy for all its tensor-scaled operands"
# Delayed tensor amax: (Recipe.amax_policy, Recipe.amax_window) by name.
_AMAX = {
    "current": ("current", 1),
    **{f"hold{d}": ("hold", d) for d in (10, 50, 200)},
    **{f"max{h}": ("max", h) for h in (16, 1024)},
    "most_recent": ("most_recent", 1),
}
AXES: dict[str, Axis] = {
    axis.name: axis
    for axis in (
        Axis("quantize", "whether the operand is quantized at all (false: it stays in the model's "
             "precision, bf16)", _FLAGS, "true", "quantize"),
        Axis("elem", "element format: FP4 E2M1, FP6 E2M3/E3M2, FP8 E4M3/E5M2, INT4",
             _named(*ELEMENT_FORMATS), "e2m1", "elem"),
        Axis("scale", "block-scale format: E8M0 (power of two, OCP MX), UE4M3 (NVFP4), UE5M3, "
             "fp32 (unquantized, the ideal)", _named("e8m0", "ue4m3", "ue5m3", "fp32"), "e8m0",
             "scale"),
        Axis("block", "elements sharing one scale along the reduction axis",
             {str(n): n for n in (8, 16, 32, 64, 128)}, "32", "block"),
        Axis("block_2d", "square block x block tiles instead of 1 x block runs (for weights: w "
             "and w.T quantize alike)", _FLAGS, "false", "block_2d"),
        Axis("scale_rule", "how a block's scale follows from its amax: floor (OCP MX), ceil (no "
             "saturation), nearest, nvfp4 / nvfp4_torchao (NVFP4's conventions)",
             _named(*SCALE_RULES), "floor", "scale_rule"),
        Axis("rounding", "element rounding: rne (to nearest, ties to even) or sr (stochastic, "
             "reproducible from the seed)", _named(*ROUNDINGS), "rne", "rounding"),
        Axis("sr_bits", "random bits per stochastic-rounding decision: 24 is unbiased, 8 is what "
             "FP4 hardware draws", {"8": 8, "16": 16, "24": 24}, "24", "sr_bits"),
        Axis("transform", "block-diagonal Hadamard transform of size K along the reduction axis, "
             "r: with random signs", _named(*TRANSFORMS), "none", "transform", GEMM_SCOPES,
             "both operands of a GEMM must share one rotation for their product to stay exact, so "
             "a transform covers whole GEMMs"),
        Axis("scale_rounding", "block-scale rounding: nearest, sr (stochastic; for the nearest, "
             "nvfp4 and nvfp4_torchao scale rules) or ms_eden (Quartet II: elements to nearest, each scale corrected over its random Hadamard "
             "run and rounded stochastically; needs scale_rule nvfp4 and a transform "
             "rhadamardK)", _named(*SCALE_ROUNDINGS), "nearest", "scale_rounding"),
        Axis("tensor_scale", "a second, per-tensor fp32 scale so that block scales use their "
             "format's whole range", {"none": False, "fp32": True}, "none", "tensor_scale"),
        Axis("tensor_target", "with tensor_scale fp32, the block scale that the tensor amax's block "
             "is given: the scale format's max (448 for UE4M3, TransformerEngine's NVFP4), 448 (the "
             "UE5M3 authors' target) or 256 (TE's 4-over-6 recipe, Quartet II), which leaves the "
             "block scales headroom", {"max": 0, "448": 448, "256": 256}, "max",
             "tensor_target_scale"),
        Axis("prescale", "with stochastic rounding, the factor the scaled elements are multiplied "
             "by before rounding: 1, 16/17 (the 17/16 margin of NVIDIA's and Quartet II's gradient "
             "quantizers) or 3/4 (Tseng et al.)", _named(*PRESCALES), "1", "prescale"),
        Axis("scale_select", "how a block's scale is chosen: max (its amax to the element max) or "
             "4 over 6 (its amax to 6 or to 4, whichever has the lower squared / absolute error; "
             "scale_rule nvfp4, 1-D blocks)", _named(*SCALE_SELECTS), "max", "scale_select"),
        Axis("amax", "the tensor amax that tensor scaling divides by: current (the tensor's own), "
             "holdD (sampled every D steps and held: the UE5M3 authors' D = 50), maxH (the largest "
             "of the previous H steps: TransformerEngine's FP8 DelayedScaling) or most_recent (the "
             "previous step's); delayed ones need tensor_scale fp32", _AMAX, "current",
             ("amax_policy", "amax_window"), RECIPE_LEVEL, _LAYER_STATE),
        Axis("amax_margin", "with a delayed amax, the amax used is multiplied by 2**margin "
             "(TransformerEngine's margin) so that a growing tensor saturates less",
             {str(m): m for m in (0, 1, 2)}, "0", "amax_margin", RECIPE_LEVEL, _LAYER_STATE),
        Axis("sign_policy", "when random Hadamard signs (rhadamardK) are drawn: fixed (once for "
             "the run) or per_step (afresh every step, shared by a GEMM's two operands, as "
             "TransformerEngine and Quartet do)", _named("fixed", "per_step"), "fixed",
             "sign_policy", RECIPE_LEVEL,
             "it times the signs of every random Hadamard transform of the recipe"),
        Axis("estimator", "how the gradient flows through the forward quantizers: ste, "
             "clipped_ste, spline, power", _named("ste", "clipped_ste", "spline", "power"), "ste",
             "estimator", RECIPE_LEVEL, "it acts on the forward quantizers' derivative as a whole"),
        Axis("scale_grad", "whether the gradient also flows through the forward block scales "
             "(amax) or not (stop)", _named("stop", "amax"), "stop", "scale_grad", RECIPE_LEVEL,
             "it acts on the forward quantizers' derivative as a whole"),
        Axis("high_precision", "blocks kept in bf16 besides the task's stem and head: first/last "
             "N blocks (GPT blocks, CNN stages, U-Net levels) or a kind of layer",
             _named("none", "first1", "last1", "last2", "first1_last1", *KINDS), "none",
             "high_precision", RECIPE_LEVEL, "it chooses layers, not operands"),
        Axis("optimizer", "the optimiser: adamw (AdamW; Adam where the task has no weight decay) or "
             "stable_spam (Stable-SPAM: Adam after adaptive spike clipping and gradient-norm "
             "scaling, with periodic momentum resets)", _named("adamw", "stable_spam"), "adamw",
             "optimizer", RECIPE_LEVEL, "it updates the whole model"),
        Axis("loss_scale", "loss scaling before backward, undone before the optimiser step: none, "
             "or dynamic (2^16, halved on a non-finite gradient, doubled after 2000 finite steps)",
             _named("none", "dynamic"), "none", "loss_scale", RECIPE_LEVEL,
             "it scales the loss, hence every gradient of the model"),
        Axis("gemm_model", "how the GEMMs sum their products: exact (a high-precision matmul) "
             "or blackwell (an FP4 tensor core's float32 partials per 64, added rounding toward "
             "zero)", _named("exact", "blackwell"), "exact", "gemm_model", RECIPE_LEVEL,
             "it models the GEMM's accumulation, not an operand"),
    )
}


@dataclass(frozen=True)
class Key:
    """An axis placed on a scope, as a sweep names it: ``rounding@dy``, or ``rounding`` (all)."""

    axis: Axis
    scope: str = ALL
    operands: tuple[str, ...] = field(init=False)
    name: str = field(init=False)  # as a sweep file writes it

    def __post_init__(self) -> None:
        object.__setattr__(self, "operands", SCOPES[self.scope])
        name = self.axis.name if self.scope == ALL else f"{self.axis.name}{SCOPE_SEPARATOR}{self.scope}"
        object.__setattr__(self, "name", name)


@functools.lru_cache(maxsize=None)  # a sweep parses the same few keys for every combination
def parse_key(text: str) -> Key:
    """``AXIS``, ``AXIS@SCOPE`` or ``AXIS__SCOPE`` as a Key; ValueError says what is wrong."""
    name, scope = text, ALL
    for separator in (SCOPE_SEPARATOR, COMMAND_LINE_SEPARATOR):
        if separator in text:
            name, _, scope = text.partition(separator)
            break
    if name not in AXES:
        raise ValueError(f"unknown axis {name!r}; valid: {list(AXES)}")
    if scope == ALL and text != name:
        raise ValueError(f"{text!r}: write {name!r} for every operand")
    AXES[name].check_scope(scope)
    return Key(AXES[name], scope)


def canonical(values: Mapping[str, Any]) -> dict[str, str]:
    """``values`` (keys in any spelling, options as names or values) as key name -> option name;
    ValueError names the key at fault."""
    resolved: dict[str, str] = {}
    for text, value in values.items():
        try:
            key = parse_key(text)
            option = key.axis.option(value)
        except ValueError as error:
            raise ValueError(f"{text}: {error}") from None
        if key.name in resolved and resolved[key.name] != option:
            raise ValueError(f"{key.name} is set twice, to {resolved[key.name]!r} and {option!r}")
        resolved[key.name] = option
    return resolved


def _option_on(axis: Axis, target: str, keys: list[tuple[Key, str]]) -> str:
    """The option ``axis`` takes on ``target`` (an operand, or ``all`` for a recipe-level axis):
    the narrowest covering key's, else the default."""
    covering = [
        (len(key.operands), key, option)
        for key, option in keys
        if target in key.operands or target == key.scope
    ]
    if not covering:
        return axis.default
    width = min(w for w, _, _ in covering)
    narrowest = {option: key.name for w, key, option in covering if w == width}
    if len(narrowest) > 1:
        names = " and ".join(f"{name}={option}" for option, name in narrowest.items())
        raise ValueError(f"{names} both set {axis.name} on {target}: leave one out")
    return next(iter(narrowest))


def resolve(values: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    """Axis name -> operand (or ``all`` for recipe-level axes) -> option name, for every axis."""
    keys: dict[str, list[tuple[Key, str]]] = {name: [] for name in AXES}
    for name, option in canonical(values).items():
        key = parse_key(name)
        keys[key.axis.name].append((key, option))
    resolved = {}
    for name, axis in AXES.items():
        targets = OPERANDS if axis.per_operand else RECIPE_LEVEL
        given = keys[name]
        if len(given) == 1 and given[0][0].scope == ALL:  # the common case: one unscoped option
            resolved[name] = dict.fromkeys(targets, given[0][1])
        else:
            resolved[name] = {target: _option_on(axis, target, given) for target in targets}
    return resolved


def recipe_fields(values: Mapping[str, Any]) -> dict[str, Any]:
    """The Recipe constructor's arguments that axis ``values`` give: per operand None or the
    QuantSpec fields, then the recipe-level fields."""
    chosen = resolve(values)
    fields: dict[str, Any] = {}
    for operand in OPERANDS:
        quantized = AXES["quantize"].options[chosen["quantize"][operand]]
        fields[operand] = None if not quantized else {
            field: value
            for name, axis in AXES.items() if axis.per_operand and name != "quantize"
            for field, value in axis.fields(chosen[name][operand]).items()
        }
    for name, axis in AXES.items():
        if not axis.per_operand:
            fields.update(axis.fields(chosen[name][ALL]))
    return fields


def recorded(values: Mapping[str, Any], key_names: Sequence[str]) -> dict[str, str]:
    """The option under each key: the one ``values`` give it, else the option its operands
    resolve to (``MIXED`` if they differ). What the store records for a recipe."""
    given = canonical(values)
    chosen = resolve(given) if set(key_names) - set(given) else {}
    options = {}
    for name in key_names:
        if name in given:
            options[name] = given[name]
            continue
        key = parse_key(name)
        on_scope = {chosen[key.axis.name][t] for t in (key.operands if key.axis.per_operand else RECIPE_LEVEL)}
        options[name] = on_scope.pop() if len(on_scope) == 1 else MIXED
    return options


def defaults() -> dict[str, str]:
    """Every axis at its default, unscoped: the values a trial takes on axes a sweep leaves alone."""
    return {name: axis.default for name, axis in AXES.items()}


SCOPE_HELP = (
    "Scopes (AXIS@SCOPE in a sweep file, AXIS__SCOPE or AXIS@SCOPE on the command line): none = all "
    "six operands; fwd, dgrad, wgrad = one GEMM's two operands; bwd = both backward GEMMs; x, w, dy "
    "= the two operands that tensor is; fwd_x, fwd_w, dgrad_dy, dgrad_w, wgrad_dy, wgrad_x = one "
    "operand. The narrowest scope that covers an operand decides."
)


def _scopes_text(axis: Axis) -> str:
    if not axis.per_operand:
        return "none (the whole recipe)"
    if axis.scopes == tuple(SCOPES):
        return "any"
    return "none, " + ", ".join(scope for scope in axis.scopes if scope != ALL) + " (whole GEMMs only)"


def listing() -> list[str]:
    """``fp4sweep axes``: every axis with its meaning, scopes and options (the default starred)."""
    lines = [SCOPE_HELP, ""]
    for axis in AXES.values():
        options = ", ".join(f"{name}*" if name == axis.default else name for name in axis.options)
        lines += [f"{axis.name}: {axis.meaning}", f"  scopes: {_scopes_text(axis)}", f"  options: {options}"]
    return lines
