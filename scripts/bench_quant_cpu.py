"""CPU throughput of the reference quantizer (fake_quantize) on a square float32 tensor.

    PYTHONPATH=$PWD python scripts/bench_quant_cpu.py [--size 4096] [--repeats 5]

Bytes moved are counted as one read of the input plus one write of the output (8 bytes per
float32 element), as for a copy, so the copy row is the memory ceiling of this machine and the
"x copy" column says how far each quantizer is from it. Times are the median of the repeats,
after one warm-up call.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import statistics
import time
from typing import Callable

import torch

from fp4sweep.quant.dispatch import fake_quantize
from fp4sweep.quant.spec import QuantSpec

VARIANTS: dict[str, QuantSpec] = {
    "mxfp4": QuantSpec.preset("mxfp4"),
    "nvfp4": QuantSpec.preset("nvfp4"),
    "mxfp4 + hadamard32 + sr": dataclasses.replace(
        QuantSpec.preset("mxfp4"), transform="rhadamard32", rounding="sr"
    ),
    "nvfp4 + hadamard16 + sr": dataclasses.replace(
        QuantSpec.preset("nvfp4"), transform="rhadamard16", rounding="sr"
    ),
}


def median_seconds(run: Callable[[], torch.Tensor], repeats: int) -> float:
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096, help="rows and columns of the tensor")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    x = torch.randn(args.size, args.size, generator=torch.Generator().manual_seed(0))
    elements = x.numel()
    moved_bytes = 2 * x.element_size() * elements
    print(f"{args.size}x{args.size} float32, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")

    copy_s = median_seconds(x.clone, args.repeats)
    rows = [("copy (memory ceiling)", copy_s)]
    for name, spec in VARIANTS.items():
        rows.append((name, median_seconds(lambda: fake_quantize(x, spec, seed=1), args.repeats)))

    print(f"{'variant':<26}{'ms':>10}{'Melem/s':>10}{'GB/s':>8}{'x copy':>9}")
    for name, seconds in rows:
        print(f"{name:<26}{seconds * 1e3:>10.1f}{elements / seconds / 1e6:>10.1f}"
              f"{moved_bytes / seconds / 1e9:>8.2f}{seconds / copy_s:>9.1f}")


if __name__ == "__main__":
    main()
