"""Time `report_from_store` on a synthetic results store of 100,000 trial rows.

    PYTHONPATH=$PWD python scripts/bench_report.py [--rows 100000] [--store DIR]

The store follows the results-store contract: four tasks, a full factorial of eight technique
axes (3,456 recipes), seeds until the row count is reached (the last seed cut short, as in a sweep
still running), planted effects on the loss gap, some diverged and failed trials, and a JSON spec
per row. It is written as Parquet parts of 5,000 rows. The report's wall time is printed beside a
plain `pandas.read_parquet` of the same store, the least any reader has to pay.
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from fp4sweep.analysis import report_from_store

TASKS = ("gpt", "classification", "diffusion", "regression")
# axis -> {value: planted effect on the relative loss gap}
AXES = {
    "transform": {"none": 0.0, "hadamard16": -0.03, "hadamard32": -0.04, "hadamard64": -0.05,
                  "rhadamard16": -0.035, "rhadamard64": -0.055},
    "scale": {"e8m0": 0.0, "ue4m3": -0.02, "ue5m3": -0.03, "fp32": -0.035},
    "block": {"16": -0.01, "32": 0.0},
    "scale_rule": {"floor": 0.0, "ceil": -0.01, "nearest": -0.012},
    "rounding_fwd": {"rne": 0.0, "sr": 0.005},
    "rounding_bwd": {"rne": 0.0, "sr": -0.04},
    "estimator": {"ste": 0.0, "clipped_ste": -0.005, "spline": -0.01},
    "tensor_scale": {"False": 0.0, "True": -0.02},
}
ROWS_PER_PART = 5000


def synthetic_store(results_dir: Path, rows: int, rng: np.random.Generator) -> None:
    recipes = pd.DataFrame(list(itertools.product(*AXES.values())), columns=list(AXES))
    recipes["recipe_label"] = recipes.agg("/".join, axis=1)
    recipes["recipe_id"] = [f"r{i:06d}" for i in range(len(recipes))]
    recipes["effect"] = sum(recipes[axis].map(effects) for axis, effects in AXES.items())
    recipes["overhead"] = 0.02 + rng.uniform(0.0, 0.3, len(recipes))

    baseline = pd.DataFrame({"recipe_label": ["bf16"], "recipe_id": ["bf16"], "effect": [0.0],
                             "overhead": [0.0]})
    per_task = pd.concat([baseline, recipes], ignore_index=True)
    seeds = -(-rows // (len(TASKS) * len(per_task)))
    grid = [
        per_task.assign(task=task, seed=seed) for seed in range(seeds) for task in TASKS
    ]
    trials = pd.concat(grid, ignore_index=True).iloc[:rows]
    trials = _outcomes(trials, rng)
    results_dir.joinpath("trials").mkdir(parents=True, exist_ok=True)
    for part, start in enumerate(range(0, len(trials), ROWS_PER_PART)):
        chunk = pa.Table.from_pandas(trials.iloc[start:start + ROWS_PER_PART], preserve_index=False)
        pq.write_table(chunk, results_dir / "trials" / f"part-{part:06d}.parquet")


def _outcomes(grid: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """Fill the contract's columns for each (task, seed, recipe) row."""
    n = len(grid)
    baseline = grid["recipe_id"].eq("bf16").to_numpy()
    base_loss = 3.0 + grid["seed"].to_numpy() * 0.01
    gap = np.where(baseline, 0.0, 0.25 + grid["effect"].to_numpy() + rng.normal(0.0, 0.01, n))
    unstable = (
        grid["rounding_bwd"].eq("rne") & grid["scale"].eq("e8m0") & grid["transform"].eq("none")
    ).to_numpy()
    draw = rng.uniform(size=n)
    status = np.select(
        [~baseline & unstable & (draw < 0.5), ~baseline & (draw > 0.995)],
        ["diverged", "failed"],
        "done",
    )
    done = status == "done"
    now = pd.Timestamp("2025-01-01", tz="UTC")
    table = pd.DataFrame({
        "trial_id": [f"t{i:07d}" for i in range(n)],
        "schema_version": np.full(n, 1, dtype=np.int32),
        "sweep": "bench",
        "task": grid["task"].to_numpy(),
        "size": "tiny",
        "seed": grid["seed"].to_numpy(dtype=np.int64),
        "recipe_id": grid["recipe_id"].to_numpy(),
        "recipe_label": grid["recipe_label"].to_numpy(),
        "is_baseline": baseline,
    })
    for axis in AXES:
        table[f"axis.{axis}"] = grid[axis].where(~baseline, None).to_numpy()
    step_s = 0.05 * (1 + grid["overhead"].to_numpy() + rng.normal(0.0, 0.02, n))
    table = table.assign(**{
        "status": status,
        "metric.val_loss": np.where(done, base_loss * (1 + gap), np.nan),
        "metric.train_loss": np.where(done, base_loss * (1 + gap) - 0.1, np.nan),
        "overhead.model": grid["overhead"].to_numpy(),
        "overhead.model_fwd": grid["overhead"].to_numpy() / 3,
        "overhead.model_bwd": grid["overhead"].to_numpy() * 2 / 3,
        "overhead.points": np.where(baseline, 0.0, 3.0),
        "time.train_s": step_s * 1000,
        "time.step_s": step_s,
        "time.wall_s": step_s * 1100,
        "error.type": np.where(status == "failed", "RuntimeError", None),
        "error.message": np.where(status == "failed", "synthetic failure", None),
        "error.traceback": np.where(status == "failed", "Traceback (most recent call): ...", None),
        "host": "node0",
        "device": "cuda:0",
        "version.fp4sweep": "0.1.0",
        "version.torch": "2.13.0",
        "started_at": now,
        "finished_at": now + pd.to_timedelta(np.arange(n), unit="s"),
    })
    table["started_at"] = table["started_at"].astype("datetime64[us, UTC]")
    table["finished_at"] = table["finished_at"].astype("datetime64[us, UTC]")
    specs = grid[["task", "seed", "recipe_label"]].to_dict(orient="records")
    table["spec"] = [json.dumps({**spec, "padding": "x" * 400}) for spec in specs]
    return table


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=100_000, help="trial rows in the store")
    parser.add_argument("--store", type=Path, help="keep the store here (default: a temp dir)")
    args = parser.parse_args()
    if args.rows < 1:
        parser.error(f"--rows must be positive, got {args.rows}")

    with tempfile.TemporaryDirectory() as scratch:
        results_dir = args.store or Path(scratch) / "results"
        synthetic_store(results_dir, args.rows, np.random.default_rng(0))

        start = time.perf_counter()
        pd.read_parquet(results_dir / "trials")
        read_s = time.perf_counter() - start
        start = time.perf_counter()
        page = report_from_store(results_dir, Path(scratch) / "report")
        report_s = time.perf_counter() - start

        recipes = pd.read_csv(page.parent / "recipes.csv")
        print(f"rows: {args.rows}, recipes per task: {len(recipes) // len(TASKS)}")
        print(f"pandas.read_parquet of the store: {read_s:.2f} s")
        print(f"report_from_store:                {report_s:.2f} s "
              f"({report_s / read_s:.1f}x the plain read)")
        print(f"report page: {page.stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
