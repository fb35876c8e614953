"""Compile the quantizer kernels for a GPU without one, and count their machine instructions.

Every kernel that ``fp4sweep.quant.kernels.launch`` would compile for the variants that
``scripts/bench_quant.py`` times (and NVFP4's 16x16 weight tiles), on bf16 GPT-2-small
activations along both axes, compiled by ``fp4sweep.quant.kernels.aot`` for an NVIDIA target
(default sm_90: H100, H200); nothing runs. For each it prints the static SASS instructions per
element a thread handles (the kernels are straight-line code, one tile per program) and the most
frequent opcodes. A kernel that does not compile is reported and makes the exit status 1.

Static counts are a proxy for the instruction-bound kernels (Hadamard and stochastic rounding):
compare variants compiled by the same Triton version as the GPU's; timings still need the GPU
(``scripts/bench_quant.py``).

    python scripts/compile_kernels.py [--arch 90] [--detailed] [--sass-dir DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch
import triton

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import bench_quant  # noqa: E402  (beside this script)
from fp4sweep.quant.kernels import aot  # noqa: E402

VARIANTS = dict(bench_quant.VARIANTS, **{
    "nvfp4 16x16": dataclasses.replace(bench_quant.NVFP4, block_2d=True)})
SHAPE = (16384, 3072)  # GPT-2-small MLP activations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 90, 100")
    parser.add_argument("--detailed", action="store_true",
                        help="also the kernels behind quantize_detailed")
    parser.add_argument("--sass-dir", type=Path, help="write each kernel's SASS listing here")
    args = parser.parse_args()
    if args.sass_dir:
        args.sass_dir.mkdir(parents=True, exist_ok=True)
    print(f"Triton {triton.__version__}, sm_{args.arch}, bf16 {SHAPE[0]}x{SHAPE[1]}")
    failures = count = 0
    for name, spec in VARIANTS.items():
        for axis in (1,) if spec.block_2d else (1, 0):
            for detailed in sorted({False, args.detailed}):
                for build in aot.builds(SHAPE, torch.bfloat16, spec, axis, detailed):
                    label = f"{name}, {build.label}"
                    try:
                        compiled = aot.compile_build(build, args.arch)
                    except Exception as error:  # report every kernel, then fail
                        failures += 1
                        print(f"{label}: does not compile: {type(error).__name__}: {error}")
                        continue
                    listing = aot.sass(compiled)
                    count += 1
                    if args.sass_dir:
                        (args.sass_dir / f"{count:02d}.sass").write_text(f"// {label}\n{listing}")
                    opcodes = aot.opcode_counts(listing)
                    per_element = sum(opcodes.values()) / build.elements_per_thread
                    top = " ".join(f"{op} {n / build.elements_per_thread:.1f}"
                                   for op, n in opcodes.most_common(6))
                    print(f"{label}: {per_element:.1f} instructions per element | {top}")
    if failures:
        print(f"{failures} kernel(s) do not compile")
        sys.exit(1)


if __name__ == "__main__":
    main()
