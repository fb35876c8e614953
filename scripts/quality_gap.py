"""How far FP4 recipes fall behind bf16 on one task: each recipe trains with the same seeds, and
the script prints the final validation loss (mean and standard deviation over seeds) and its
relative gap to bf16, paired by seed (the quality measure of the reports).

    PYTHONPATH=$PWD python scripts/quality_gap.py --task gpt --size tiny \
        --recipes bf16 mxfp4 paper_best --seeds 0 1 2 \
        --set steps=300 eval_every=100 n_embd=64 n_head=4 block_size=64 batch_size=32 eval_batches=8

(about 12 minutes on one CPU core, most of it paper_best's Hadamard transforms and stochastic
rounding in the quantizers' PyTorch reference).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from fp4sweep.quant import Recipe
from fp4sweep.tasks import build_config, default_module, load_task

CONF_TASK = Path(__file__).resolve().parents[1] / "fp4sweep" / "conf" / "task"


def mean_sd(values: list[float]) -> str:
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.4f} ± {sd:.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", required=True, choices=["classification", "diffusion", "gpt"])
    parser.add_argument("--size", default="tiny")
    parser.add_argument("--recipes", nargs="+", default=["bf16", "mxfp4", "paper_best"],
                        help="Recipe presets; the first is the baseline")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="override fields of the size preset, e.g. epochs=2")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads per run")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    conf = OmegaConf.load(CONF_TASK / f"{args.task}.yaml")
    module = load_task(conf.get("module") or default_module(args.task))
    if args.size not in conf.sizes:
        parser.error(f"unknown size {args.size!r}; valid: {list(conf.sizes)}")
    params = OmegaConf.merge(conf.sizes[args.size], OmegaConf.from_dotlist(args.set))
    config = build_config(module.Config, OmegaConf.to_container(params))
    print(f"{args.task} ({args.size}): {config}")

    runs: dict[str, list] = {}
    for name in args.recipes:
        recipe = Recipe.preset(name)
        started = time.perf_counter()
        runs[name] = [module.train(config, recipe, seed, args.device) for seed in args.seeds]
        print(f"  {name}: {time.perf_counter() - started:.0f} s for {len(args.seeds)} seeds", flush=True)

    baseline = runs[args.recipes[0]]
    extra = [m for m in ("val_acc", "perplexity") if m in baseline[0].metrics]
    header = ["recipe", "val_loss", f"gap vs {args.recipes[0]}", *extra, "diverged", "gap per seed"]
    print("\n" + " | ".join(f"{h:>20}" for h in header))
    for name, results in runs.items():
        done = [(r.metrics, b.metrics) for r, b in zip(results, baseline) if not r.diverged]
        gaps = [100 * (r["val_loss"] - b["val_loss"]) / b["val_loss"] for r, b in done]
        cells = [name, mean_sd([r["val_loss"] for r, _ in done]), mean_sd(gaps) + " %"]
        cells += [mean_sd([r[m] for r, _ in done]) for m in extra]
        cells.append(f"{len(results) - len(done)}/{len(results)}")
        print(" | ".join(f"{c:>20}" for c in cells) + " | " + " ".join(f"{g:+.2f}%" for g in gaps))

if __name__ == "__main__":
    main()
