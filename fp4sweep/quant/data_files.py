"""The cost model's data: one YAML file per machine (``conf/hardware/``) or target workload
(``conf/target/``), found by name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def names(kind: str) -> list[str]:
    """The names of the files of ``conf/KIND/``."""
    return sorted(path.stem for path in (CONF_DIR / kind).glob("*.yaml"))


def read(kind: str, name: str, what: str) -> tuple[Path, Any]:
    """``conf/KIND/NAME.yaml`` and its parsed contents; an unknown name is a ValueError that
    lists the valid ones (``what`` names the kind in it)."""
    path = CONF_DIR / kind / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"unknown {what} {name!r}; valid: {names(kind)}")
    return path, yaml.safe_load(path.read_text())
