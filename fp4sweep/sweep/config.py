"""The Hydra config tree (conf/) and the validated settings of one command.

Hydra is used through its compose API only: no ``@hydra.main``, no multirun, no ``outputs/``.
A command composes ``conf/config.yaml`` once with the user's overrides; the sweep engine then
composes each option of each technique axis once (``option_node``) and merges them per trial
(see ``plan.py``), which gives the same config as composing ``conf/trial.yaml`` per trial at a
fraction of the cost.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from omegaconf import OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


class SweepError(ValueError):
    """A bad command line, config value or sweep file: the message names the key and the choices."""


def _hydra_message(error: Exception) -> str:
    # Hydra appends its config search path to some messages: noise for a user.
    lines = str(error).splitlines()
    if "Config search path:" in lines:
        lines = lines[: lines.index("Config search path:")]
    return "\n".join(line for line in lines if line.strip())


class ConfigTree:
    """conf/ plus any extra config directories (searched after it), composed through Hydra."""

    def __init__(self, extra_dirs: Sequence[str | os.PathLike[str]] = ()) -> None:
        if not CONF_DIR.is_dir():
            raise SweepError(
                f"the config tree {CONF_DIR} is missing: reinstall fp4sweep "
                "(`pip install .` ships it inside the package)"
            )
        self.dirs = [CONF_DIR] + [Path(d).resolve() for d in extra_dirs]
        for folder in self.dirs[1:]:
            if not folder.is_dir():
                raise SweepError(f"config directory {str(folder)!r} does not exist")
        extra = ",".join(f"file://{d}" for d in self.dirs[1:])
        self._searchpath = [f"hydra.searchpath=[{extra}]"] if extra else []
        self._nodes: dict[tuple[str, str], dict[str, Any]] = {}

    def compose(
        self, config_name: str | None, overrides: Sequence[str]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Compose a config; return it as plain values, with Hydra's record of group choices."""
        # Hydra's state is global; conf/ is the same for every tree (extra dirs come per call).
        if not GlobalHydra.instance().is_initialized():
            initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3")
        try:
            cfg = compose(config_name, list(overrides) + self._searchpath, return_hydra_config=True)
            choices = OmegaConf.to_container(cfg.hydra.runtime.choices)
            with open_dict(cfg):
                del cfg["hydra"]
            values = OmegaConf.to_container(cfg, resolve=True)
        except (HydraException, OmegaConfBaseException, yaml.YAMLError) as error:
            raise SweepError(_hydra_message(error)) from None
        return values, {k: v for k, v in choices.items() if not k.startswith("hydra/")}

    def options(self, group: str) -> list[str]:
        """The choices of a config group: the YAML files in its folder, in every config dir."""
        return sorted({p.stem for d in self.dirs for p in (d / group).glob("*.yaml")})

    def check_choice(self, where: str, group: str, choice: Any) -> str:
        """``choice`` as an option name of ``group``; a SweepError names the valid ones."""
        name = str(choice).lower() if isinstance(choice, bool) else str(choice)
        valid = self.options(group)
        if name not in valid:
            raise SweepError(f"{where}: unknown {group} {choice!r}; valid: {valid}")
        return name

    def option_node(self, group: str, option: str) -> dict[str, Any]:
        """One option of a group, composed once: e.g. ``{"quant": {"block": 16}}``."""
        key = (group, option)
        if key not in self._nodes:
            self._nodes[key], _ = self.compose(None, [f"+{group}={_quote(option)}"])
        return self._nodes[key]

    def trial_defaults(self) -> dict[str, str]:
        """conf/trial.yaml's choice for each of its groups, in its order: the task, then the axes."""
        defaults = OmegaConf.load(CONF_DIR / "trial.yaml").defaults
        entries = [entry for entry in defaults if not isinstance(entry, str)]  # not `_self_`
        return {group: str(option) for entry in entries for group, option in entry.items()}

    def compose_trial(self, choices: dict[str, str], seed: int) -> dict[str, Any]:
        """The reference: one Hydra compose of conf/trial.yaml (slow; tests compare against it)."""
        overrides = [f"{group}={_quote(option)}" for group, option in choices.items()]
        return self.compose("trial", overrides + [f"seed={seed}"])[0]


def _quote(option: str) -> str:
    # Hydra parses `block=16` as an int, but a group override must be a string.
    return f"'{option}'" if not option.isidentifier() else option


@dataclass(frozen=True)
class RaySettings:
    address: str | None
    num_cpus: int | None
    max_in_flight: int | None
    max_retries: int


@dataclass(frozen=True)
class Constraint:
    """Leave out every combination whose choice on each named axis is one of the listed ones."""

    reason: str
    choices: dict[str, frozenset[str]]

    def excludes(self, combination: dict[str, str]) -> bool:
        return all(combination[axis] in allowed for axis, allowed in self.choices.items())


@dataclass(frozen=True)
class RunSettings:
    """Everything one command needs, validated; the only view of the composed config past here."""

    sweep: str | None
    results_dir: Path
    device: str
    ray: RaySettings
    progress_every: float
    flush_seconds: float
    logger: dict[str, Any]
    tasks: list[str]
    size: str | None  # the size preset of every task (None: each task's default)
    params: dict[str, dict[str, Any]]  # task family -> parameters set over its size preset
    task_node: dict[str, Any] | None  # the task chosen with `task=NAME`, with its overrides
    seeds: list[int]
    baseline: str
    presets: list[str]
    axes: dict[str, list[str]]
    constraints: list[Constraint]

    @property
    def has_sweep(self) -> bool:
        return self.sweep is not None


