"""Which implementation ``fake_quantize`` (and the backward of a convolution's unfolded rows,
``fold_rows``) runs: the pure-PyTorch reference or the kernels.

The environment variable ``FP4SWEEP_QUANT_BACKEND`` (or ``use_backend``, which takes
precedence) picks one of:

- "auto" (default): the kernels for CUDA tensors (whose spec they support), the reference
  otherwise (CPU tensors, or a machine without Triton);
- "reference": always the reference;
- "triton": the kernels for every tensor, CPU tensors included (these run under Triton's
  interpreter, ``TRITON_INTERPRET=1``, as the tests do); an error where they cannot run.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
from typing import Iterator

import torch

from fp4sweep.quant.spec import QuantSpec

BACKENDS = ("auto", "reference", "triton")
ENV_VAR = "FP4SWEEP_QUANT_BACKEND"

_override: str | None = None


def _check(name: str, source: str) -> str:
    if name not in BACKENDS:
        raise ValueError(
            f"{source}={name!r} is not a quantisation backend; valid: {list(BACKENDS)}"
        )
    return name


def selected() -> str:
    """The backend in force: ``use_backend``'s, else the environment's, else "auto"."""
    if _override is not None:
        return _override
    return _check(os.environ.get(ENV_VAR, "auto"), ENV_VAR)


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Run the enclosed code with backend ``name`` (see the module docstring)."""
    global _override
    previous, _override = _override, _check(name, "use_backend")
    try:
        yield
    finally:
        _override = previous


@functools.cache
def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def kernels_for(x: torch.Tensor) -> bool:
    """Whether the backend in force runs kernels on ``x``."""
    return _kernels_for(x, selected())


def _kernels_for(x: torch.Tensor, backend: str) -> bool:
    if backend == "reference":
        return False
    if backend == "triton":
        if not triton_available():
            raise RuntimeError(f"{ENV_VAR}='triton' but Triton is not installed")
        return True
    return x.is_cuda and triton_available()


def use_kernels(x: torch.Tensor, spec: QuantSpec) -> bool:
    """Whether ``fake_quantize(x, spec, ...)`` (and ``quantize_detailed``) should run the
    kernels."""
    backend = selected()
    if not _kernels_for(x, backend):
        return False
    if backend == "triton":
        return True
    if not isinstance(spec, QuantSpec):
        return False
    from fp4sweep.quant.kernels.launch import supports

    return supports(spec)


def fake_quantize(x: torch.Tensor, spec: QuantSpec, axis: int, seed: int,
                  tensor_amax: torch.Tensor | None = None) -> torch.Tensor:
    """``launch.fake_quantize``, imported on first use (it imports Triton)."""
    from fp4sweep.quant.kernels.launch import fake_quantize as kernel_fake_quantize

    return kernel_fake_quantize(x, spec, axis, seed, tensor_amax)


def quantize_detailed(
    x: torch.Tensor, spec: QuantSpec, axis: int, seed: int,
    tensor_amax: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """``launch.quantize_detailed``, imported on first use (it imports Triton)."""
    from fp4sweep.quant.kernels.launch import quantize_detailed as kernel_quantize_detailed

    return kernel_quantize_detailed(x, spec, axis, seed, tensor_amax)
