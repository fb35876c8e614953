"""Wall time of one training step (forward, backward, optimizer) per recipe, in one run.

``--task gpt`` (default): the GPT task's model (``fp4sweep.tasks.gpt.GPT``) at GPT-2 small's
shape: 12 layers, 12 heads, 768 wide, 1024 tokens of context, with the task's character
vocabulary size; every Linear but the LM head runs through the recipe (``quantize_model``), as
in the task; the step runs under bfloat16 autocast with float32 master weights and fused AdamW.
``--task classification``: the classification task's CNN at its ``small`` size (MNIST images,
batch 512, float32, AdamW); ``--task diffusion``: the diffusion task's U-Net at its ``small``
size (32x32 single-channel images, batch 128, float32, Adam, random timesteps); both keep their
stem and head in high precision as the tasks do. Adam and AdamW run fused, as the tasks run
them on CUDA (``optimizers.build_optimizer``), or the recipe's optimizer if it names another.
Times are medians over timed steps (CUDA events) after warm-up steps, on random inputs.

    PYTHONPATH=. python scripts/bench_step.py [--task gpt] [--batch 32] [--recipes bf16 nvfp4 paper_best]

``--profile N`` also prints, per recipe, the N operations with the most device time over a few
profiled steps (``torch.profiler``), and the device's busy time and the host's time per step, to
show where a quantized step's extra time goes and whether the host or the GPU bounds it.

``--sr-bits N`` times every quantized recipe that rounds stochastically a second time with N
random bits per decision (``QuantSpec.sr_bits``; at most 8 share one random word four ways).

``--traffic`` also counts, per quantized recipe, the bytes that the quantizer kernels move in
one step (each call reads its input and writes its output; with tensor scaling its amax pass
reads the input once more) and divides them by the copy bandwidth measured in the same run:
the time that quantizers which run one after another, each at the copy bandwidth, would add
to the bf16 step, whatever their arithmetic.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
from typing import Callable

import torch
import torch.nn.functional as F
import triton.testing

from fp4sweep.quant import QuantSpec, Recipe, dispatch, quantize_model
from fp4sweep.quant.kernels import launch
from fp4sweep.tasks import classification, datasets, diffusion
from fp4sweep.tasks.gpt import GPT
from fp4sweep.tasks.optimizers import build_optimizer

GPT2_SMALL = dict(block_size=1024, n_layer=12, n_head=12, n_embd=768)
CNN_SMALL = classification.Config(dataset="mnist")  # width 32, the `small` size's model
UNET_SMALL = diffusion.Config(dataset="mnist")  # 32 channels, 3 levels: the `small` size's model
CUDA = torch.device("cuda")
DEFAULT_BATCH = {"gpt": 32, "classification": CNN_SMALL.batch_size,
                 "diffusion": UNET_SMALL.batch_size}


def training_step(loss: Callable[[], torch.Tensor],
                  optimizer: torch.optim.Optimizer) -> Callable[[], None]:
    def step() -> None:
        loss().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def gpt_step(recipe: Recipe, batch: int, vocab: int) -> Callable[[], None]:
    model = GPT(vocab, **GPT2_SMALL).cuda()
    model = quantize_model(model, recipe, exclude=("lm_head",), seed=0)
    optimizer = build_optimizer(recipe.optimizer, model.parameters(), lr=6e-4, weight_decay=0.1,
                                device=CUDA)
    tokens = torch.randint(vocab, (batch, GPT2_SMALL["block_size"] + 1), device="cuda")
    idx, targets = tokens[:, :-1], tokens[:, 1:]

    def loss() -> torch.Tensor:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(idx)
            return F.cross_entropy(logits.reshape(-1, vocab), targets.reshape(-1))

    return training_step(loss, optimizer)


def classification_step(recipe: Recipe, batch: int, vocab: int) -> Callable[[], None]:
    model = classification.build_model(CNN_SMALL).cuda()
    model = quantize_model(model, recipe, exclude=CNN_SMALL.exclude, seed=0)
    optimizer = build_optimizer(recipe.optimizer, model.parameters(), lr=CNN_SMALL.lr,
                                weight_decay=CNN_SMALL.weight_decay, device=CUDA)
    images = torch.randn(batch, *datasets.IMAGE_SHAPES[CNN_SMALL.dataset], device="cuda")
    labels = torch.randint(classification.NUM_CLASSES, (batch,), device="cuda")
    return training_step(lambda: F.cross_entropy(model(images), labels), optimizer)


def diffusion_step(recipe: Recipe, batch: int, vocab: int) -> Callable[[], None]:
    model = diffusion.build_model(UNET_SMALL).cuda()
    model = quantize_model(model, recipe, exclude=UNET_SMALL.exclude, seed=0)
    optimizer = build_optimizer(recipe.optimizer, model.parameters(), lr=UNET_SMALL.lr, device=CUDA)
    channels, size = datasets.IMAGE_SHAPES[UNET_SMALL.dataset][0], diffusion.PADDED_SIZE
    images = torch.randn(batch, channels, size, size, device="cuda")
    timesteps = torch.randint(UNET_SMALL.timesteps, (batch,), device="cuda")
    noise = torch.randn_like(images)
    return training_step(lambda: F.mse_loss(model(images, timesteps), noise), optimizer)


# Each builds a task's model, optimizer and inputs for (recipe, batch, vocabulary size: GPT's).
TASK_STEPS = {"gpt": gpt_step, "classification": classification_step, "diffusion": diffusion_step}


def step_times(step: Callable[[], None], recipe_name: str, warmup: int, steps: int,
               profile_rows: int = 0) -> list[float]:
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
    return times


def print_profile(step, recipe_name: str, rows: int, steps: int = 3) -> None:
    """The ``rows`` operations with the most device time, totals over ``steps`` steps."""
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as profiler:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    events = profiler.key_averages()
    # As the table's total: kernels are events of their own device type, whose time operators
    # and annotated ranges (the optimizer's step) repeat.
    device_ms = sum(event.self_device_time_total for event in events
                    if event.device_type == torch.autograd.DeviceType.CUDA
                    and not event.is_user_annotation) / 1e3 / steps
    host_ms = sum(event.self_cpu_time_total for event in events) / 1e3 / steps
    print(f"\n{recipe_name}: device busy {device_ms:.2f} ms, host in operators {host_ms:.2f} ms "
          f"per step (profiled); device time over {steps} steps:", flush=True)
    print(events.table(sort_by="self_device_time_total", row_limit=rows,
                       max_name_column_width=60), flush=True)


def quantizer_bytes(step: Callable[[], None]) -> int:
    """Bytes the quantizer kernels read and write in one ``step`` (see the module docstring)."""
    total = 0

    def count(x: torch.Tensor, spec: QuantSpec) -> None:
        nonlocal total
        passes = 3 if spec.tensor_scale else 2
        total += passes * x.numel() * x.element_size()

    with launch.observe_calls(count):
        step()
        torch.cuda.synchronize()
    return total


def copy_bandwidth(nbytes: int = 2**28) -> float:
    """Bytes per second that ``copy_`` moves (read plus written) on a tensor beyond L2."""
    x = torch.randn(nbytes // 4, device="cuda")
    out = torch.empty_like(x)
    ms = triton.testing.do_bench(lambda: out.copy_(x), warmup=25, rep=100, return_mode="median")
    return 2 * nbytes / ms * 1e3


def with_sr_bits(recipe: Recipe, bits: int) -> Recipe:
    """``recipe`` with ``bits`` random bits for each operand that rounds stochastically."""
    return dataclasses.replace(recipe, **{
        name: dataclasses.replace(spec, sr_bits=bits)
        for name, spec in recipe.operands().items() if spec is not None and spec.rounding == "sr"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=list(TASK_STEPS), default="gpt")
    parser.add_argument("--batch", type=int,
                        help="sequences of 1024 tokens (gpt, default 32) or images "
                             "(classification 512, diffusion 128)")
    parser.add_argument("--vocab", type=int, default=65,
                        help="vocabulary size; 65 is the Shakespeare corpus' characters")
    parser.add_argument("--recipes", nargs="+", default=["bf16", "nvfp4", "paper_best"])
    parser.add_argument("--reference", nargs="*", default=[],
                        help="recipes to time again with the pure-PyTorch reference quantizer")
    parser.add_argument("--sr-bits", type=int, metavar="N",
                        help="time stochastically rounding recipes again with N random bits")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="print the N operations with the most device time per recipe")
    parser.add_argument("--traffic", action="store_true",
                        help="count the quantizers' bytes per step against the copy bandwidth")
    parser.add_argument("--json", help="write the measurements to this file")
    args = parser.parse_args()

    batch = args.batch or DEFAULT_BATCH[args.task]
    device = torch.cuda.get_device_name()
    runs = [(name, Recipe.preset(name), "auto") for name in args.recipes]
    if args.sr_bits:
        rebits = [(name, recipe, with_sr_bits(recipe, args.sr_bits)) for name, recipe, _ in runs]
        runs += [(f"{name}/sr{args.sr_bits}", changed, "auto")
                 for name, recipe, changed in rebits if changed != recipe]
    runs += [(name, Recipe.preset(name), "reference") for name in args.reference]
    results = []
    for name, recipe, quantizer in runs:
        torch.manual_seed(0)
        with dispatch.use_backend(quantizer):
            step = TASK_STEPS[args.task](recipe, batch, args.vocab)
            times = step_times(step, name, args.warmup, args.steps, args.profile)
            result = dict(recipe=name, quantizer="kernels" if quantizer == "auto" else quantizer,
                          median_ms=statistics.median(times), min_ms=min(times),
                          max_ms=max(times))
            if args.traffic and quantizer == "auto" and name != "bf16":
                result["quantizer_bytes"] = quantizer_bytes(step)
        del step  # and with it the model and optimizer
        torch.cuda.empty_cache()
        results.append(result)
        print(f"{name:>14} {results[-1]['quantizer']:>9}: {results[-1]['median_ms']:8.2f} ms",
              flush=True)
    base = next(r["median_ms"] for r in results if r["recipe"] == "bf16")
    if args.task == "gpt":
        examples, unit = batch * GPT2_SMALL["block_size"], "tokens/s"
        print(f"\n{device}; GPT-2 small, batch {batch} x 1024 tokens, bf16 autocast, "
              "fused AdamW\n")
    else:
        examples, unit = batch, "images/s"
        print(f"\n{device}; the {args.task} task's model (small), batch {batch}, float32\n")
    print(f"{'recipe':>14} {'quantizer':>9} {'ms/step':>8} {unit:>9} {'vs bf16':>7}")
    for r in results:
        r["vs_bf16"] = r["median_ms"] / base
        print(f"{r['recipe']:>14} {r['quantizer']:>9} {r['median_ms']:8.2f} "
              f"{examples / r['median_ms'] * 1e3:9.0f} {r['vs_bf16']:7.2f}x")
    copy = copy_bandwidth() if args.traffic else None
    for r in results:
        if "quantizer_bytes" in r:
            r["quantizer_ms_at_copy"] = r["quantizer_bytes"] / copy * 1e3
            bound = base + r["quantizer_ms_at_copy"]
            print(f"{r['recipe']}: the quantizers move {r['quantizer_bytes'] / 1e9:.1f} GB a "
                  f"step, {r['quantizer_ms_at_copy']:.2f} ms at the copy bandwidth "
                  f"({copy / 1e12:.2f} TB/s): bf16 step + that = {bound:.2f} ms "
                  f"({bound / base:.2f}x)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(device=device, torch=torch.__version__, task=args.task, batch=batch,
                           copy_bytes_per_s=copy, results=results), f, indent=1)


if __name__ == "__main__":
    main()