_RUN_KEYS = {
    "results_dir", "device", "ray", "progress_every", "flush_seconds", "logger", "quant", "task",
    "tasks", "size", "params", "seeds", "baseline", "presets", "axes", "constraints",
}  # fmt: skip
_RAY_KEYS = {"address", "num_cpus", "max_in_flight", "max_retries"}
DEVICES = ("auto", "cpu", "cuda")


def load_settings(tree: ConfigTree, overrides: Sequence[str]) -> RunSettings:
    """Compose conf/config.yaml with the command-line overrides and validate every value."""
    cfg, choices = tree.compose("config", overrides)
    sweep = choices.get("sweep")
    where = f"sweep {sweep!r}" if sweep else "config"
    _check_keys(where, cfg, _RUN_KEYS)
    _check_keys("ray", cfg["ray"], _RAY_KEYS)
    axis_names = [g for g in tree.trial_defaults() if g != "task"]
    _check_keys("quant", cfg["quant"], set(axis_names))
    _check_keys("axes", cfg["axes"], set(axis_names))

    if cfg["device"] not in DEVICES:
        raise SweepError(f"device: unknown device {cfg['device']!r}; valid: {list(DEVICES)}")
    ray = cfg["ray"]
    for key in ("num_cpus", "max_in_flight"):
        if ray[key] is not None:
            _check_int(f"ray.{key}", ray[key], minimum=1)
    _check_int("ray.max_retries", ray["max_retries"], minimum=0)

    axes = {
        axis: [tree.check_choice(f"axes.{axis}", axis, c) for c in _as_list(f"axes.{axis}", values)]
        for axis, values in cfg["axes"].items()
    }
    # `quant.AXIS=CHOICE` narrows the axis (or fixes one the sweep does not cross).
    for axis, pinned in cfg["quant"].items():
        if pinned is not None:
            key = f"quant.{axis}"
            axes[axis] = [tree.check_choice(key, axis, c) for c in _as_list(key, pinned)]

    task_node = cfg.get("task")
    tasks = [tree.check_choice("tasks", "task", name) for name in _as_list("tasks", cfg["tasks"])]
    if task_node is not None:
        tasks = [task_node["name"]]

    seeds = _as_list("seeds", cfg["seeds"])
    for seed in seeds:
        _check_int("seeds", seed, minimum=0)
    presets = [_check_str("presets", p) for p in _as_list("presets", cfg["presets"])]
    return RunSettings(
        sweep=sweep,
        results_dir=Path(_check_str("results_dir", cfg["results_dir"])).expanduser().resolve(),
        device=cfg["device"],
        ray=RaySettings(**ray),
        progress_every=_check_seconds("progress_every", cfg["progress_every"]),
        flush_seconds=_check_seconds("flush_seconds", cfg["flush_seconds"]),
        logger=cfg["logger"],
        tasks=tasks,
        size=None if cfg["size"] is None else _check_str("size", cfg["size"]),
        params=_task_params(tree, cfg["params"]),
        task_node=task_node,
        seeds=seeds,
        baseline=_check_str("baseline", cfg["baseline"]),
        presets=presets,
        axes=axes,
        constraints=[_constraint(tree, i, c, axis_names) for i, c in enumerate(cfg["constraints"] or [])],
    )


def _task_params(tree: ConfigTree, given: Any) -> dict[str, dict[str, Any]]:
    """``params``: task family -> parameters that replace its size preset's (checked when trials
    are built); a family the sweep does not run is allowed, so that ``task=NAME`` can narrow it."""
    _check_keys("params", given, set(tree.options("task")))
    for name, values in given.items():
        if not isinstance(values, dict):
            raise SweepError(f"params.{name}: expected a mapping of {name}'s parameters, got {values!r}")
    return given


def _constraint(tree: ConfigTree, index: int, item: Any, axis_names: list[str]) -> Constraint:
    where = f"constraints[{index}]"
    if not isinstance(item, dict) or not isinstance(item.get("reason"), str):
        raise SweepError(f"{where}: expected a mapping with a `reason` and axis: [choices], got {item!r}")
    named = {k: v for k, v in item.items() if k != "reason"}
    _check_keys(where, named, set(axis_names))
    if not named:
        raise SweepError(f"{where}: names no axis; valid axes: {axis_names}")
    choices = {}
    for axis, listed in named.items():
        key = f"{where}.{axis}"
        choices[axis] = frozenset(tree.check_choice(key, axis, c) for c in _as_list(key, listed))
    return Constraint(reason=item["reason"], choices=choices)


def _check_keys(where: str, mapping: Any, valid: set[str]) -> None:
    if not isinstance(mapping, dict):
        raise SweepError(f"{where}: expected a mapping, got {mapping!r}")
    unknown = sorted(set(mapping) - valid)
    if unknown:
        raise SweepError(f"{where}: unknown key(s) {unknown}; valid: {sorted(valid)}")


def _as_list(where: str, value: Any) -> list[Any]:
    if isinstance(value, list):
        return value
    if isinstance(value, (str, int, float, bool)):
        return [value]
    raise SweepError(f"{where}: expected a list, got {value!r}")


def _check_int(where: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise SweepError(f"{where}: expected an integer >= {minimum}, got {value!r}")
    return value


def _check_seconds(where: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise SweepError(f"{where}: expected a number of seconds >= 0, got {value!r}")
    return float(value)


def _check_str(where: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise SweepError(f"{where}: expected a non-empty string, got {value!r}")
    return value
