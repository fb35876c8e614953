"""The Hydra config tree (conf/) and the validated settings of one command.

Hydra is used through its compose API only: no ``@hydra.main``, no multirun, no ``outputs/``.
A command composes ``conf/config.yaml`` once with the user's overrides. The technique axes are
not config groups: their names, options and scopes come from one declaration
(``fp4sweep.quant.axes``), and command-line overrides of ``axes.KEY`` and ``quant.KEY`` are
applied here, after Hydra, so that scoped keys (``axes.rounding@dy=[rne,sr]``, or
``axes.rounding__dy=...``) and misspelt ones get one clear line instead of Hydra's advice.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from fp4sweep.quant.axes import AXES, SCOPE_SEPARATOR, Key, parse_key, recorded

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
        """Compose a config; return it as plain values, with Hydra's record of group choices.

        Overrides of ``axes.KEY`` and ``quant.KEY`` are applied to the composed values (see the
        module's docstring); a group override names a choice that exists."""
        # Hydra's state is global; conf/ is the same for every tree (extra dirs come per call).
        if not GlobalHydra.instance().is_initialized():
            initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3")
        hydra_overrides, axis_overrides = _split_axis_overrides(overrides)
        for override in hydra_overrides:
            self._check_group_choice(override)
        try:
            cfg = compose(config_name, hydra_overrides + self._searchpath, return_hydra_config=True)
            choices = OmegaConf.to_container(cfg.hydra.runtime.choices)
            with open_dict(cfg):
                del cfg["hydra"]
            values = OmegaConf.to_container(cfg, resolve=True)
        except (HydraException, OmegaConfBaseException, yaml.YAMLError) as error:
            raise SweepError(_hydra_message(error)) from None
        except UnicodeDecodeError as error:
            raise SweepError(f"a config file is not UTF-8 text ({error.reason} at byte {error.start})") from None
        for node, key, value in axis_overrides:
            mapping = values.setdefault(node, {})
            if not isinstance(mapping, dict):
                raise SweepError(f"{node}: expected a mapping, got {mapping!r}")
            _set_axis_key(mapping, key, value)
        return values, {k: v for k, v in choices.items() if not k.startswith("hydra/")}

    def _check_group_choice(self, override: str) -> None:
        """``sweep=NAME`` / ``task=NAME`` / ``logger=NAME`` name a file of that group, and it
        reads as text: one line for a typo instead of Hydra's listing."""
        key, _, choice = override.lstrip("+~").partition("=")
        if key not in _GROUPS or not choice or choice == "null":
            return
        self.check_choice(key, key, choice)
        for folder in self.dirs:
            path = folder / key / f"{choice}.yaml"
            if path.is_file():
                try:
                    path.read_text(encoding="utf-8")
                except UnicodeDecodeError as error:
                    raise SweepError(
                        f"{path}: not UTF-8 text ({error.reason} at byte {error.start})"
                    ) from None

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
        """One option of a group, composed once: e.g. ``{"task": {"name": "gpt", ...}}``."""
        key = (group, option)
        if key not in self._nodes:
            self._nodes[key], _ = self.compose(None, [f"+{group}={option}"])
        return self._nodes[key]


_GROUPS = ("sweep", "task", "logger")  # the config groups a command line chooses from
_AXIS_NODES = ("axes", "quant")


def _split_axis_overrides(overrides: Sequence[str]) -> tuple[list[str], list[tuple[str, str, Any]]]:
    """The overrides for Hydra, and those of ``axes.KEY`` / ``quant.KEY`` as (node, key, value)
    with the key canonical and the value Hydra's parse (None: delete the key)."""
    hydra_overrides, axis_overrides = [], []
    for text in overrides:
        key = text.lstrip("+~").partition("=")[0]
        node, dot, _ = key.partition(".")
        if node not in _AXIS_NODES or not dot:
            hydra_overrides.append(text)
            continue
        try:
            (parsed,) = OverridesParser.create().parse_overrides([text])
        except HydraException as error:
            raise SweepError(f"{text}: {_hydra_message(error)}") from None
        name = parsed.key_or_group.partition(".")[2]
        if parsed.package:
            name += SCOPE_SEPARATOR + parsed.package
        try:
            canonical = parse_key(name).name
        except ValueError as error:
            raise SweepError(f"{node}.{name}: {error}") from None
        axis_overrides.append((node, canonical, None if parsed.is_delete() else parsed.value()))
    return hydra_overrides, axis_overrides


def _set_axis_key(mapping: dict[str, Any], key: str, value: Any) -> None:
    """Set (value None: delete) ``key`` in an axes or quant mapping, whichever spelling it has there."""
    for spelt in [k for k in mapping if isinstance(k, str) and _canonical_or_self(k) == key]:
        del mapping[spelt]
    if value is not None:
        mapping[key] = value


def _canonical_or_self(text: str) -> str:
    try:
        return parse_key(text).name
    except ValueError:
        return text


@dataclass(frozen=True)
class RaySettings:
    address: str | None
    num_cpus: int | None
    max_in_flight: int | None
    max_retries: int


@dataclass(frozen=True)
class Constraint:
    """Leave out every combination whose option on each named key is one of the listed ones (a
    key the sweep does not cross counts with the option its operands take)."""

    reason: str
    choices: dict[str, frozenset[str]]

    def excludes(self, combination: dict[str, str]) -> bool:
        if self.choices.keys() <= combination.keys():  # the common case: no resolving needed
            return all(combination[key] in allowed for key, allowed in self.choices.items())
        options = recorded(combination, list(self.choices))
        return all(options[key] in allowed for key, allowed in self.choices.items())


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
    "ladder",  # validated and run by fp4sweep.sweep.rungs and .ladder; a grid ignores it
}  # fmt: skip
_RAY_KEYS = {"address", "num_cpus", "max_in_flight", "max_retries"}
DEVICES = ("auto", "cpu", "cuda")


