"""Throughput of a GPU sweep: several trials sharing each GPU against one trial per GPU at a time.

For each task, the first N trials of the gpu_smoke sweep run twice through the real runner and
store, each time on a fresh local Ray: once with the task's own GPU fraction (conf/task/NAME.yaml
resources.gpu, e.g. an eighth: eight trials per GPU) and once asking a whole GPU per trial.

    PYTHONPATH=. python scripts/bench_sweep.py [--tasks regression classification] [--trials 16]
                                               [--seeds 0 1]
                                               [--fraction F] [--modes MODE ...]
                                               [--out bench.json] [--keep DIR] [OVERRIDE ...]

``--fraction`` sets the GPU fraction of a packed trial (default: the task's own). Mode
``packed_mps`` runs packed again with NVIDIA's Multi-Process Service (a control daemon started
for that run and stopped after it), so that the trials' kernels run on the GPU at once instead
of taking turns in time slices.

Per run it prints trials per GPU-minute (finished trials over the loop's wall time and the GPUs),
the packed/whole-GPU ratio, and where the time outside training goes: inside the worker
(time.wall_s - time.train_s: imports, config, cost model, returning the result), between trials
(the runner's median hand-over from a trial finishing to the next one starting in its slot: Ray,
the driver's store writes), Ray's start and worker start-up (once per sweep). The table's last
columns are the scheduling figures: the seconds from the loop's start to the first trial
(worker start-up) and the median hand-over in milliseconds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fp4sweep.sweep.config import ConfigTree, load_settings  # noqa: E402
from fp4sweep.sweep.plan import expand  # noqa: E402
from fp4sweep.sweep.runner import RunReport, environment, run_trials  # noqa: E402
from fp4sweep.results.store import ResultsStore  # noqa: E402

MODES = {"packed": [], "one_per_gpu": ["task.resources.gpu.num_gpus=1"], "packed_mps": []}
MPS_VARIABLES = ("CUDA_MPS_PIPE_DIRECTORY", "CUDA_MPS_LOG_DIRECTORY")


def gpu_names() -> list[str]:
    """The cards, as nvidia-smi names them (empty without one)."""
    try:
        listed = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                                capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return []
    return [line.strip() for line in listed.stdout.splitlines() if line.strip()]


@contextlib.contextmanager
def mps_daemon(directory: Path) -> Iterator[None]:
    """NVIDIA's MPS control daemon, its pipes and logs under ``directory``, for the enclosed
    code: processes started inside (the local Ray and its workers) inherit the variables that
    lead them to it. Stopped, and the variables restored, on the way out."""
    paths = {name: directory / sub for name, sub in zip(MPS_VARIABLES, ("pipe", "log"))}
    for path in paths.values():
        path.mkdir(parents=True, exist_ok=True)
    with environment(**{name: str(path) for name, path in paths.items()}):
        subprocess.run(["nvidia-cuda-mps-control", "-d"], check=True)
        try:
            yield
        finally:
            subprocess.run(["nvidia-cuda-mps-control"], input="quit\n", text=True, check=False)


def run_mode(task: str, mode: str, trials: int, seeds: list[int], results: Path,
             extra: list[str]) -> dict[str, Any]:
    """Run the task's first ``trials`` gpu_smoke trials with ``seeds`` in one mode; measure from
    report and store."""
    tree = ConfigTree()
    seed_list = ",".join(map(str, seeds))
    overrides = ["+sweep=gpu_smoke", f"task={task}", f"seeds=[{seed_list}]", f"results_dir={results}",
                 "progress_every=60", *MODES[mode], *extra]  # fmt: skip
    settings = load_settings(tree, overrides)
    plan = expand(tree, settings)
    plan = replace(plan, trials=plan.trials[:trials])
    report = run_trials(plan, settings, rerun_failed=False)
    rows = ResultsStore(results).trials()
    return summarise(task, mode, report, rows)


def summarise(task: str, mode: str, report: RunReport, rows: Any) -> dict[str, Any]:
    finished = len(rows)
    wall = rows["time.wall_s"].astype(float)
    train = rows["time.train_s"].astype(float)
    per_trial = wall.mean() + report.handover_s  # a slot's time per trial in a long sweep
    return {
        "task": task,
        "mode": mode,
        "trials": finished,
        "status": {status: int(n) for status, n in rows["status"].value_counts().items()},
        "slots": report.slots,
        "ray_start_s": report.ray_start_s,
        "loop_s": report.loop_s,
        "worker_start_s": report.worker_start_s,
        "handover_s": report.handover_s,
        "trial_wall_s": wall.mean(),
        "trial_train_s": train.mean(),
        "step_ms": 1e3 * rows["time.step_s"].astype(float).mean(),
        # the share of a trial's slot time not spent in train(): in the worker and between trials
        "outside_training_in_worker": float(1 - train.sum() / wall.sum()),
        "outside_training_per_trial": float((wall - train).mean() + report.handover_s) / per_trial,
        # the same over the whole run: start-up and the last trials' tail (slots left idle) included
        "outside_training_whole_run": float(1 - train.sum() / (report.slots * report.loop_s)),
        "steady_trials_per_slot_minute": 60 / per_trial,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["regression", "classification"])
    parser.add_argument("--trials", type=int, default=16, help="trials per task and mode")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1],
                        help="the sweep's seeds (gpu_smoke has 10 recipes a task: 10 trials a seed)")
    parser.add_argument("overrides", nargs="*",
                        help="more overrides, e.g. device=cpu task.sizes.small.steps=20")
    parser.add_argument("--gpus", type=int, default=None, help="GPUs in use (default: nvidia-smi's count)")
    parser.add_argument("--fraction", type=float, help="GPU fraction of a packed trial")
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=["packed", "one_per_gpu"],
                        help="which runs to make, in this order (default: packed one_per_gpu)")
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    parser.add_argument("--keep", type=Path, help="keep each run's results store under this directory")
    args = parser.parse_args()

    cards = gpu_names()
    gpus = args.gpus or len(cards)
    if not gpus:
        parser.error("no GPU found (nvidia-smi lists none); `--gpus 1 device=cpu` tries it on CPUs")
    scratch = Path(tempfile.mkdtemp(prefix="bench_sweep_"))
    runs: list[dict[str, Any]] = []
    try:
        for task in args.tasks:
            for mode in args.modes:
                overrides = list(args.overrides)
                if args.fraction and mode != "one_per_gpu":
                    overrides.append(f"task.resources.gpu.num_gpus={args.fraction}")
                with (mps_daemon(scratch / "mps") if mode == "packed_mps"
                      else contextlib.nullcontext()):
                    run = run_mode(task, mode, args.trials, args.seeds, scratch / f"{task}-{mode}",
                                   overrides)
                run["trials_per_gpu_minute"] = run["trials"] / (run["loop_s"] / 60 * gpus)
                runs.append(run)
                print(json.dumps(run), flush=True)
                if args.out:  # after every run, so that a run cut short keeps what it measured
                    args.out.write_text(json.dumps({"cards": cards, "gpus": gpus, "runs": runs}, indent=1))
    finally:
        if args.keep:
            shutil.copytree(scratch, args.keep, dirs_exist_ok=True)
        shutil.rmtree(scratch)
    print_table(cards, gpus, runs)


def print_table(cards: list[str], gpus: int, runs: list[dict[str, Any]]) -> None:
    print(f"\n{gpus} x {cards[0] if cards else 'CPU'}")
    print(f"{'task':15} {'mode':12} {'trials':>6} {'slots':>5} {'loop s':>7} {'trial s':>7} {'step ms':>7} "
          f"{'/GPU-min':>8} {'ratio':>6} {'out/trial':>9} {'out/run':>7} {'start s':>7} {'handover ms':>11}")
    base = {r["task"]: r["trials_per_gpu_minute"] for r in runs if r["mode"] == "one_per_gpu"}
    for r in runs:
        ratio = r["trials_per_gpu_minute"] / base[r["task"]] if r["task"] in base else float("nan")
        print(f"{r['task']:15} {r['mode']:12} {r['trials']:>6} {r['slots']:>5} {r['loop_s']:>7.1f} "
              f"{r['trial_wall_s']:>7.2f} {r['step_ms']:>7.2f} {r['trials_per_gpu_minute']:>8.2f} "
              f"{ratio:>6.2f} "
              f"{r['outside_training_per_trial']:>9.2%} {r['outside_training_whole_run']:>7.1%} "
              f"{r['worker_start_s']:>7.1f} {r['handover_s'] * 1e3:>11.0f}")


if __name__ == "__main__":
    main()
