"""Expanding the full sweep: one Hydra compose per trial against composing each option once and
merging, in the same run; and `fp4sweep plan +sweep=full` end to end (a fresh process, imports
included).

    PYTHONPATH=. python scripts/bench_expand.py [--sample 40]
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import time
from pathlib import Path

from fp4sweep.sweep.config import ConfigTree, load_settings
from fp4sweep.sweep.plan import expand

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample", type=int, default=40, help="trials composed one by one")
    args = parser.parse_args()

    tree = ConfigTree()
    settings = load_settings(tree, ["+sweep=full"])
    tree.option_node("task", settings.tasks[0])  # Hydra's first compose warms caches

    started = time.perf_counter()
    plan = expand(ConfigTree(), settings)  # a fresh tree: every option composed again
    merged_s = time.perf_counter() - started
    trials = len(plan.trials)

    sample = random.Random(0).sample([t for t in plan.trials if t.recipe.axes], args.sample)
    started = time.perf_counter()
    composed = [tree.compose_trial({"task": t.task.name, **t.recipe.axes}, t.spec["seed"]) for t in sample]
    per_compose_s = (time.perf_counter() - started) / len(sample)
    assert all(t.config == c for t, c in zip(sample, composed)), "merged config differs from composed"

    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "fp4sweep", "plan", "+sweep=full", "results_dir=/nonexistent"],
                   cwd=ROOT, check=True, capture_output=True)
    plan_s = time.perf_counter() - started

    print(f"full sweep: {trials} trials, {len(plan.recipes)} recipes")
    print(f"compose per trial: {per_compose_s * 1e3:.1f} ms/trial -> {per_compose_s * trials:.0f} s "
          f"for the sweep (measured on {len(sample)} trials)")
    print(f"compose each option once + merge: {merged_s:.2f} s for the sweep, "
          f"{merged_s / trials * 1e6:.0f} us/trial ({per_compose_s * trials / merged_s:.0f}x faster); "
          f"the {len(sample)} merged configs equal the composed ones")
    print(f"`fp4sweep plan +sweep=full` in a fresh process: {plan_s:.1f} s")


if __name__ == "__main__":
    main()
