"""The shape of one linear layer's GEMMs, the unit that the overhead model prices."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GemmShape:
    """One linear layer applied to ``m`` rows: ``y[m, n] = x[m, k] @ w[n, k].T``.

    The layer's three GEMMs reduce over different axes: the forward over ``k``, the input
    gradient ``dx = dy @ w`` over ``n``, the weight gradient ``dw = dy.T @ x`` over ``m``.
    ``count`` is how many times the layer runs per training step (e.g. layers sharing a shape).
    ``high_precision`` marks a layer that a layer policy keeps in bf16: its GEMMs run at the BF16
    rate with no quantizer, whatever the recipe says.
    """

    m: int
    k: int
    n: int
    count: int = 1
    name: str = ""
    high_precision: bool = False

    def __post_init__(self) -> None:
        for field in ("m", "k", "n", "count"):
            value = getattr(self, field)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"GemmShape.{field} must be a positive int, got {value!r}")

    @property
    def flops_per_pass(self) -> int:
        """Multiply-adds of one of the three GEMMs, counted as 2 flops each."""
        return 2 * self.m * self.k * self.n * self.count
