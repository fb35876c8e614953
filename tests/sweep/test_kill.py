"""The runner killed mid-sweep (SIGKILL) and stopped with Ctrl-C (SIGINT), then run again.

The interrupted runs are separate processes (each starting its own Ray); the uninterrupted
reference and the final run use the tests' Ray in this process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from fp4sweep.cli import main
from fp4sweep.sweep.runner import PROJECT_ROOT
from fp4sweep.results.store import ResultsStore

pytestmark = pytest.mark.slow

TEST_CONF = str(Path(__file__).parent / "conf")
METRICS = ["metric.train_loss", "metric.val_loss"]


def arguments(results: Path) -> list[str]:
    # Six short trials, two at a time; every result written as soon as it comes.
    return [
        "run", "--conf-dir", TEST_CONF, "+sweep=mini", "task=regression", "task.sizes.tiny.steps=300",
        "ray.num_cpus=2", "flush_seconds=0", f"results_dir={results}",
    ]  # fmt: skip


def run_to_the_end(results: Path) -> None:
    """Run the sweep here, on the tests' Ray (also two CPUs, so the same threads per trial)."""
    assert main(arguments(results)) == 0


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


def interrupt_mid_sweep(results: Path, signum: int, stored_before: int = 0) -> subprocess.CompletedProcess:
    """Start the sweep and send ``signum`` once it has stored a trial (beyond ``stored_before``)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "fp4sweep", *arguments(results)],
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}, start_new_session=True, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while not (results / "trials").is_dir() or len(stored_ids(results)) <= stored_before:
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


@pytest.mark.usefixtures("local_ray")
def test_killed_then_interrupted_then_rerun_stores_each_trial_once_with_the_same_metrics(tmp_path):
    reference = tmp_path / "reference"
    run_to_the_end(reference)
    expected = ResultsStore(reference).trials().set_index("trial_id")[METRICS].sort_index()
    assert len(expected) == 6

    results = tmp_path / "results"
    killed = interrupt_mid_sweep(results, signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    stored = stored_ids(results)
    after_kill = len(stored)
    assert after_kill == len(set(stored))
    assert 0 < after_kill < 6

    # Ctrl-C: in-flight trials are cancelled, every finished one is kept.
    stopped = interrupt_mid_sweep(results, signal.SIGINT, stored_before=after_kill)
    assert stopped.returncode == 130, stopped.stderr
    assert "Interrupted: finished trials are stored; the same command continues." in stopped.stdout
    finished = int(stopped.stdout.split(" of ")[0])
    # What the run says it finished is what it stored, and reading every file shows no row twice.
    stored = stored_ids(results)
    assert len(stored) == len(set(stored)) == after_kill + finished

    run_to_the_end(results)
    attempts = ResultsStore(results).trials(latest=False)
    assert sorted(attempts["trial_id"]) == sorted(expected.index)  # each trial exactly once
    assert attempts["status"].eq("done").all()
    assert attempts.set_index("trial_id")[METRICS].sort_index().equals(expected)
