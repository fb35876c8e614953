"""Target workloads the overhead is priced on: one training step's linear layers as data
(``conf/target/NAME.yaml``).

A target file gives the tokens of one step (``m`` of every GEMM) and its layers, each with its
input width ``k``, output width ``n``, how many layers share the shape and whether a layer policy
keeps it in high precision. The target ``task`` has no layers: it stands for the trial's own
task, whose shapes come from the task itself (see ``analysis/pricing.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fp4sweep.quant import data_files
from fp4sweep.quant.gemm import GemmShape

TASK_TARGET = "task"
_TARGET_KEYS = {"description", "tokens", "layers", "from_task"}
_LAYER_KEYS = {"name", "k", "n", "count", "high_precision"}


@dataclass(frozen=True)
class Target:
    """A named workload: its GEMM shapes, or none when it is the trial's own task."""

    name: str
    description: str
    shapes: tuple[GemmShape, ...] = ()

    @property
    def from_task(self) -> bool:
        return not self.shapes


def target_names() -> list[str]:
    return data_files.names("target")


def load_target(name: str) -> Target:
    """The workload described by ``conf/target/NAME.yaml``."""
    path, values = data_files.read("target", name, "target")
    if not isinstance(values, dict) or set(values) - _TARGET_KEYS:
        raise ValueError(f"{path}: expected a mapping with keys among {sorted(_TARGET_KEYS)}")
    description = str(values.get("description", ""))
    if values.get("from_task"):
        return Target(name, description)
    tokens = values.get("tokens")
    layers = values.get("layers")
    if not isinstance(tokens, int) or not isinstance(layers, list) or not layers:
        raise ValueError(f"{path}: needs tokens (an int) and a non-empty list of layers")
    return Target(name, description, tuple(_shape(path, tokens, layer) for layer in layers))


def _shape(path: Path, tokens: int, layer: Any) -> GemmShape:
    if not isinstance(layer, dict) or set(layer) - _LAYER_KEYS or not {"k", "n"} <= set(layer):
        raise ValueError(f"{path}: a layer is a mapping of k, n and optionally name, count, "
                         f"high_precision; got {layer!r}")
    return GemmShape(
        m=tokens,
        k=layer["k"],
        n=layer["n"],
        count=layer.get("count", 1),
        name=str(layer.get("name", "")),
        high_precision=bool(layer.get("high_precision", False)),
    )
