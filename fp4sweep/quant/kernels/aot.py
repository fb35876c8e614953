"""Compiling the quantizer kernels for an NVIDIA GPU without one (ahead of time).

Each kernel is compiled as ``launch`` would compile it for a contiguous tensor: the same
geometry, tile shapes and compile-time arguments (``launch.KernelArguments``), 16-byte-aligned
pointers, through Triton's compiler and ``ptxas``, for any compute capability. Nothing runs. CI
has no GPU and runs the kernels under Triton's interpreter, which never compiles them: this is
how it checks that they build for the GPU (``tests/quant/test_kernel_builds.py``), and how
``scripts/compile_kernels.py`` counts their instructions.

Triton's interpreter replaces every ``triton.jit`` function when ``TRITON_INTERPRET=1`` is set
before Triton is imported; so compile in a process without it.
"""

from __future__ import annotations

import collections
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from fp4sweep.quant.kernels import launch, quantizer
from fp4sweep.quant.reference import check_input
from fp4sweep.quant.spec import QuantSpec

POINTER_TYPES = {torch.bfloat16: "*bf16", torch.float16: "*fp16", torch.float32: "*fp32",
                 torch.int32: "*i32"}


@dataclass(frozen=True)
class Build:
    """One kernel as the launcher compiles it: its pointers' element types, every other
    argument, warps, and how many tensor elements each thread handles."""

    label: str
    kernel: triton.runtime.JITFunction
    pointers: dict[str, torch.dtype]
    arguments: dict
    warps: int
    elements_per_thread: int


def builds(shape: tuple[int, ...], dtype: torch.dtype, spec: QuantSpec, axis: int = -1,
           detailed: bool = False) -> list[Build]:
    """The kernels ``launch`` compiles for a contiguous ``dtype`` tensor of ``shape``: for each
    tile shape and run lanes it may choose (``_Geometry.choices``), the amax kernel (with tensor
    scaling) and the quantizer (``detailed``: the one behind ``quantize_detailed``)."""
    if not launch.supports(spec):
        raise ValueError(f"the kernels do not implement {spec}")
    x = torch.empty(shape, dtype=dtype, device="meta")
    axis = check_input(x, spec, axis)
    arguments = launch.KernelArguments.of(x, spec, axis, detailed)
    signs = torch.float32 if spec.random_signs else dtype
    quantize_pointers = dict(x_ptr=dtype, out_ptr=dtype, signs_ptr=signs,
                             amax_bits_ptr=torch.int32 if spec.tensor_scale else dtype,
                             details_ptr=torch.float32 if detailed else dtype)
    found = []
    for tile, warps, lanes in arguments.geometry.choices():
        rows = arguments.geometry.rows(tile, warps, spec.block, spec.block_2d)
        per_thread = rows * arguments.geometry.cols // (32 * warps)
        label = f"axis {axis}, tile {tile}, {warps} warps, {lanes} run lane{'s' * (lanes > 1)}"
        chosen = dict(ROWS=rows, RUN_LANES=lanes)
        if arguments.tensor_amax is not None:
            found.append(Build(f"{label}, amax", quantizer.tensor_amax_kernel,
                               dict(x_ptr=dtype, signs_ptr=signs, amax_bits_ptr=torch.int32),
                               dict(arguments.tensor_amax, **chosen), warps, per_thread))
        found.append(Build(f"{label}{', detailed' if detailed else ''}",
                           quantizer.fake_quantize_kernel, quantize_pointers,
                           dict(arguments.quantize, **chosen), warps, per_thread))
    return found


def compile_build(build: Build, arch: int = 90) -> triton.compiler.CompiledKernel:
    """``build`` compiled for compute capability ``arch`` (90: H100, H200); raises if it does
    not compile."""
    if not isinstance(build.kernel, triton.runtime.JITFunction):
        raise RuntimeError("the kernels are interpreted here (TRITON_INTERPRET=1 was set before "
                           "Triton was imported): compile them in a process without it")
    kernel = build.kernel
    not_specialised = {kernel.arg_names.index(p) if isinstance(p, str) else p
                       for p in kernel.do_not_specialize}
    signature, constants, attributes = {}, {}, {}
    for index, param in enumerate(kernel.params):
        name = param.name
        if name in build.pointers:
            signature[name] = POINTER_TYPES[build.pointers[name]]
            attributes[(index,)] = [["tt.divisibility", 16]]
        elif not param.is_constexpr:
            value = build.arguments.get(name, 0)  # a per-call one (the key): any value
            signature[name] = "i64" if value >= 2**31 else "i32"
            if value % 16 == 0 and index not in not_specialised:
                attributes[(index,)] = [["tt.divisibility", 16]]
        else:
            signature[name] = "constexpr"
            constants[name] = build.arguments[name]
    source = ASTSource(build.kernel, signature, constexprs=constants, attrs=attributes)
    return triton.compile(source, target=GPUTarget("cuda", arch, 32),
                          options=dict(num_warps=build.warps, enable_fp_fusion=False))


def sass(compiled: triton.compiler.CompiledKernel) -> str:
    """The machine code of a compiled kernel, as ``cuobjdump -sass`` (Triton's) lists it."""
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as file:
        file.write(compiled.asm["cubin"])
        file.flush()
        return subprocess.run([str(tool), "-sass", file.name], capture_output=True, text=True,
                              check=True).stdout


def opcode_counts(listing: str) -> collections.Counter:
    """How often each opcode (``FADD``, ``LOP3``, ...) occurs in a SASS listing."""
    return collections.Counter(
        re.findall(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)", listing))
