"""Wall time of one GPT-2-small training step (forward, backward, AdamW) per recipe, in one run.

The model is the GPT task's (``fp4sweep.tasks.gpt.GPT``) at GPT-2 small's shape: 12 layers,
12 heads, 768 wide, 1024 tokens of context, with the task's character vocabulary size. Every
Linear but the LM head runs through the recipe (``quantize_model``), as in the task; the step
runs under bfloat16 autocast with float32 master weights and fused AdamW. Times are medians over
timed steps (CUDA events) after warm-up steps, on random tokens.

    PYTHONPATH=. python scripts/bench_step.py [--batch 32] [--recipes bf16 nvfp4 paper_best]

``--profile N`` also prints, per recipe, the N operations with the most device time over a few
profiled steps (``torch.profiler``), to show where a quantised step's extra time goes.
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch
import torch.nn.functional as F

from fp4sweep.quant import Recipe, quantize_model
from fp4sweep.quant.kernels import backend
from fp4sweep.tasks.gpt import GPT

GPT2_SMALL = dict(block_size=1024, n_layer=12, n_head=12, n_embd=768)


def step_times(recipe_name: str, batch: int, vocab: int, warmup: int, steps: int,
               profile_rows: int = 0) -> list[float]:
    torch.manual_seed(0)
    model = GPT(vocab, **GPT2_SMALL).cuda()
    model = quantize_model(model, Recipe.preset(recipe_name), exclude=("lm_head",), seed=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=6e-4, weight_decay=0.1, fused=True)
    tokens = torch.randint(vocab, (batch, GPT2_SMALL["block_size"] + 1), device="cuda")
    idx, targets = tokens[:, :-1], tokens[:, 1:]

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(idx)
            loss = F.cross_entropy(logits.reshape(-1, vocab), targets.reshape(-1))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    if profile_rows:
        print_profile(step, recipe_name, profile_rows)
    del model, optimizer
    torch.cuda.empty_cache()
    return times


def print_profile(step, recipe_name: str, rows: int, steps: int = 3) -> None:
    """The ``rows`` operations with the most device time, totals over ``steps`` steps."""
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as profiler:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    print(f"\n{recipe_name}: device time over {steps} steps", flush=True)
    print(profiler.key_averages().table(sort_by="self_device_time_total", row_limit=rows,
                                        max_name_column_width=60), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32, help="sequences of 1024 tokens per step")
    parser.add_argument("--vocab", type=int, default=65,
                        help="vocabulary size; 65 is the Shakespeare corpus' characters")
    parser.add_argument("--recipes", nargs="+", default=["bf16", "nvfp4", "paper_best"])
    parser.add_argument("--reference", nargs="*", default=[],
                        help="recipes to time again with the pure-PyTorch reference quantiser")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="print the N operations with the most device time per recipe")
    parser.add_argument("--json", help="write the measurements to this file")
    args = parser.parse_args()

    device = torch.cuda.get_device_name()
    runs = [(name, "auto") for name in args.recipes]
    runs += [(name, "reference") for name in args.reference]
    results = []
    for name, quantiser in runs:
        with backend.use_backend(quantiser):
            times = step_times(name, args.batch, args.vocab, args.warmup, args.steps,
                               args.profile)
        results.append(dict(recipe=name, quantiser="kernels" if quantiser == "auto" else quantiser,
                            median_ms=statistics.median(times), min_ms=min(times),
                            max_ms=max(times)))
        print(f"{name:>10} {results[-1]['quantiser']:>9}: {results[-1]['median_ms']:8.2f} ms",
              flush=True)
    base = next(r["median_ms"] for r in results if r["recipe"] == "bf16")
    tokens = args.batch * GPT2_SMALL["block_size"]
    print(f"\n{device}; GPT-2 small, batch {args.batch} x 1024 tokens, bf16 autocast, "
          "fused AdamW\n")
    print(f"{'recipe':>10} {'quantiser':>9} {'ms/step':>8} {'tokens/s':>9} {'vs bf16':>7}")
    for r in results:
        r["vs_bf16"] = r["median_ms"] / base
        print(f"{r['recipe']:>10} {r['quantiser']:>9} {r['median_ms']:8.2f} "
              f"{tokens / r['median_ms'] * 1e3:9.0f} {r['vs_bf16']:7.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(device=device, torch=torch.__version__, batch=args.batch,
                           results=results), f, indent=1)


if __name__ == "__main__":
    main()
