"""Task families: each is a module exposing NAME, Config, gemm_shapes and train (see base.py).

A task is named in conf/task/NAME.yaml; its module is the file's ``module`` key, by default
``fp4sweep.tasks.NAME``, so a task family can live outside this package (any importable module).
Modules are imported only when trials run: planning a sweep needs the task configs alone.

This registry is the face of the tasks for the rest of fp4sweep: ``default_module`` (the naming
rule), ``load_task`` and ``build_config`` (a task's Config from plain values).
"""

from __future__ import annotations

import importlib
from types import ModuleType

from fp4sweep.tasks.base import build_config

__all__ = ["TASK_API", "build_config", "default_module", "load_task"]

TASK_API = ("NAME", "Config", "gemm_shapes", "train")


def default_module(name: str) -> str:
    """The module of a task whose config names none."""
    return f"fp4sweep.tasks.{name}"


def load_task(module_name: str) -> ModuleType:
    """Import a task module and check that it has the task API."""
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"cannot import task module {module_name!r}: {error}") from error
    missing = [name for name in TASK_API if not hasattr(module, name)]
    if missing:
        raise ValueError(
            f"task module {module_name!r} lacks {missing}; a task module defines {list(TASK_API)}"
        )
    return module
