"""Helpers for the task tests: a task's size preset from conf/, and skipping when data is absent."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from fp4sweep.tasks import datasets
from fp4sweep.tasks.base import build_config

CONF_TASK = Path(__file__).resolve().parents[2] / "conf" / "task"

# What each data set needs on disk, relative to the data directory.
_DATA_FILES = {
    "fashion_mnist": "fashion_mnist/train-labels-idx1-ubyte.gz",
    "mnist": "mnist/train-labels-idx1-ubyte",
    "shakespeare": datasets.SHAKESPEARE_FILE,
}


def task_config(module, size: str = "tiny", **overrides):
    """``module.Config`` built from ``conf/task/<NAME>.yaml``'s ``sizes[size]``, as the sweep does."""
    conf = OmegaConf.to_container(OmegaConf.load(CONF_TASK / f"{module.NAME}.yaml"))
    return build_config(module.Config, {**conf["sizes"][size], **overrides})


def require_data(name: str) -> None:
    """Skip the calling test, saying how to get the data, if data set ``name`` was not fetched."""
    root = datasets.resolve_data_dir()
    if not (root / _DATA_FILES[name]).exists():
        pytest.skip(f"{name} is not in {root.resolve()}: run `{datasets.FETCH_COMMAND} {name}`")
