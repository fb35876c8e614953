"""Compile the quantiser kernels for a GPU without one, and count their machine instructions.

Each kernel is compiled the way ``fp4sweep.quant.kernels.launch`` would compile it for a
contiguous bf16 tensor of the given shape (the same geometry, tile shapes and compile-time
arguments, 16-byte-aligned pointers), for an NVIDIA target (default sm_90, the H100 and H200),
through Triton's own compiler and ``ptxas``; nothing runs. For every variant it prints the
static SASS instruction count per element a thread handles (the kernels are straight-line code:
one tile per program) and the most frequent instructions.
A kernel that fails to compile is reported and makes the exit status 1.

Static counts are a proxy for the instruction-bound kernels (Hadamard and stochastic rounding):
compare variants compiled by the same Triton version; timings still need the GPU
(``scripts/bench_quant.py``).

    python scripts/compile_kernels.py [--arch 90] [--detailed] [--sass-dir DIR]
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fp4sweep.quant.kernels import launch, quantiser  # noqa: E402
from fp4sweep.quant.spec import QuantSpec  # noqa: E402

MXFP4 = QuantSpec.preset("mxfp4")
NVFP4 = QuantSpec.preset("nvfp4")
VARIANTS = {  # as scripts/bench_quant.py names them
    "mxfp4": MXFP4,
    "nvfp4": NVFP4,
    "mxfp4+H32+SR": dataclasses.replace(MXFP4, transform="hadamard32", rounding="sr"),
    "nvfp4+RH16+SR": dataclasses.replace(NVFP4, transform="rhadamard16", rounding="sr"),
    "ue5m3+RH32+SR+ts": QuantSpec(scale="ue5m3", scale_rule="nearest", rounding="sr",
                                  transform="rhadamard32", tensor_scale=True),
    "nvfp4 16x16": dataclasses.replace(NVFP4, block_2d=True),
}
SHAPES = [(16384, 3072, 1), (16384, 3072, 0)]  # GPT-2-small activations, both axes
POINTER_TYPES = {torch.bfloat16: "*bf16", torch.float32: "*fp32", torch.int32: "*i32"}


def compile_kernel(kernel, pointers: dict[str, torch.dtype], arguments: dict, warps: int,
                   arch: int):
    """Compile ``kernel`` with ``pointers`` (name -> element dtype) and every other argument
    given: ints the launcher passes at run time stay arguments, the rest are constants."""
    runtime_ints = {"sr_key", "n_lines", "n_axis_tiles", "stride", "n_elements"}
    signature, constants, attributes = {}, {}, {}
    for index, name in enumerate(kernel.arg_names):
        if name in pointers:
            signature[name] = POINTER_TYPES[pointers[name]]
            attributes[(index,)] = [["tt.divisibility", 16]]
        elif name in runtime_ints:
            value = arguments.get(name, 0)
            signature[name] = "i64" if value >= 2**31 else "i32"
            if value % 16 == 0 and name not in ("sr_key", "n_elements"):  # do_not_specialize
                attributes[(index,)] = [["tt.divisibility", 16]]
        else:
            signature[name] = "constexpr"
            constants[name] = arguments[name]
    source = ASTSource(kernel, signature, constexprs=constants, attrs=attributes)
    return triton.compile(source, target=GPUTarget("cuda", arch, 32),
                          options=dict(num_warps=warps, enable_fp_fusion=False))


def sass(cubin: bytes) -> str:
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as file:
        file.write(cubin)
        file.flush()
        return subprocess.run([str(tool), "-sass", file.name], capture_output=True, text=True,
                              check=True).stdout


def opcode_counts(listing: str) -> collections.Counter:
    opcodes = re.findall(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)", listing)
    return collections.Counter(opcodes)


def variants(detailed: bool):
    """(label, kernel, pointers, arguments, warps, elements per thread) for every kernel the
    launcher would compile for VARIANTS x SHAPES (both tile shapes)."""
    for name, spec in VARIANTS.items():
        for rows, cols, axis in SHAPES:
            if spec.block_2d and axis == 0:
                continue
            x = torch.empty(rows, cols, dtype=torch.bfloat16, device="meta")
            geometry = launch._Geometry.of(x, axis, spec)
            shared = geometry.arguments(x.numel())
            signs = torch.float32 if spec.random_signs else torch.bfloat16
            for tile, warps in launch.TILES:
                block_rows = geometry.rows(tile, warps, spec.block, spec.block_2d)
                per_thread = block_rows * geometry.cols // (32 * warps)
                label = f"{name:17} axis {axis} tile {tile:5} warps {warps}"
                if spec.tensor_scale:
                    arguments = dict(shared, **launch._transform_constants(spec), ROWS=block_rows)
                    yield (f"{label} amax", quantiser.tensor_amax_kernel,
                           dict(x_ptr=torch.bfloat16, signs_ptr=signs,
                                amax_bits_ptr=torch.int32), arguments, warps, per_thread)
                for with_details in sorted({False, detailed}):
                    arguments = dict(shared, **launch._quantiser_constants(spec, with_details,
                                                                           x.numel()),
                                     ROWS=block_rows)
                    pointers = dict(x_ptr=torch.bfloat16, out_ptr=torch.bfloat16,
                                    signs_ptr=signs,
                                    amax_bits_ptr=torch.int32 if spec.tensor_scale
                                    else torch.bfloat16,
                                    details_ptr=torch.float32 if with_details
                                    else torch.bfloat16)
                    suffix = " detailed" if with_details else ""
                    yield (f"{label}{suffix}", quantiser.fake_quantize_kernel, pointers,
                           arguments, warps, per_thread)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 90, 100")
    parser.add_argument("--detailed", action="store_true",
                        help="also the kernels that write quantize_detailed's fields")
    parser.add_argument("--sass-dir", type=Path, help="write each kernel's SASS listing here")
    args = parser.parse_args()
    if args.sass_dir:
        args.sass_dir.mkdir(parents=True, exist_ok=True)
    print(f"Triton {triton.__version__}, sm_{args.arch}")
    failures = 0
    for index, (label, kernel, pointers, arguments, warps, per_thread) in enumerate(
            variants(args.detailed)):
        try:
            compiled = compile_kernel(kernel, pointers, arguments, warps, args.arch)
        except Exception as error:  # report every variant, then fail
            failures += 1
            print(f"{label}: FAILED to compile: {type(error).__name__}: {error}")
            continue
        listing = sass(compiled.asm["cubin"])
        if args.sass_dir:
            (args.sass_dir / f"{index:02d}.sass").write_text(f"// {label}\n{listing}")
        counts = opcode_counts(listing)
        total = sum(counts.values())
        top = " ".join(f"{op}:{n / per_thread:.1f}" for op, n in counts.most_common(6))
        print(f"{label}: {total / per_thread:6.1f} instructions/element "
              f"({per_thread} a thread) | {top}")
    if failures:
        print(f"{failures} kernel(s) failed to compile")
        sys.exit(1)


if __name__ == "__main__":
    main()
