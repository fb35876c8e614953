"""The settings of a multi-fidelity ladder: the ``ladder`` block of the config.

``ladder.rungs`` lists the fidelities a sweep climbs, lowest first; each rung sets any of
``size`` (a size preset of every task), ``steps`` (the training steps of every task) and
``params`` (task -> parameters, as the sweep's own ``params``: e.g. ``{classification:
{epochs: 2}}``), over what the sweep sets. ``ladder.keep`` is the budget of each rung after the
first, in recipes: a count, or a share of the recipes the rung below ran; one value for every
rung, or a list with one per rung after the first. ``ladder.upto`` stops a command after that
many rungs. An empty ``rungs`` list (the default) runs
the sweep as a grid. ``fp4sweep.sweep.ladder`` runs a ladder; the block is taken out of the
composed config here; the rest of the config is validated as for any sweep.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from fp4sweep.sweep.config import ConfigTree, SweepError, _check_int

_KEYS = {"rungs", "keep", "upto"}
_RUNG_KEYS = {"size", "steps", "params"}


@dataclass(frozen=True)
class Rung:
    """One fidelity: what it sets over the sweep's size and parameters (None / empty: nothing)."""

    size: str | None = None
    steps: int | None = None
    params: dict[str, dict[str, Any]] = field(default_factory=dict)

    def describe(self) -> str:
        parts = [f"size {self.size}"] if self.size else []
        parts += [f"{self.steps} steps"] if self.steps is not None else []
        parts += [f"{task}: {values}" for task, values in self.params.items()]
        return ", ".join(parts)


@dataclass(frozen=True)
class LadderSettings:
    rungs: list[Rung]
    keep: list[int | float]  # the budget of each rung after the first
    # How many rungs this command climbs (None: all): the lower rungs on one machine, the rest on
    # another, with the store carried over.
    upto: int | None = None

    def describe(self) -> str:
        budgets = [_budget_text(keep) for keep in self.keep]
        steps = [self.rungs[0].describe()] + [
            f"{rung.describe()} (at most {budget})" for rung, budget in zip(self.rungs[1:], budgets)
        ]
        return f"a ladder of {len(self.rungs)} rungs: " + " -> ".join(steps)


def _budget_text(keep: int | float) -> str:
    return f"{keep} recipes" if isinstance(keep, int) else f"{keep:.0%} of the recipes below"


def split_ladder(tree: ConfigTree, overrides: Sequence[str]) -> tuple[LadderSettings | None, list[str]]:
    """The validated ``ladder`` block of the composed config (None when it lists no rung), and
    the overrides that compose the rest of the config without it."""
    cfg, _ = tree.compose("config", overrides)
    return parse_ladder(cfg.get("ladder") or {}), [*overrides, "~ladder"]


def parse_ladder(node: Any) -> LadderSettings | None:
    """LadderSettings from plain values (None for no rungs); a SweepError names the bad key."""
    if not isinstance(node, dict):
        raise SweepError(f"ladder: expected a mapping of {sorted(_KEYS)}, got {node!r}")
    unknown = sorted(set(node) - _KEYS)
    if unknown:
        raise SweepError(f"ladder: unknown key(s) {unknown}; valid: {sorted(_KEYS)}")
    given = node.get("rungs") or []
    if not isinstance(given, list):
        raise SweepError(f"ladder.rungs: expected a list of rungs, got {given!r}")
    if not given:
        return None
    if len(given) < 2:
        raise SweepError("ladder.rungs: a ladder needs at least two rungs (one is a plain sweep)")
    rungs = [_rung(i, item) for i, item in enumerate(given)]
    for i, rung in enumerate(rungs):
        if rung in rungs[:i]:
            raise SweepError(f"ladder.rungs[{i}]: the same fidelity as rung {rungs.index(rung)}")
    keep = node.get("keep")
    listed = keep if isinstance(keep, list) else [keep] * (len(rungs) - 1)
    if len(listed) != len(rungs) - 1:
        raise SweepError(
            f"ladder.keep: {len(listed)} budgets for {len(rungs) - 1} rungs after the first; give one "
            "for each, or a single one for all"
        )
    upto = node.get("upto")
    if upto is not None:
        upto = _check_int("ladder.upto", upto, minimum=1)
        if upto > len(rungs):
            raise SweepError(f"ladder.upto: {upto} rungs to climb, but the ladder has {len(rungs)}")
    return LadderSettings(rungs, [_keep(f"ladder.keep[{i}]", value) for i, value in enumerate(listed)], upto)


def _rung(index: int, item: Any) -> Rung:
    where = f"ladder.rungs[{index}]"
    if not isinstance(item, dict) or not item:
        raise SweepError(f"{where}: expected a mapping of some of {sorted(_RUNG_KEYS)}, got {item!r}")
    unknown = sorted(set(item) - _RUNG_KEYS)
    if unknown:
        raise SweepError(f"{where}: unknown key(s) {unknown}; valid: {sorted(_RUNG_KEYS)}")
    size = item.get("size")
    if size is not None and (not isinstance(size, str) or not size):
        raise SweepError(f"{where}.size: expected a size preset's name, got {size!r}")
    steps = item.get("steps")
    if steps is not None:
        steps = _check_int(f"{where}.steps", steps, minimum=1)
    params = item.get("params") or {}
    if not isinstance(params, dict) or not all(isinstance(v, dict) for v in params.values()):
        raise SweepError(f"{where}.params: expected task -> mapping of its parameters, got {params!r}")
    return Rung(size=size, steps=steps, params=params)


def _keep(where: str, value: Any) -> int | float:
    if isinstance(value, float) and 0 < value < 1:
        return value
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    raise SweepError(f"{where}: expected a number of recipes >= 1 or a share between 0 and 1, got {value!r}")
