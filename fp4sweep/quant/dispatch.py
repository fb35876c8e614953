"""The quantizer the rest of fp4sweep calls: the choice between the pure-PyTorch reference
(``reference``) and the fused kernels (``kernels.launch``), which return the same bits.

The backend is, in order of precedence: the ``backend`` argument of ``fake_quantize`` /
``quantize_detailed``; the enclosing ``use_backend``; the environment variable
``FP4SWEEP_QUANT_BACKEND``; "auto". One of:

- "auto": the kernels for CUDA tensors (whose spec they support), the reference otherwise
  (CPU tensors, or a machine without Triton);
- "reference": always the reference;
- "triton": the kernels for every tensor, CPU tensors included (these run under Triton's
  interpreter, ``TRITON_INTERPRET=1``, as the tests do); an error where they cannot run.

The same choice decides the backward of a convolution's unfolded rows (``kernels_for``, used by
``layers.unfold_rows``). The kernels are imported on first use: they import Triton.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
from typing import Iterator

import torch

from fp4sweep.quant import reference
from fp4sweep.quant.reference import QuantResult
from fp4sweep.quant.spec import QuantSpec

BACKENDS = ("auto", "reference", "triton")
ENV_VAR = "FP4SWEEP_QUANT_BACKEND"

_override: str | None = None


def _check(name: str, source: str) -> str:
    if name not in BACKENDS:
        raise ValueError(
            f"{source}={name!r} is not a quantization backend; valid: {list(BACKENDS)}"
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


def _resolve(backend: str | None) -> str:
    return selected() if backend is None else _check(backend, "backend")


def kernels_for(x: torch.Tensor, backend: str | None = None) -> bool:
    """Whether ``backend`` (default: the one in force) runs kernels on ``x``."""
    backend = _resolve(backend)
    if backend == "reference":
        return False
    if backend == "triton":
        if not triton_available():
            raise RuntimeError(f"{ENV_VAR}='triton' but Triton is not installed")
        return True
    return x.is_cuda and triton_available()


def use_kernels(x: torch.Tensor, spec: QuantSpec, backend: str | None = None) -> bool:
    """Whether ``fake_quantize(x, spec, ..., backend=backend)`` runs the kernels."""
    backend = _resolve(backend)
    if not kernels_for(x, backend):
        return False
    if backend == "triton":
        return True
    if not isinstance(spec, QuantSpec):
        return False
    from fp4sweep.quant.kernels.launch import supports

    return supports(spec)


def fake_quantize(
    x: torch.Tensor, spec: QuantSpec, axis: int = -1, seed: int = 0,
    tensor_amax: torch.Tensor | None = None, backend: str | None = None,
) -> torch.Tensor:
    """Quantize-dequantize ``x`` along ``axis`` as ``spec`` says; same shape and dtype as ``x``.

    ``seed`` (an int in [0, 2**64)) keys stochastic rounding; "rne" ignores it. ``tensor_amax``
    (0-d float32, on ``x``'s device) replaces the tensor amax of tensor scaling (a delayed scale,
    ``delayed.py``). ``backend`` picks the implementation (see the module docstring); every
    backend returns the same bits.
    """
    if use_kernels(x, spec, backend):
        from fp4sweep.quant.kernels import launch

        return launch.fake_quantize(x, spec, axis, seed, tensor_amax)
    return reference.fake_quantize(x, spec, axis, seed, tensor_amax)


def quantize_detailed(
    x: torch.Tensor, spec: QuantSpec, axis: int = -1, seed: int = 0,
    tensor_amax: torch.Tensor | None = None, backend: str | None = None,
) -> QuantResult:
    """``fake_quantize`` with its intermediate values (see ``reference.QuantResult``)."""
    if use_kernels(x, spec, backend):
        from fp4sweep.quant.kernels import launch

        output, fields, tensor_scale = launch.quantize_detailed(x, spec, axis, seed, tensor_amax)
        return QuantResult(output=output, tensor_scale=tensor_scale, **fields)
    return reference.quantize_detailed(x, spec, axis, seed, tensor_amax)
