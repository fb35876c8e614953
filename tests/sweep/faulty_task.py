"""The regression task with failures on demand, for testing how the sweep engine copes."""

from __future__ import annotations

import os
from dataclasses import dataclass

from fp4sweep.quant import Recipe
from fp4sweep.tasks import regression
from fp4sweep.tasks.base import TaskResult
from fp4sweep.tasks.regression import gemm_shapes  # noqa: F401 - part of the task API

NAME = "faulty"


@dataclass(frozen=True)
class Config(regression.Config):
    fail_seed: int = -1  # raise for this seed and a quantised recipe ...
    fail_while: str = ""  # ... while this file exists
    crash_marker: str = ""  # kill the worker process once: when this file does not exist yet


def train(config: Config, recipe: Recipe, seed: int, device: str = "cpu") -> TaskResult:
    if seed == config.fail_seed and recipe != Recipe.preset("bf16") and os.path.exists(config.fail_while):
        raise RuntimeError(f"planned failure for seed {seed}")
    if config.crash_marker and not os.path.exists(config.crash_marker):
        open(config.crash_marker, "w").close()
        os._exit(1)
    return regression.train(config, recipe, seed, device)