SEED_LIMIT = 2**63  # seeds are stored as int64


def load_settings(tree: ConfigTree, overrides: Sequence[str]) -> RunSettings:
    """Compose conf/config.yaml with the command-line overrides and validate every value."""
    cfg, choices = tree.compose("config", overrides)
    sweep = choices.get("sweep")
    where = f"sweep {sweep!r}" if sweep else "config"
    _check_keys(where, cfg, _RUN_KEYS)
    _check_keys("ray", cfg["ray"], _RAY_KEYS)

    if cfg["device"] not in DEVICES:
        raise SweepError(f"device: unknown device {cfg['device']!r}; valid: {list(DEVICES)}")
    ray = cfg["ray"]
    for key in ("num_cpus", "max_in_flight"):
        if ray[key] is not None:
            _check_int(f"ray.{key}", ray[key], minimum=1)
    _check_int("ray.max_retries", ray["max_retries"], minimum=0)

    axes = _axis_lists("axes", cfg["axes"])
    # `quant.KEY=OPTION` narrows that key (or fixes one the sweep does not cross).
    axes.update(_axis_lists("quant", {k: v for k, v in _mapping("quant", cfg["quant"]).items() if v is not None}))

    task_node = cfg.get("task")
    tasks = [tree.check_choice("tasks", "task", name) for name in _as_list("tasks", cfg["tasks"])]
    if task_node is not None:
        tasks = [task_node["name"]]

    seeds = [_check_int("seeds", seed, minimum=0, limit=SEED_LIMIT) for seed in _as_list("seeds", cfg["seeds"])]
    repeated = sorted({seed for seed in seeds if seeds.count(seed) > 1})
    if repeated:
        raise SweepError(f"seeds: {repeated} listed more than once; each seed is one run of every trial")
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
        constraints=[_constraint(i, c) for i, c in enumerate(cfg["constraints"] or [])],
    )


def _axis_lists(where: str, given: Any) -> dict[str, list[str]]:
    """An ``axes`` or ``quant`` mapping as canonical key -> option names, each checked."""
    lists: dict[str, list[str]] = {}
    for text, values in _mapping(where, given).items():
        key = _axis_key(f"{where}.{text}", text)
        listed = _as_list(f"{where}.{text}", values)
        if not listed:
            raise SweepError(f"{where}.{text}: an empty list leaves the axis no option; list one or leave it out")
        if key.name in lists:
            raise SweepError(f"{where}.{text}: {key.name} is given twice (as AXIS@SCOPE and AXIS__SCOPE)")
        lists[key.name] = [_axis_option(f"{where}.{text}", key.axis.name, value) for value in listed]
    return lists


def _axis_key(where: str, text: Any) -> Key:
    try:
        return parse_key(str(text))
    except ValueError as error:
        raise SweepError(f"{where}: {error}") from None


def _axis_option(where: str, axis: str, value: Any) -> str:
    try:
        return AXES[axis].option(value)
    except ValueError as error:
        raise SweepError(f"{where}: {error}") from None


def _task_params(tree: ConfigTree, given: Any) -> dict[str, dict[str, Any]]:
    """``params``: task family -> parameters that replace its size preset's (checked when trials
    are built); a family the sweep does not run is allowed, so that ``task=NAME`` can narrow it."""
    _check_keys("params", given, set(tree.options("task")))
    for name, values in given.items():
        if not isinstance(values, dict):
            raise SweepError(f"params.{name}: expected a mapping of {name}'s parameters, got {values!r}")
    return given


def _constraint(index: int, item: Any) -> Constraint:
    where = f"constraints[{index}]"
    if not isinstance(item, dict) or not isinstance(item.get("reason"), str):
        raise SweepError(f"{where}: expected a mapping with a `reason` and axis: [choices], got {item!r}")
    named = {k: v for k, v in item.items() if k != "reason"}
    if not named:
        raise SweepError(f"{where}: names no axis; valid axes: {list(AXES)}")
    return Constraint(
        reason=item["reason"],
        choices={key: frozenset(options) for key, options in _axis_lists(where, named).items()},
    )


def _mapping(where: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise SweepError(f"{where}: expected a mapping, got {value!r}")
    return value


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


def _check_int(where: str, value: Any, minimum: int, limit: int | None = None) -> int:
    too_big = limit is not None and isinstance(value, int) and value >= limit
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum or too_big:
        bound = f" and < {limit}" if limit is not None else ""
        raise SweepError(f"{where}: expected an integer >= {minimum}{bound}, got {value!r}")
    return value


def _check_seconds(where: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise SweepError(f"{where}: expected a finite number of seconds >= 0, got {value!r}")
    return float(value)


def _check_str(where: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise SweepError(f"{where}: expected a non-empty string, got {value!r}")
    return value
