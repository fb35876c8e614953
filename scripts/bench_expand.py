"""Expanding the full sweep: `expand` in this process, and `fp4sweep plan +sweep=full` end to end
(a fresh process, imports included).

    PYTHONPATH=. python scripts/bench_expand.py
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from fp4sweep.sweep.config import ConfigTree, load_settings
from fp4sweep.sweep.plan import expand

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    tree = ConfigTree()
    settings = load_settings(tree, ["+sweep=full"])
    tree.option_node("task", settings.tasks[0])  # Hydra's first compose warms caches

    started = time.perf_counter()
    plan = expand(ConfigTree(), settings)  # a fresh tree: every task composed again
    expand_s = time.perf_counter() - started

    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "fp4sweep", "plan", "+sweep=full", "results_dir=/nonexistent"],
                   cwd=ROOT, check=True, capture_output=True)
    plan_s = time.perf_counter() - started

    trials = len(plan.trials)
    print(f"full sweep: {trials} trials, {len(plan.recipes)} recipes")
    print(f"expand: {expand_s:.2f} s, {expand_s / trials * 1e6:.0f} us/trial")
    print(f"`fp4sweep plan +sweep=full` in a fresh process: {plan_s:.1f} s")


if __name__ == "__main__":
    main()
