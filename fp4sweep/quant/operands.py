"""The six GEMM operands of a linear layer and the scopes that name groups of them.

A linear layer ``y[m, n] = x[m, k] @ w[n, k].T`` runs three GEMMs per training step:

    forward         y  = Q(x) @ Q(w).T      fwd_x, fwd_w         along k
    input grad      dx = Q(dy) @ Q(w)       dgrad_dy, dgrad_w    along n
    weight grad     dw = Q(dy).T @ Q(x)     wgrad_dy, wgrad_x    along m

A scope names the operands a placed technique applies to (``transform@wgrad``, ``rounding@dy``).
"""

from __future__ import annotations

OPERANDS = ("fwd_x", "fwd_w", "dgrad_dy", "dgrad_w", "wgrad_dy", "wgrad_x")
FORWARD_OPERANDS = ("fwd_x", "fwd_w")
BACKWARD_OPERANDS = ("dgrad_dy", "dgrad_w", "wgrad_dy", "wgrad_x")
# The two operands of each GEMM: they must share a transform for the product to stay exact.
GEMM_OPERANDS = {
    "fwd": FORWARD_OPERANDS,
    "dgrad": ("dgrad_dy", "dgrad_w"),
    "wgrad": ("wgrad_dy", "wgrad_x"),
}
ALL = "all"  # the scope of an axis written without one: every operand
# Scope name -> its operands, widest first. Roles: the two operands each tensor appears as.
SCOPES: dict[str, tuple[str, ...]] = {
    ALL: OPERANDS,
    "bwd": BACKWARD_OPERANDS,
    **GEMM_OPERANDS,
    "x": ("fwd_x", "wgrad_x"),
    "w": ("fwd_w", "dgrad_w"),
    "dy": ("dgrad_dy", "wgrad_dy"),
    **{operand: (operand,) for operand in OPERANDS},
}
# Scopes made of whole GEMMs: the only ones a transform may take.
GEMM_SCOPES = (ALL, "bwd", *GEMM_OPERANDS)
