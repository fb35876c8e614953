"""What every task family shares: its result type, config building and divergence detection.

A task is a module in this package with

- ``NAME``: the task family's name (``"regression"``, ``"classification"``, ...);
- ``Config``: a frozen dataclass of the task's parameters, built with ``build_config``;
- ``gemm_shapes(config, policy="none") -> list[GemmShape]``: the GEMMs of one training step
  through the layers it quantizes, those that the recipe's high-precision layer ``policy``
  keeps in bf16 marked ``high_precision`` (``training.LayerLayout`` says what a policy chooses
  from: the task's blocks and kinds of layer);
- ``train(config, recipe, seed, device) -> TaskResult``.

Size presets and the Ray resources of one trial are configuration: they live in
``conf/task/NAME.yaml``. Tasks receive plain, validated values; they never read Hydra or the
results store.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fp4sweep.quant.gemm import GemmShape
from fp4sweep.results.quality import BLOWUP, diverged

ConfigT = TypeVar("ConfigT")


@dataclass
class TaskResult:
    """What one training run returns to the sweep engine.

    ``metrics`` holds final values; ``val_loss`` is always present and is the quality metric the
    reports compare against the bf16 baseline. ``curve`` holds one dict per logged step, each with
    an int ``step`` and float metrics. ``artifacts`` are small files (name -> bytes) kept beside
    the trial's results, e.g. a sample grid image.
    """

    metrics: dict[str, float]
    curve: list[dict[str, float]] = field(default_factory=list)
    diverged: bool = False
    gemm_shapes: list[GemmShape] = field(default_factory=list)
    artifacts: dict[str, bytes] = field(default_factory=dict)


def build_config(config_type: type[ConfigT], params: dict[str, Any]) -> ConfigT:
    """Build a task's config dataclass from plain values, naming any unknown or mistyped key."""
    fields = {f.name: f for f in dataclasses.fields(config_type)}
    unknown = sorted(set(params) - set(fields))
    if unknown:
        raise ValueError(
            f"unknown {config_type.__qualname__} parameter(s) {unknown}; valid: {sorted(fields)}"
        )
    values = {}
    for name, value in params.items():
        expected = fields[name].type
        values[name] = _coerce(f"{config_type.__qualname__}.{name}", value, expected)
    return config_type(**values)


def _coerce(where: str, value: Any, expected: Any) -> Any:
    """Accept what YAML gives for a declared type (an int for a float, a list for a tuple)."""
    kind = expected if isinstance(expected, type) else str(expected)
    if kind in (float, "float"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where} must be a number, got {value!r}")
        return float(value)
    if kind in (int, "int"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where} must be an integer, got {value!r}")
        return value
    if kind in (bool, "bool"):
        if not isinstance(value, bool):
            raise ValueError(f"{where} must be true or false, got {value!r}")
        return value
    if kind in (str, "str"):
        if not isinstance(value, str):
            raise ValueError(f"{where} must be a string, got {value!r}")
        return value
    if isinstance(value, list):
        return tuple(value)
    return value


class DivergenceGuard:
    """Flags a run as diverged by ``fp4sweep.results.quality.diverged``: a loss that is not finite
    or grows past ``blowup`` times the run's first loss.

    A diverged run is a result (the recipe failed to train), not an error: the task stops early
    and returns ``TaskResult(diverged=True)``.
    """

    def __init__(self, blowup: float = BLOWUP) -> None:
        self.blowup = blowup
        self.first: float | None = None

    def diverged(self, loss: float) -> bool:
        if self.first is None and math.isfinite(loss):
            self.first = loss
            return False
        return diverged(loss, self.first, self.blowup)
