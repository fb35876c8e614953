"""The quantization core: exact FP4 quantizers, gradient estimators, quantized layers, recipes
and the modelled overhead of a recipe on FP4 hardware.

The names below load their module on first use, so that importing a light part of the core (the
axis schema, the formats) does not import torch: ``fp4sweep status`` and ``--help`` need none.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "B200": "cost",
    "Overhead": "cost",
    "overhead": "cost",
    "quantize": "estimators",
    "GemmShape": "gemm",
    "Hardware": "hardware",
    "load_hardware": "hardware",
    "QuantConv2d": "layers",
    "QuantLinear": "layers",
    "quantize_model": "layers",
    "fake_quantize": "dispatch",
    "quantize_detailed": "dispatch",
    "QuantResult": "reference",
    "Recipe": "recipe",
    "QuantSpec": "spec",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
    globals()[name] = value  # the next access skips this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
