"""Helpers for the task tests: a task's size preset from conf/, skipping when data is absent,
one CPU thread, and CIFAR-10's file layout."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from fp4sweep.tasks import datasets
from fp4sweep.tasks.base import build_config

CONF_TASK = Path(__file__).resolve().parents[2] / "fp4sweep" / "conf" / "task"

# What each data set needs on disk, relative to the data directory.
_DATA_FILES = {
    "fashion_mnist": "fashion_mnist/train-labels-idx1-ubyte.gz",
    "mnist": "mnist/train-labels-idx1-ubyte",
    "shakespeare": datasets.SHAKESPEARE_FILE,
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Train on one thread, as sweep workers do: on a small, busy machine two threads per run
    oversubscribe the cores and run several times slower. Import this into a test module."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def task_config(module, size: str = "tiny", **overrides):
    """``module.Config`` built from ``conf/task/<NAME>.yaml``'s ``sizes[size]``, as the sweep does."""
    conf = OmegaConf.to_container(OmegaConf.load(CONF_TASK / f"{module.NAME}.yaml"))
    return build_config(module.Config, {**conf["sizes"][size], **overrides})


def require_data(name: str) -> None:
    """Skip the calling test, saying how to get the data, if data set ``name`` was not fetched."""
    root = datasets.resolve_data_dir()
    if not (root / _DATA_FILES[name]).exists():
        pytest.skip(f"{name} is not in {root.resolve()}: run `{datasets.FETCH_COMMAND} {name}`")


def write_cifar10(directory: Path, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """CIFAR-10's python-pickle batches, 3 random images each: rows of 3072 bytes, R, G, B planes."""
    directory.mkdir(parents=True)
    rows = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        rows[name] = rng.integers(0, 256, size=(3, 3072), dtype=np.uint8)
        batch = {b"data": rows[name], b"labels": [1, 7, 9], b"batch_label": name.encode()}
        with open(directory / name, "wb") as f:
            pickle.dump(batch, f)
    return rows
