"""Loss scaling: the loss is multiplied by a scale S before backward, so every gradient is S times
larger where the backward quantizers see it, and divided by S again before the optimiser step.

Why FP4 may want it: a block's scale is its amax over the element format's maximum, but no
smaller than the scale format's smallest value (2^-9 for UE4M3), so the elements of a block of
gradients far below it round to zero. A per-tensor fp32 scale avoids this; a loss scale is the
older remedy (mixed-precision training in FP16), and the two are crossed by the axes.

``dynamic`` is ``torch.amp.GradScaler`` at its defaults: S starts at 2^16, is halved and the
step skipped when a gradient is not finite, and doubled after 2000 finite steps in a row. FP4
quantizers saturate instead of overflowing (a block's elements clamp to the format's maximum,
and a scale beyond its format clamps), so the back-off reacts only to overflow in what stays in
high precision; on runs shorter than 2000 steps without overflow, S stays at 2^16. Powers of
two keep the scaling exact in every format until something saturates or underflows.
"""

from __future__ import annotations

import torch

from fp4sweep.quant.recipe import LOSS_SCALES


def loss_scaler(policy: str, device: torch.device) -> torch.amp.GradScaler:
    """The scaler that ``fit`` runs backward through; ``none`` gives one that passes everything
    through unchanged (scale 1, no checks)."""
    if policy not in LOSS_SCALES:
        raise ValueError(f"unknown loss_scale {policy!r}; valid: {list(LOSS_SCALES)}")
    return torch.amp.GradScaler(device.type, enabled=policy == "dynamic")
