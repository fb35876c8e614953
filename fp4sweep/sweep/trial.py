"""One trial, run where a Ray worker puts it: a spec in, an outcome out, never an exception.

The outcome travels back to the driver, which alone writes the results store.
A trial that raises is a ``failed`` outcome with its traceback; a run whose loss stops being
finite is ``diverged``: a result about the recipe, not an error.
"""

from __future__ import annotations

import datetime as dt
import math
import platform
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

import torch

import fp4sweep
from fp4sweep.quant import Recipe, overhead
from fp4sweep.tasks import build_config, load_task

TRACEBACK_CHARS = 8000  # the end of a traceback is where the cause is


def _versions() -> dict[str, str]:
    """What the trial ran with, on its worker (a cluster's nodes may differ from the driver)."""
    return {"fp4sweep": fp4sweep.__version__, "torch": torch.__version__}


@dataclass
class TrialOutcome:
    """What one attempt at a trial produced, as plain picklable values."""

    status: str  # "done" | "diverged" | "failed"
    started_at: dt.datetime
    finished_at: dt.datetime
    host: str
    device: str
    metrics: dict[str, float] = field(default_factory=dict)
    overhead: dict[str, float] = field(default_factory=dict)
    timing: dict[str, float] = field(default_factory=dict)
    error: dict[str, str] | None = None
    versions: dict[str, str] = field(default_factory=_versions)
    curve: list[dict[str, float]] = field(default_factory=list)
    artifacts: dict[str, bytes] = field(default_factory=dict)


def task_config(spec: dict[str, Any], config_type: type) -> Any:
    """The task's Config for a spec; the sweep's exclude list goes in when the task has one."""
    params = dict(spec["params"])
    if spec["exclude"] is not None:
        params["exclude"] = spec["exclude"]
    return build_config(config_type, params)


def run_trial(spec: dict[str, Any], module: str, device: str, threads: int) -> TrialOutcome:
    """Train the spec's task with its recipe and seed on ``device``; catch whatever it raises."""
    started = _now()
    wall = time.perf_counter()
    outcome = TrialOutcome("failed", started, started, platform.node(), device)  # until it ends well
    try:
        torch.set_num_threads(threads)  # fixed per trial, so results do not depend on the host
        task = load_task(module)
        config = task_config(spec, task.Config)
        recipe = Recipe.from_dict(spec["recipe"])
        train_start = time.perf_counter()
        result = task.train(config, recipe, spec["seed"], device)
        train_s = time.perf_counter() - train_start
        cost = overhead(recipe, result.gemm_shapes or task.gemm_shapes(config, recipe.high_precision))
        steps = result.curve[-1]["step"] if result.curve else math.nan
        outcome.metrics = {name: float(value) for name, value in result.metrics.items()}
        finite = all(math.isfinite(v) for v in outcome.metrics.values())
        outcome.status = "done" if finite and not result.diverged else "diverged"
        outcome.overhead = cost.as_dict()  # model, model_fwd, model_bwd, points, per technique
        outcome.timing = {"train_s": train_s, "step_s": train_s / steps}
        outcome.curve = result.curve
        outcome.artifacts = result.artifacts
    except Exception as error:  # noqa: BLE001 - any failure of a trial is a result to record
        outcome.error = error_record(error)
    finally:
        if device.startswith("cuda"):
            torch.cuda.empty_cache()  # the worker is reused by the next trial
    outcome.timing["wall_s"] = time.perf_counter() - wall
    outcome.finished_at = _now()
    return outcome


def error_record(error: BaseException) -> dict[str, str]:
    text = "".join(traceback.format_exception(error))
    return {"type": type(error).__name__, "message": str(error), "traceback": text[-TRACEBACK_CHARS:]}


def lost_outcome(error: BaseException, device: str) -> TrialOutcome:
    """The outcome of a trial whose worker died more often than Ray's retries allow."""
    now = _now()
    return TrialOutcome("failed", now, now, "", device, error=error_record(error))


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)
