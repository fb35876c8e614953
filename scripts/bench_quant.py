"""Throughput of fake_quantize on the GPU: the fused kernels against the device's copy ceiling,
the reference in eager mode and the reference under torch.compile, in one run.

Bytes counted: the input read once plus the output written once (what a copy moves); the
fraction is of the copy bandwidth measured here, on the same tensor sizes. Times are medians
of ``triton.testing.do_bench`` over inputs rotated among several random tensors (never zeros),
so that no input sits in L2 from the previous call. The kernels are timed twice: as a Python
call (``call``: launch overhead included) and as CUDA-graph replays of the same calls
(``gpu``: device time alone).

    PYTHONPATH=. python scripts/bench_quant.py [--json out.json] [--compile-budget 150]
        [--variants nvfp4 ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import time

import torch
import torch._dynamo
import triton.testing

from fp4sweep.quant import dispatch
from fp4sweep.quant.kernels import launch
from fp4sweep.quant.kernels.launch import fake_quantize as kernel_fake_quantize
from fp4sweep.quant.dispatch import fake_quantize
from fp4sweep.quant.spec import QuantSpec

MXFP4 = QuantSpec.preset("mxfp4")
NVFP4 = QuantSpec.preset("nvfp4")
VARIANTS = {
    "mxfp4": MXFP4,
    "nvfp4": NVFP4,
    # The same quantizer without its amax pass: what tensor scaling costs on top.
    "nvfp4 no-ts": dataclasses.replace(NVFP4, tensor_scale=False),
    "mxfp4+H32+SR": dataclasses.replace(MXFP4, transform="hadamard32", rounding="sr"),
    "nvfp4+RH16+SR": dataclasses.replace(NVFP4, transform="rhadamard16", rounding="sr"),
    # 8 random bits a decision, four decisions from one random word (``rng``): the bits that
    # FP4 hardware's stochastic conversion takes, and the UE5M3 authors' recipe.
    "mxfp4+H32+SR8": dataclasses.replace(MXFP4, transform="hadamard32", rounding="sr",
                                         sr_bits=8),
    "nvfp4+RH16+SR8": dataclasses.replace(NVFP4, transform="rhadamard16", rounding="sr",
                                          sr_bits=8),
    "ue5m3+RH32+SR+ts": QuantSpec(scale="ue5m3", scale_rule="nearest", rounding="sr",
                                  transform="rhadamard32", tensor_scale=True),
}
# (rows, cols, quantization axis): a square matrix and GPT-2-small activations, along the
# hidden axis (forward) and along the token axis (the weight-gradient GEMM's operands).
SHAPES = [(8192, 8192, -1), (16384, 768, -1), (16384, 3072, -1), (16384, 3072, 0)]
L2_BYTES = 50 * 2**20
DTYPE = torch.bfloat16


def inputs(rows: int, cols: int) -> list[torch.Tensor]:
    """Enough random tensors that rotating through them defeats the L2 cache."""
    count = max(2, -(-4 * L2_BYTES // (rows * cols * DTYPE.itemsize)))
    return [torch.randn(rows, cols, device="cuda", dtype=DTYPE) for _ in range(min(count, 8))]


def median_ms(fn, xs: list[torch.Tensor]) -> float:
    rotation = itertools.cycle(xs)
    return triton.testing.do_bench(lambda: fn(next(rotation)), warmup=25, rep=100,
                                   return_mode="median")


def graph_median_ms(fn, xs: list[torch.Tensor]) -> float:
    """``median_ms`` of ``fn`` captured in one CUDA graph per input (after a warm-up call)."""
    graphs = []
    for x in xs:
        fn(x)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn(x)
        graphs.append(graph)
    rotation = itertools.cycle(graphs)
    return triton.testing.do_bench(lambda: next(rotation).replay(), warmup=25, rep=100,
                                   return_mode="median")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write every measurement to this file")
    parser.add_argument("--compile-budget", type=float, default=60.0,
                        help="seconds that compiling the reference may take in all; the "
                             "remaining torch.compile cells are skipped (reported as such)")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS),
                        help="time only these")
    parser.add_argument("--skip-eager", action="store_true")
    parser.add_argument("--skip-layouts", action="store_true",
                        help="skip timing plain tiles against the default tile layouts, and "
                             "fitted line vectors against the longest")
    args = parser.parse_args()

    # Every (spec, shape) is its own compiled graph: keep dynamo from falling back to eager.
    for limit in ("cache_size_limit", "recompile_limit"):
        if hasattr(torch._dynamo.config, limit):
            setattr(torch._dynamo.config, limit, 1024)
    device = torch.cuda.get_device_name()
    print(f"device: {device}, torch {torch.__version__}, triton {triton.__version__}")
    rows_out, compile_spent = [], 0.0
    for rows, cols, axis in SHAPES:
        xs = inputs(rows, cols)
        nbytes = 2 * rows * cols * DTYPE.itemsize
        copy_out = torch.empty_like(xs[0])
        copy_ms = median_ms(lambda x: copy_out.copy_(x), xs)
        copy_tbs = nbytes / copy_ms / 1e9
        for name in args.variants:
            spec = VARIANTS[name]
            row = dict(shape=f"{rows}x{cols}", axis=axis, variant=name, copy_tb_s=copy_tbs)
            kernel_ms = median_ms(lambda x: kernel_fake_quantize(x, spec, axis, 1), xs)
            gpu_ms = graph_median_ms(lambda x: kernel_fake_quantize(x, spec, axis, 1), xs)
            row.update(kernel_ms=kernel_ms, kernel_tb_s=nbytes / kernel_ms / 1e9,
                       gpu_ms=gpu_ms, gpu_tb_s=nbytes / gpu_ms / 1e9)
            row["kernel_fraction_of_copy"] = row["kernel_tb_s"] / copy_tbs
            row["gpu_fraction_of_copy"] = row["gpu_tb_s"] / copy_tbs
            with dispatch.use_backend("reference"):
                if not args.skip_eager:
                    eager_ms = median_ms(lambda x: fake_quantize(x, spec, axis, 1), xs[:2])
                    row.update(eager_ms=eager_ms, eager_tb_s=nbytes / eager_ms / 1e9)
                if compile_spent < args.compile_budget:
                    start = time.perf_counter()
                    compiled = torch.compile(fake_quantize, dynamic=False)
                    compiled(xs[0], spec, axis, 1)
                    torch.cuda.synchronize()
                    compile_spent += time.perf_counter() - start
                    compiled_ms = median_ms(lambda x: compiled(x, spec, axis, 1), xs)
                    row.update(compiled_ms=compiled_ms,
                               compiled_tb_s=nbytes / compiled_ms / 1e9)
            rows_out.append(row)
            print(_line(row), flush=True)
    print(f"\n{device}; bf16 input and output; TB/s = (bytes read + written) / median time\n")
    print(f"{'shape':>11} {'axis':>4} {'variant':>17} {'copy':>6} {'eager':>7} {'compile':>7} "
          f"{'call':>7} {'c/copy':>6} {'gpu':>7} {'g/copy':>6} {'call ms':>8} {'gpu ms':>7}")
    for row in rows_out:
        print(_line(row))
    layouts = compare_layouts() if not args.skip_layouts else []
    line_vectors = compare_line_vectors() if not args.skip_layouts else []
    overheads = launch_overheads()
    print("\nhost time per call, small tensor (1024x768), no synchronisation: " + ", ".join(
        f"{name} {us:.1f} us" for name, us in overheads.items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(device=device, torch=torch.__version__, triton=triton.__version__,
                           rows=rows_out, host_us_per_call=overheads, layouts=layouts,
                           line_vectors=line_vectors),
                      f, indent=1)


def compare_launcher_setting(title: str, constant: str, settings: dict[str, int],
                             cases: list[tuple[tuple[int, int, int], str]]) -> list[dict]:
    """Device time of each case (shape and axis, variant) with the launcher's module constant
    ``constant`` at each of ``settings`` (label -> value), the plans rebuilt for each."""
    results = []
    print(f"\ndevice time (CUDA graphs), {title}")
    for (rows, cols, axis), name in cases:
        xs, spec = inputs(rows, cols), VARIANTS[name]
        nbytes = 2 * rows * cols * DTYPE.itemsize
        row = dict(shape=f"{rows}x{cols}", axis=axis, variant=name)
        for label, value in settings.items():
            default = getattr(launch, constant)
            setattr(launch, constant, value)
            launch.clear_plans()
            try:
                ms = graph_median_ms(lambda x: kernel_fake_quantize(x, spec, axis, 1), xs)
            finally:
                setattr(launch, constant, default)
                launch.clear_plans()
            row[f"{label}_ms"], row[f"{label}_tb_s"] = ms, nbytes / ms / 1e9
        results.append(row)
        timings = "  ".join(f"{label} {row[f'{label}_tb_s']:.3f} TB/s" for label in settings)
        print(f"{row['shape']:>11} {axis:>4} {name:>17}  {timings}", flush=True)
    return results


def compare_layouts() -> list[dict]:
    """The default tile layouts against plain [rows, cols] tiles everywhere."""
    return compare_launcher_setting(
        "default tile layouts vs plain [rows, cols] tiles", "MAX_THREAD_RUN",
        {"default": launch.MAX_THREAD_RUN, "plain": 0},
        list(itertools.product([(8192, 8192, -1), (16384, 3072, 0)],
                               ["mxfp4", "nvfp4", "mxfp4+H32+SR"])))


def compare_line_vectors() -> list[dict]:
    """Along the token axis, line vectors shortened where tiles would leave lines masked (the
    launcher's choice) against the longest vectors everywhere."""
    return compare_launcher_setting(
        "line vectors fitted to the lines vs the longest", "SHORTEST_LINE_VECTORS",
        {"fitted": launch.SHORTEST_LINE_VECTORS, "longest": launch.MAX_THREAD_RUN},
        list(itertools.product([(32768, 768, 0), (32768, 2304, 0), (16384, 3072, 0)],
                               ["nvfp4", "nvfp4 no-ts", "nvfp4+RH16+SR", "nvfp4+RH16+SR8"])))


def launch_overheads(calls: int = 500) -> dict[str, float]:
    """CPU time of one call, where the GPU is not what limits: a small tensor, no sync."""
    x, out = torch.randn(1024, 768, device="cuda", dtype=DTYPE), None
    functions = {"torch copy": lambda: out.copy_(x)}
    out = torch.empty_like(x)
    for name in ("mxfp4", "nvfp4", "ue5m3+RH32+SR+ts"):
        functions[f"kernels {name}"] = lambda spec=VARIANTS[name]: kernel_fake_quantize(x, spec)
    # What the layers call: the backend's dispatch on top of the kernels.
    functions["fake_quantize nvfp4"] = lambda: fake_quantize(x, NVFP4)
    result = {}
    for name, fn in functions.items():
        fn()
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        result[name] = (time.perf_counter() - start) / calls * 1e6
        torch.cuda.synchronize()
    return result


def _line(row: dict) -> str:
    def tbs(key: str) -> str:
        return f"{row[key]:7.3f}" if key in row else f"{'-':>7}"

    return (f"{row['shape']:>11} {row['axis']:>4} {row['variant']:>17} {row['copy_tb_s']:6.2f} "
            f"{tbs('eager_tb_s')} {tbs('compiled_tb_s')} {tbs('kernel_tb_s')} "
            f"{row['kernel_fraction_of_copy']:6.1%} {tbs('gpu_tb_s')} "
            f"{row['gpu_fraction_of_copy']:6.1%} {row['kernel_ms']:8.4f} {row['gpu_ms']:7.4f}")


if __name__ == "__main__":
    main()
