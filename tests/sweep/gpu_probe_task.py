"""The regression task, trained on the CPU whatever device the sweep gives it, recording the GPU
that Ray gave each trial: for testing GPU placement on a Ray node that declares GPUs it lacks."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import ray

from fp4sweep.quant import Recipe
from fp4sweep.tasks import regression
from fp4sweep.tasks.base import TaskResult
from fp4sweep.tasks.regression import gemm_shapes  # noqa: F401 - part of the task API

NAME = "gpu_probe"
BARRIER_TIMEOUT_S = 120


@dataclass(frozen=True)
class Config(regression.Config):
    log_dir: str = ""  # one JSON file a trial: its device, Ray's GPU ids, CUDA_VISIBLE_DEVICES
    together: int = 1  # trials start training only once this many have begun: all run at once


def train(config: Config, recipe: Recipe, seed: int, device: str = "cpu") -> TaskResult:
    record = {"device": str(device), "gpu_ids": [str(i) for i in ray.get_gpu_ids()],
              "visible": os.environ.get("CUDA_VISIBLE_DEVICES")}
    log = Path(config.log_dir, f"{os.getpid()}-{time.time_ns()}.json")
    log.write_text(json.dumps(record))
    deadline = time.monotonic() + BARRIER_TIMEOUT_S
    while len(list(Path(config.log_dir).glob("*.json"))) < config.together:
        if time.monotonic() > deadline:
            raise TimeoutError(f"fewer than {config.together} trials at once")
        time.sleep(0.1)
    return regression.train(config, recipe, seed, "cpu")
