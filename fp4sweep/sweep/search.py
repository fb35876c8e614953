"""The settings of an adaptive search: the ``search`` block of a sweep file.

A sweep file with a ``search:`` block (conf/sweep/adaptive.yaml) is searched by an Optuna study
instead of run in full: see ``fp4sweep.sweep.adaptive``. The block is taken out of the composed
config here, so that the rest of the config is validated as for any sweep.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fp4sweep.sweep.config import ConfigTree, SweepError, _check_int

SAMPLERS = ("tpe", "nsga2", "random")


@dataclass(frozen=True)
class SearchSettings:
    n_trials: int  # distinct recipes the study evaluates (read from the store or trained)
    sampler: str  # one of SAMPLERS
    startup: int  # recipes drawn at random before the sampler models (TPE), NSGA-II's population
    seed: int | None  # the sampler's random seed (None: a fresh one each run)
    study: str | None  # the study's name in the journal (None: one derived from the search space)
    stall_limit: int  # proposals in a row that bring no new recipe before the search stops

    def describe(self) -> str:
        startup = {
            "tpe": f"{self.startup} at random first",
            "nsga2": f"{self.startup} per generation",
            "random": "every one at random",
        }[self.sampler]
        return f"{self.n_trials} recipes, {self.sampler} sampler ({startup})"


_KEYS = {"n_trials", "sampler", "startup", "seed", "study", "stall_limit"}


def split_search(tree: ConfigTree, overrides: Sequence[str]) -> tuple[SearchSettings | None, list[str]]:
    """The validated ``search`` block of the composed config (None without one), and the
    overrides that compose the rest of the config without it."""
    cfg, _ = tree.compose("config", overrides)
    if "search" not in cfg:
        return None, list(overrides)
    return parse_search(cfg["search"]), [*overrides, "~search"]


def parse_search(node: Any) -> SearchSettings:
    """SearchSettings from plain values; a SweepError names the offending key and the choices."""
    if not isinstance(node, dict):
        raise SweepError(f"search: expected a mapping of {sorted(_KEYS)}, got {node!r}")
    for problem, keys in (("unknown", set(node) - _KEYS), ("missing", _KEYS - set(node))):
        if keys:
            raise SweepError(f"search: {problem} key(s) {sorted(keys)}; valid: {sorted(_KEYS)}")
    if node["sampler"] not in SAMPLERS:
        raise SweepError(f"search.sampler: unknown sampler {node['sampler']!r}; valid: {list(SAMPLERS)}")
    seed = node["seed"]
    if seed is not None:
        seed = _check_int("search.seed", seed, minimum=0)
    study = node["study"]
    if study is not None and (not isinstance(study, str) or not study):
        raise SweepError(f"search.study: expected a non-empty name or null, got {study!r}")
    return SearchSettings(
        n_trials=_check_int("search.n_trials", node["n_trials"], minimum=1),
        sampler=node["sampler"],
        # NSGA-II needs two parents to cross.
        startup=_check_int("search.startup", node["startup"], minimum=2 if node["sampler"] == "nsga2" else 0),
        seed=seed,
        study=study,
        stall_limit=_check_int("search.stall_limit", node["stall_limit"], minimum=1),
    )
