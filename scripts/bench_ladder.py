"""How much of the full grid's front a ladder finds, for how much of the grid's compute.

    PYTHONPATH=. python scripts/bench_ladder.py [--sweep ladder] [--results /tmp/bench_ladder]
        [--set KEY=VALUE ...]

1. The grid: every recipe of the sweep (conf/sweep/ladder.yaml by default: 145 recipes of the
   tiny regression task, three seeds) at the ladder's top fidelity, run in full into
   RESULTS/grid. Its trials are the ids of the ladder's top rung.
2. The ladder: the same sweep climbing its rungs (``fp4sweep.sweep.ladder``, as ``fp4sweep
   run`` runs it) into RESULTS/ladder.
3. The hypervolume of the front of the ladder's top rung (quality gap against modelled overhead)
   as a share of the grid front's, both from one reference point, in two ways: the report's
   (from the grid's data: its worst recipe pushed out by a tenth of the range,
   ``fp4sweep.analysis.pareto``), and a corner close to the grid's front (its own worst gap and
   overhead pushed out by a tenth of its range, as ``scripts/bench_adaptive.py`` does). A far
   corner, as the report's is when some recipe's gap is very large, credits any point near the
   front; the close one credits only the front itself. And the ladder's compute: the sum of the
   trial seconds (``time.wall_s``) of every rung, baselines included, as a share of the grid's.

A second run finds both stores complete and trains nothing: delete RESULTS to measure afresh.
The promotion rule has no randomness, so one ladder run is the measurement. Trial seconds, not
wall time, are compared, so a CPU shared with other work inflates both sides alike (not
exactly: rerun when the machine is quiet). ``--set`` passes overrides (``task=gpt``,
``size=small``, ``ladder.keep=10``, ``'ladder.rungs=[{steps:50},{steps:400}]'``) to rerun it on
another proxy.
"""

from __future__ import annotations

import argparse
import io
from dataclasses import replace
from pathlib import Path

import moocore
import numpy as np
import pandas as pd

from fp4sweep.analysis.pareto import OVERHEADS, QUALITY, ReferencePoint, pareto_fronts
from fp4sweep.analysis.quality import summarise_recipes, trial_gaps
from fp4sweep.results.store import ResultsStore
from fp4sweep.sweep.config import ConfigTree, RaySettings, load_settings
from fp4sweep.sweep.ladder import run_ladder, rung_plan
from fp4sweep.sweep.runner import run_trials, start_ray
from fp4sweep.sweep.rungs import split_ladder

TARGET_VOLUME, TARGET_COMPUTE = 0.95, 0.30


def stored(results: Path, ids: set[str] | None = None) -> pd.DataFrame:
    rows = ResultsStore(results).trials()
    return rows if ids is None else rows[rows["trial_id"].isin(ids)]


def front(rows: pd.DataFrame) -> np.ndarray:
    """The (quality gap, modelled overhead) points of the front of one task's trials."""
    runs, problems = trial_gaps(rows)
    if problems:
        raise SystemExit("; ".join(problems))
    summary, _ = pareto_fronts(summarise_recipes(runs), ReferencePoint())
    return summary[summary["front.model"]][[QUALITY, OVERHEADS["model"]]].to_numpy(dtype=float)


def report_corner(rows: pd.DataFrame) -> np.ndarray:
    """The report's reference point for these trials (from their data)."""
    runs, _ = trial_gaps(rows)
    _, volumes = pareto_fronts(summarise_recipes(runs), ReferencePoint())
    (row,) = volumes[volumes["overhead"].eq("model")].to_dict("records")
    return np.array([row["reference_quality_gap"], row["reference_overhead"]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", default="ladder", help="a sweep with a ladder block (conf/sweep/)")
    parser.add_argument("--results", type=Path, default=Path("/tmp/bench_ladder"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a Hydra override of the sweep (repeatable)")
    parser.add_argument("--cpus", type=int, default=2)
    args = parser.parse_args()

    tree = ConfigTree()
    ladder, overrides = split_ladder(tree, [f"+sweep={args.sweep}", *args.set, "progress_every=60"])
    if ladder is None:
        raise SystemExit(f"sweep {args.sweep!r} has no ladder: set ladder.rungs")
    settings = load_settings(tree, overrides)
    if len(settings.tasks) != 1:
        raise SystemExit(f"one task per benchmark, got {settings.tasks}: add --set task=NAME")
    grid_settings = replace(settings, results_dir=args.results.resolve() / "grid")
    ladder_settings = replace(settings, results_dir=args.results.resolve() / "ladder")
    print(ladder.describe())

    start_ray(RaySettings(address=None, num_cpus=args.cpus, max_in_flight=None, max_retries=2))
    grid = rung_plan(tree, settings, ladder.rungs[-1], promoted=None)
    run = run_trials(grid, grid_settings, rerun_failed=False)
    print(f"grid: {len(grid.recipes) - 1} recipes, {len(grid.trials)} trials ({run.to_run} trained now)")
    climbed = run_ladder(tree, ladder_settings, ladder, stream=io.StringIO())
    if climbed.stopped or climbed.interrupted:
        raise SystemExit(f"the ladder did not finish: {climbed.stopped or 'interrupted'}")
    for rung in climbed.rungs:
        print(f"  rung {rung.index + 1} ({rung.fidelity}): {rung.recipes} recipes, {rung.trials} trials"
              + (f", {rung.promoted} promoted" if rung.decisions is not None else ""))

    ids = {t.trial_id for t in grid.trials}
    grid_rows, ladder_rows = stored(grid_settings.results_dir, ids), stored(ladder_settings.results_dir)
    grid_front, ladder_front = front(grid_rows), front(ladder_rows[ladder_rows["trial_id"].isin(ids)])
    print(f"front: grid {len(grid_front)} recipes, ladder's top rung {len(ladder_front)}")
    ideal, nadir = grid_front.min(axis=0), grid_front.max(axis=0)
    for name, corner in (("the report's", report_corner(grid_rows)), ("close to the front", nadir + 0.1 * (nadir - ideal))):
        volume = moocore.hypervolume(ladder_front, ref=corner) / moocore.hypervolume(grid_front, ref=corner)
        print(f"hypervolume of the ladder's top-rung front, reference point {name} "
              f"({corner[0]:.4g}, {corner[1]:.4g}): {volume:.1%} of the grid front's (target >= {TARGET_VOLUME:.0%})")
    compute = ladder_rows["time.wall_s"].sum() / grid_rows["time.wall_s"].sum()
    print(f"compute of the ladder, every rung: {ladder_rows['time.wall_s'].sum():.0f} trial-seconds, "
          f"{compute:.1%} of the grid's {grid_rows['time.wall_s'].sum():.0f} (target <= {TARGET_COMPUTE:.0%})")
    print("the promotion rule has no randomness: one ladder run is the measurement")


if __name__ == "__main__":
    main()
