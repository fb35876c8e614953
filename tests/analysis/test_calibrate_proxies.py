"""scripts/calibrate_proxies.py: a table of gaps with intervals from real runs, one line and exit
status 2 for bad input."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHORT = ["steps=20", "eval_every=10", "n_train=512", "n_val=128", "batch_size=64"]


def calibrate(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "calibrate_proxies.py"), *args],
                          capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.slow  # trains six short runs in a fresh interpreter
def test_the_table_has_a_gap_and_interval_per_recipe():
    run = calibrate("--task", "regression", "--params", *SHORT, "--seeds", "0", "1",
                    "--workers", "1", "--presets", "mxfp4", "--variants", "scale=ue5m3")
    assert run.returncode == 0, run.stderr
    rows = [line.split("|")[1:-1] for line in run.stdout.splitlines() if line.startswith("| ")]
    assert [cells[0].strip() for cells in rows] == ["recipe", "bf16", "mxfp4", "mxfp4 + scale=ue5m3"]
    for cells in rows[2:]:
        gap, interval = float(cells[1]), cells[2].strip()
        low, high = (float(x) for x in interval.strip("[]").split(","))
        assert low < gap < high and gap > 0  # FP4 is worse than bf16 on every seed here
        assert cells[3].strip() == "0/2"


@pytest.mark.parametrize("args, message", [
    (["--task", "regression", "--size", "huge"], "unknown size 'huge'"),
    (["--task", "regression", "--params", "steps"], "--params takes KEY=VALUE"),
    (["--task", "regression", "--params", "stpes=3"], "unknown Config parameter(s) ['stpes']"),
    (["--task", "regression", "--variants", "scale=e9m0"], "e9m0"),
    (["--task", "regression", "--variants", "scale"], "--variants takes AXIS=VALUE"),
])
def test_bad_input_is_one_line_and_exit_2(args, message):
    run = calibrate(*args)
    assert run.returncode == 2 and message in run.stderr and run.stderr.count("\n") == 1
