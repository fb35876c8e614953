"""How much of the grid's Pareto front an adaptive search finds with a tenth of the grid's trials.

    PYTHONPATH=. python scripts/bench_adaptive.py [--results DIR] [--fraction 0.1] [--seeds 5]

1. Ground truth: the adaptive sweep's axes narrowed to a CI-sized grid (the overrides in GRID:
   224 recipes of the tiny regression task, one seed) are run in full into DIR. A second run of
   the bench finds them there and trains nothing.
2. For each sampler and each of ``--seeds`` search seeds, an adaptive search with
   ``n_trials = fraction x the grid's recipes`` over that store, through ``run_search`` as
   ``fp4sweep run`` calls it. Every recipe it proposes is in the store already, so it trains
   nothing (checked) and proposes exactly what it would propose while training.
3. The hypervolume (moocore) of the front each search found, over the grid front's, both from
   one fixed reference point: the grid front's worst quality gap and worst overhead, each pushed
   out by a tenth of the front's range. So close a corner gives credit only for the front itself
   (a corner far out would let any nearby point score); random search is the yardstick.

Prints, per sampler, the median ratio over search seeds (with the worst, the best and how many
seeds reach 95%), how many proposals the searches made and how long they took (seconds of asking
and telling, no training). The ratio of one search depends much on whether it happens upon the
few recipes near the front's knee: compare samplers over more seeds (``--seeds 20``) too.
"""

from __future__ import annotations

import argparse
import io
import math
import statistics
import time
from dataclasses import replace
from pathlib import Path

import moocore
import numpy as np

from fp4sweep.sweep.adaptive import JOURNAL, SearchSpace, recipe_result, run_search
from fp4sweep.sweep.config import ConfigTree, RaySettings, RunSettings, load_settings
from fp4sweep.sweep.plan import expand
from fp4sweep.sweep.runner import run_trials, start_ray
from fp4sweep.sweep.search import SearchSettings, split_search
from fp4sweep.results.store import ResultsStore

GRID = [
    "+sweep=adaptive", "task=regression", "size=tiny", "seeds=[0]", "task.sizes.tiny.steps=100",
    "quant.scale_rule=nearest", "quant.rounding@fwd=rne", "quant.estimator=[ste,spline]",
]  # fmt: skip
# (sampler, startup): NSGA-II's population and TPE's random start (10, Optuna's default, is
# conf/sweep/adaptive.yaml's) against a budget of about 22 recipes.
SAMPLERS = [("random", 0), ("nsga2", 6), ("nsga2", 10), ("tpe", 6), ("tpe", 10)]
TARGET = 0.95


def grid_points(results: Path, space: SearchSpace) -> np.ndarray:
    """(quality gap, overhead) of every finished recipe of the grid, from the store."""
    rows = ResultsStore(results).trials().set_index("trial_id", drop=False)
    baselines = {t.spec["seed"]: float(rows.loc[t.trial_id, "metric.val_loss"]) for t in space.baselines}
    points = []
    for recipe in space.recipes:
        _, values = recipe_result([rows.loc[t.trial_id].to_dict() for t in space.trials(recipe)], baselines)
        if values is not None:
            points.append(values)
    return np.array(points)


def measure_search(
    tree: ConfigTree, settings: RunSettings, search: SearchSettings, reference: np.ndarray, grid_volume: float
) -> tuple[float, int, float]:
    """One search over the complete store: its front's share of the grid front's hypervolume,
    its proposals and its seconds."""
    started = time.monotonic()
    report = run_search(tree, settings, search, stream=io.StringIO())  # no progress lines
    seconds = time.monotonic() - started
    if report.run.counts:
        raise SystemExit(f"the search trained {dict(report.run.counts)}: the grid in the store is incomplete")
    found = np.array([values for _, values in report.front])
    return moocore.hypervolume(found, ref=reference) / grid_volume, report.proposals, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=Path("results/bench_adaptive"))
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--cpus", type=int, default=2)
    args = parser.parse_args()

    tree = ConfigTree()
    search, overrides = split_search(tree, [*GRID, f"results_dir={args.results}", "progress_every=60"])
    settings = load_settings(tree, overrides)
    start_ray(RaySettings(address=None, num_cpus=args.cpus, max_in_flight=None, max_retries=2))
    started = time.monotonic()
    grid = run_trials(expand(tree, settings), settings, rerun_failed=False)
    print(f"grid: {grid.to_run} trials trained now in {time.monotonic() - started:.0f} s {dict(grid.counts)}")

    space = SearchSpace(tree, settings)
    points = grid_points(settings.results_dir, space)
    front = points[moocore.is_nondominated(points)]
    ideal, nadir = front.min(axis=0), front.max(axis=0)
    reference = nadir + 0.1 * (nadir - ideal)
    grid_volume = moocore.hypervolume(front, ref=reference)
    n_trials = math.floor(args.fraction * len(space.recipes))
    print(f"grid: {len(space.recipes)} recipes, {len(points)} finished, {len(front)} on the front; "
          f"reference point (quality gap, overhead) = ({reference[0]:.4g}, {reference[1]:.4g})")
    print(f"searches: {n_trials} recipes each ({args.fraction:.0%} of the grid), seeds 0..{args.seeds - 1}")

    (settings.results_dir / JOURNAL).unlink(missing_ok=True)  # every study starts afresh
    print(f"sampler  startup  median HV ratio  worst   best    >= {TARGET:.0%}  proposals  s per search")
    for sampler, startup in SAMPLERS:
        runs = []
        for seed in range(args.seeds):
            one = replace(search, n_trials=n_trials, sampler=sampler, startup=startup, seed=seed,
                          study=f"bench-{sampler}-{startup}-{seed}")
            runs.append(measure_search(tree, settings, one, reference, grid_volume))
        ratios, proposals, seconds = zip(*runs)
        reached = f"{sum(r >= TARGET for r in ratios)}/{len(ratios)}"
        print(f"{sampler:<8} {startup:<8} {statistics.median(ratios):<16.3f} {min(ratios):<7.3f} "
              f"{max(ratios):<7.3f} {reached:<7} {statistics.fmean(proposals):<10.0f} "
              f"{statistics.fmean(seconds):.1f}")


if __name__ == "__main__":
    main()
