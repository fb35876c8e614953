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
    fail_seed: int = -1  # raise for this seed and a quantized recipe ...
    fail_while: str = ""  # ... while this file exists
    crash_marker: str = ""  # kill one worker process: the first to create this file


def _created(path: str) -> bool:
    """Create ``path`` unless it exists; whether this call created it. Atomic, so that of
    trials running at once exactly one kills its worker."""
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def train(config: Config, recipe: Recipe, seed: int, device: str = "cpu") -> TaskResult:
    if seed == config.fail_seed and recipe != Recipe.preset("bf16") and os.path.exists(config.fail_while):
        raise RuntimeError(f"planned failure for seed {seed}")
    if config.crash_marker and _created(config.crash_marker):
        os._exit(1)
    return regression.train(config, recipe, seed, device)
