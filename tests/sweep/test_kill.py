"""The runner killed mid-sweep (SIGKILL) or stopped with Ctrl-C (SIGINT), then run again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq

from fp4sweep.sweep.runner import PROJECT_ROOT
from fp4sweep.sweep.store import ResultsStore

TEST_CONF = str(Path(__file__).parent / "conf")
METRICS = ["metric.train_loss", "metric.val_loss"]


def command(results: Path) -> list[str]:
    # Six trials of about a second each, two at a time; every result written as soon as it comes.
    return [
        sys.executable, "-m", "fp4sweep", "run", "--conf-dir", TEST_CONF, "+sweep=mini",
        "task=regression", "task.sizes.tiny.steps=1000", "ray.num_cpus=2", "flush_seconds=0",
        f"results_dir={results}",
    ]  # fmt: skip


def environment() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}


def run_to_the_end(results: Path) -> None:
    done = subprocess.run(command(results), env=environment(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr


def stored_ids(results: Path) -> list[str]:
    """Every row in the store, reading each visible file: all must be whole Parquet files."""
    ids = []
    for path in (results / "trials").glob("*.parquet"):
        assert not path.name.startswith(".")
        try:
            ids += pq.read_table(path, columns=["trial_id"])["trial_id"].to_pylist()
        except FileNotFoundError:  # compacted away between listing and reading
            return stored_ids(results)
    return ids


def interrupt_mid_sweep(results: Path, signum: int) -> subprocess.CompletedProcess:
    """Start the sweep and send ``signum`` once some but not all trials are stored."""
    process = subprocess.Popen(
        command(results), env=environment(), start_new_session=True, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while not (results / "trials").is_dir() or not stored_ids(results):
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.02)
        process.send_signal(signum)
        out, err = process.communicate(timeout=60)
    finally:
        # Whatever the driver left running (Ray's own processes) goes with its session.
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def test_sigkill_then_rerun_stores_each_trial_once_with_the_same_metrics(tmp_path):
    reference = tmp_path / "reference"
    run_to_the_end(reference)
    expected = ResultsStore(reference).trials().set_index("trial_id")[METRICS].sort_index()
    assert len(expected) == 6

    results = tmp_path / "results"
    killed = interrupt_mid_sweep(results, signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    assert 0 < len(set(stored_ids(results))) < 6

    run_to_the_end(results)
    attempts = ResultsStore(results).trials(latest=False)
    assert sorted(attempts["trial_id"]) == sorted(expected.index)  # each trial exactly once
    assert attempts["status"].eq("done").all()
    assert attempts.set_index("trial_id")[METRICS].sort_index().equals(expected)


def test_ctrl_c_keeps_every_finished_result(tmp_path):
    results = tmp_path / "results"
    stopped = interrupt_mid_sweep(results, signal.SIGINT)
    assert stopped.returncode == 130, stopped.stderr
    assert "Interrupted: finished trials are stored" in stopped.stdout
    finished = int(stopped.stdout.split(" of ")[0])
    assert len(stored_ids(results)) == finished > 0
    run_to_the_end(results)
    assert sorted(ResultsStore(results).trials(latest=False)["status"]) == ["done"] * 6
