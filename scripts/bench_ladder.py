"""How much of the full grid's front a ladder finds, for how much of the grid's compute.

    PYTHONPATH=. python scripts/bench_ladder.py [--sweep ladder] [--results /tmp/bench_ladder]
        [--set KEY=VALUE ...]

1. The grid: every recipe of the sweep (conf/sweep/ladder.yaml by default: 145 recipes of the
   tiny regression task, three seeds) at the ladder's top fidelity, run in full into
   RESULTS/grid. Its trials are the ids of the ladder's top rung.
2. The ladder: the same sweep climbing its rungs (``fp4sweep.sweep.ladder``, as ``fp4sweep
   run`` runs it) into RESULTS/ladder.
3. The hypervolume of the front of the ladder's top rung (quality gap against modelled overhead)
   as a share of the grid front's, both from one reference point: the grid's, from its data (the
   report's rule, ``fp4sweep.analysis.pareto``); and the ladder's compute, the sum of the trial
   seconds (``time.wall_s``) of every rung, baselines included, as a share of the grid's.

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

import pandas as pd

from fp4sweep.analysis.pareto import ReferencePoint, pareto_fronts
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


def front_volume(rows: pd.DataFrame, reference: ReferencePoint) -> pd.Series:
    """The model-overhead front's hypervolume row (``pareto_fronts``) of one task's trials."""
    runs, problems = trial_gaps(rows)
    if problems:
        raise SystemExit("; ".join(problems))
    _, volumes = pareto_fronts(summarise_recipes(runs), reference)
    (row,) = volumes[volumes["overhead"].eq("model")].to_dict("records")
    return pd.Series(row)


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
    grid_front = front_volume(grid_rows, ReferencePoint())
    corner = ReferencePoint(grid_front["reference_quality_gap"], model_overhead=grid_front["reference_overhead"])
    ladder_front = front_volume(ladder_rows[ladder_rows["trial_id"].isin(ids)], corner)
    volume = ladder_front["hypervolume"] / grid_front["hypervolume"]
    compute = ladder_rows["time.wall_s"].sum() / grid_rows["time.wall_s"].sum()
    print(f"reference point (quality gap, modelled overhead): "
          f"({corner.quality_gap:.4g}, {corner.model_overhead:.4g}), from the grid's data")
    print(f"front: grid {grid_front['n_front']} recipes, ladder's top rung {ladder_front['n_front']}")
    print(f"hypervolume of the ladder's top-rung front: {volume:.1%} of the grid front's "
          f"(target >= {TARGET_VOLUME:.0%})")
    print(f"compute of the ladder, every rung: {ladder_rows['time.wall_s'].sum():.0f} trial-seconds, "
          f"{compute:.1%} of the grid's {grid_rows['time.wall_s'].sum():.0f} (target <= {TARGET_COMPUTE:.0%})")
    print("the promotion rule has no randomness: one ladder run is the measurement")


if __name__ == "__main__":
    main()
