"""Delayed tensor scale: the tensor amax that tensor scaling divides by, taken from past steps.

Tensor scaling (``scaling.py``) sets the global encode scale from the tensor amax ``A``, the
largest finite magnitude of the transformed operand. ``Recipe.amax_policy`` says which ``A``
each tensor-scaled operand of a layer uses at a training step:

- "current" (default): its own amax at this step; no state.
- "hold": sample-and-hold, as the UE5M3 authors' delayed scale (their D = 50): the amax
  measured at steps 0, D, 2D, ... (D = ``Recipe.amax_window``) is held until the next refresh.
- "max": TransformerEngine's FP8 ``DelayedScaling`` with ``amax_compute_algo="max"``: the
  largest amax of the previous H steps (H = ``amax_window``, TE's ``amax_history_len``).
- "most_recent": ``DelayedScaling`` with ``amax_compute_algo="most_recent"``: the previous
  step's amax.

The first step, with nothing recorded yet, uses its own amax (TE would start from scale 1 on
an empty history: a choice of ours). ``Recipe.amax_margin`` m multiplies the amax used by
``2**m`` (TE's ``margin``: its scale divided by ``2**m``; exact in float32). Each operand's
history counts the steps of that operand, advancing once per training-mode forward (backward
for the gradient operands); evaluation-mode calls read the state without changing it.

A stale ``A`` below the tensor's own puts the largest block scales above the tensor-scale
target. Where the target is the scale format's max (the default; UE4M3's 448 in NVFP4) they
saturate there, and the elements of those blocks beyond ``E`` times their scale saturate at
``E`` (the quantizer's ordinary saturation); a lower target (``tensor_target_scale``, e.g. 448
for UE5M3, whose max is 61440) leaves the block scales headroom that absorbs such elements.
``clipped`` counts, per operand for the last training step, the finite elements whose
transformed magnitude exceeds the ``A`` used: the elements beyond the stale scale (0 whenever
``A`` is at least the tensor's own); ``clipped_elements(model)`` sums it over a model.
``beyond`` and ``seen`` accumulate, per operand over every training step, those elements and
all the elements quantized with a delayed amax, on the device; ``beyond_amax_fraction(model)``
reads their ratio over a model in one transfer, the metric the tasks log at each evaluation.

The state lives in buffers, so ``state_dict`` carries it across a checkpoint: ``history``
(per operand, the held amax for "hold", else the ring of the last H amaxes), ``recorded``
(steps recorded per operand), ``clipped``, ``beyond`` and ``seen``.
"""

from __future__ import annotations

import torch
from torch import nn

from fp4sweep.quant.recipe import OPERANDS, Recipe
from fp4sweep.quant.scaling import finite_amax
from fp4sweep.quant.spec import QuantSpec
from fp4sweep.quant.transforms import apply_transform


class DelayedAmax(nn.Module):
    """The delayed tensor amax of one layer's six operands (see the module docstring)."""

    def __init__(self, recipe: Recipe, device: torch.device | str | None = None) -> None:
        super().__init__()
        if recipe.amax_policy == "current":
            raise ValueError("DelayedAmax needs a delayed amax_policy, got 'current'")
        self.policy, self.margin = recipe.amax_policy, recipe.amax_margin
        self.window = recipe.amax_window
        length = self.window if self.policy == "max" else 1
        operands = len(OPERANDS)
        self.register_buffer("history", torch.zeros(operands, length, device=device))
        self.register_buffer("recorded", torch.zeros(operands, dtype=torch.int64, device=device))
        self.register_buffer("clipped", torch.zeros(operands, dtype=torch.int64, device=device))
        self.register_buffer("beyond", torch.zeros(operands, dtype=torch.int64, device=device))
        self.register_buffer("seen", torch.zeros(operands, dtype=torch.int64, device=device))

    def tensor_amax(self, operand: str, x: torch.Tensor, spec: QuantSpec, axis: int) -> torch.Tensor:
        """The amax (0-d float32) that ``operand``'s tensor scaling uses for ``x`` this step;
        in training mode, also records this step. Everything stays on the device."""
        i = OPERANDS.index(operand)
        t = apply_transform(x.detach(), spec, axis)
        current = finite_amax(t)
        recorded, history = self.recorded[i], self.history[i]
        if self.policy == "hold":
            held = torch.where(recorded % self.window == 0, current, history[0])
            used = held
        else:  # "max" over the ring, or "most_recent" (a ring of one); amaxes are >= 0
            used = torch.where(recorded == 0, current, history.amax())
        if self.margin:
            used = used * 2.0**self.margin
        if self.training:
            if self.policy == "hold":
                history.copy_(held)
            else:
                history.index_copy_(0, (recorded % history.numel()).reshape(1), current.reshape(1))
            self.clipped[i] = ((t.abs() > used) & torch.isfinite(t)).sum()
            self.beyond[i] += self.clipped[i]
            self.seen[i] += t.numel()
            recorded += 1
        return used

    def extra_repr(self) -> str:
        return f"policy={self.policy!r}, window={self.window}, margin={self.margin}"


def clipped_elements(model: nn.Module) -> int:
    """Elements beyond their stale tensor scale at the last training step, over every layer of
    ``model`` with a delayed amax (0 if none has one)."""
    counts = [module.clipped.sum() for module in model.modules() if isinstance(module, DelayedAmax)]
    return int(torch.stack(counts).sum()) if counts else 0


def beyond_amax_fraction(model: nn.Module) -> float | None:
    """Over every training step so far and every layer of ``model`` with a delayed amax: the
    elements beyond the amax their tensor scale used, as a fraction of the elements quantized
    with a delayed amax (None without a delayed amax). One read of the device."""
    states = [module for module in model.modules() if isinstance(module, DelayedAmax)]
    if not states:
        return None
    beyond, seen = torch.stack([torch.stack([s.beyond.sum(), s.seen.sum()]) for s in states]).sum(0).tolist()
    return beyond / seen if seen else 0.0
