"""Is a proxy sensitive? Trains a task at one size with bf16, presets (mxfp4, nvfp4, paper_best)
and one-technique variants of a base recipe, several seeds each, and prints a markdown table of each
recipe's relative val-loss gap to bf16 (paired by seed, mean and 95 % interval over seeds: the
report's statistics, ``fp4sweep.analysis.quality.summarise_recipes``) and the seconds a trial took.

A proxy resolves the FP4 effects when the gaps of mxfp4 and nvfp4 are clearly above their
intervals' half-widths and a variant's interval does not overlap its base's.

    PYTHONPATH=$PWD python scripts/calibrate_proxies.py --task regression --size tiny
    PYTHONPATH=$PWD python scripts/calibrate_proxies.py --task gpt --size tiny --params steps=100
    # On a GPU, the `small` size:
    PYTHONPATH=$PWD python scripts/calibrate_proxies.py --task gpt --size small --device cuda --workers 1

docs/calibration.md holds the tables of the sizes as configured.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from omegaconf import OmegaConf

from fp4sweep.analysis.quality import summarise_recipes, trial_gaps
from fp4sweep.quant import Recipe
from fp4sweep.quant.recipe import preset_axes
from fp4sweep.tasks import build_config, default_module, load_task

CONF_TASK = Path(__file__).resolve().parents[1] / "fp4sweep" / "conf" / "task"
PRESETS = ["mxfp4", "nvfp4", "paper_best"]  # beside the bf16 baseline
# One technique each on top of the base recipe: the paper's techniques.
VARIANTS = ["transform=rhadamard32", "tensor_scale=fp32", "rounding@bwd=sr", "scale=ue5m3"]


def task_params(task: str, size: str, overrides: list[str]) -> dict[str, Any]:
    """The size preset of conf/task/TASK.yaml with ``KEY=VALUE`` overrides (YAML-typed)."""
    conf = OmegaConf.load(CONF_TASK / f"{task}.yaml")
    if size not in conf.sizes:
        raise ValueError(f"unknown size {size!r} for {task}; valid: {sorted(conf.sizes)}")
    malformed = [item for item in overrides if "=" not in item]
    if malformed:
        raise ValueError(f"--params takes KEY=VALUE, got {malformed}")
    merged = OmegaConf.merge(conf.sizes[size], OmegaConf.from_dotlist(overrides))
    return {**OmegaConf.to_container(merged), "exclude": list(conf.get("exclude", []))}


def recipes(presets: list[str], base: str, variants: list[str]) -> dict[str, dict[str, str]]:
    """Label -> axis values: bf16, the presets, and each variant on top of ``base``."""
    chosen = {name: preset_axes(name) for name in ["bf16", *presets]}
    for variant in variants:
        values = dict(preset_axes(base))
        for item in variant.split(","):
            key, equals, value = item.partition("=")
            if not equals:
                raise ValueError(f"--variants takes AXIS=VALUE[,AXIS=VALUE], got {variant!r}")
            values[key] = value
        chosen[f"{base} + {variant}"] = values
    return chosen


def run_one(job: tuple[str, dict[str, Any], str, dict[str, str], int, str]) -> dict[str, Any]:
    """One trial as the store records it (the columns the analysis reads)."""
    task, params, label, axes, seed, device = job
    torch.set_num_threads(1)
    module = load_task(default_module(task))
    started = time.perf_counter()
    result = module.train(build_config(module.Config, params), Recipe.from_axes(axes), seed, device)
    seconds = time.perf_counter() - started
    diverged = result.diverged or not math.isfinite(result.metrics.get("val_loss", math.nan))
    return {
        "trial_id": f"{label}/{seed}", "task": task, "size": "calibration", "seed": seed,
        "recipe_id": label, "recipe_label": label, "is_baseline": label == "bf16",
        "is_preset": True, "status": "diverged" if diverged else "done",
        "metric.val_loss": result.metrics.get("val_loss", math.nan),
        **({"metric.val_acc": result.metrics["val_acc"]} if "val_acc" in result.metrics else {}),
        "seconds": seconds,
    }


def table(trials: pd.DataFrame, order: list[str]) -> str:
    """The markdown table: gap and 95 % interval per recipe, diverged seeds, seconds a trial."""
    runs, missing = trial_gaps(trials)
    if missing:
        raise SystemExit("; ".join(missing))
    summary = summarise_recipes(runs.assign(**{"overhead.model": math.nan})).set_index("recipe_id")
    seconds = trials.groupby("recipe_id")["seconds"].mean()
    lines = ["| recipe | rel. val-loss gap | 95 % interval | diverged | s / trial |",
             "|---|---:|---|---:|---:|",
             f"| bf16 | 0 | | | {seconds['bf16']:.1f} |"]
    for label in order:
        row = summary.loc[label]
        interval = (f"[{row['loss_gap_ci_low']:+.3g}, {row['loss_gap_ci_high']:+.3g}]"
                    if math.isfinite(row["loss_gap_ci_low"]) else "-")
        lines.append(f"| {label} | {row['loss_gap_mean']:+.3g} | {interval} | "
                     f"{int(row['n_diverged'])}/{int(row['n_trials'])} | {seconds[label]:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", required=True, choices=["regression", "classification", "diffusion", "gpt"])
    parser.add_argument("--size", default="tiny")
    parser.add_argument("--params", nargs="*", default=[], metavar="KEY=VALUE",
                        help="override fields of the size preset, e.g. steps=100")
    parser.add_argument("--presets", nargs="*", default=PRESETS, help="named recipes beside bf16")
    parser.add_argument("--base", default="mxfp4", help="the preset the variants start from")
    parser.add_argument("--variants", nargs="*", default=VARIANTS, metavar="AXIS=VALUE[,AXIS=VALUE]",
                        help="one-technique changes of the base recipe")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, default=2, help="trials run at once, one thread each")
    args = parser.parse_args()

    module = load_task(default_module(args.task))
    try:
        params = task_params(args.task, args.size, args.params)
        build_config(module.Config, params)
        chosen = recipes(args.presets, args.base, args.variants)
        for axes in chosen.values():
            Recipe.from_axes(axes)
    except ValueError as error:
        parser.exit(2, f"calibrate_proxies: {error}\n")
    jobs = [(args.task, params, label, axes, seed, args.device)
            for label, axes in chosen.items() for seed in args.seeds]
    started = time.perf_counter()
    if args.workers > 1:
        with multiprocessing.get_context("spawn").Pool(args.workers) as pool:
            rows = pool.map(run_one, jobs)
    else:
        rows = [run_one(job) for job in jobs]
    overrides = " ".join(args.params) or "none"
    print(f"{args.task} ({args.size}; overrides: {overrides}), seeds {args.seeds}, "
          f"{time.perf_counter() - started:.0f} s wall\n")
    print(table(pd.DataFrame(rows), [label for label in chosen if label != "bf16"]))


if __name__ == "__main__":
    main()
