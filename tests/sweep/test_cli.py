"""The command line: plan and status output, and errors as one message with exit status 2."""

from __future__ import annotations

import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fp4sweep.cli import main
from fp4sweep.sweep.config import ConfigTree, load_settings
from fp4sweep.sweep.plan import expand
from fp4sweep.sweep.runner import PROJECT_ROOT
from fp4sweep.results.store import StoreWriter


def test_plan_counts_trials_per_task_and_lists_axes(tmp_path, capsys):
    assert main(["plan", "+sweep=smoke", f"results_dir={tmp_path}"]) == 0
    out = capsys.readouterr().out
    assert "sweep smoke: 20 trials (10 recipes x 2 seeds x 1 tasks)" in out
    assert "  scale         e8m0, ue5m3" in out
    assert "  block         32" in out
    assert "regression  tiny  20      0       20      no timings stored yet" in out


def test_plan_narrowed_by_overrides(tmp_path, capsys):
    args = ["plan", "+sweep=full", "task=gpt", "quant.block=16", "seeds=[0]", f"results_dir={tmp_path}"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "x 1 seeds x 1 tasks" in out and "\ngpt " in out and "regression" not in out


def test_status_of_an_empty_store(tmp_path, capsys):
    StoreWriter(tmp_path).close()
    assert main(["status", f"results_dir={tmp_path}"]) == 0
    assert "no trials" in capsys.readouterr().out


def test_status_names_a_file_of_the_wrong_type_without_a_traceback(tmp_path, capsys):
    StoreWriter(tmp_path).close()
    wrong = tmp_path / "trials" / "part-000001.parquet"
    pq.write_table(pa.table({"trial_id": ["t1"], "metric.val_loss": ["0.5"]}), wrong)
    assert main(["status", f"results_dir={tmp_path}"]) == 0
    captured = capsys.readouterr()
    assert captured.err == (
        f"warning: unreadable results file (its trials count as not run): {wrong}: "
        "ValueError: column 'metric.val_loss' is string, not double\n"
    )
    assert "no trials" in captured.out


@pytest.mark.parametrize("command", ["status", "report"])
def test_a_directory_without_a_store_is_one_line_and_exit_2(tmp_path, command, capsys):
    missing = tmp_path / "missing"
    assert main([command, "+sweep=smoke", f"results_dir={missing}"]) == 2
    assert capsys.readouterr().err == (
        f"fp4sweep: error: no results store at {missing}: the directory does not exist "
        "(`fp4sweep run` creates one)\n"
    )
    (tmp_path / "trials").write_text("")
    assert main([command, "+sweep=smoke", f"results_dir={tmp_path}"]) == 2
    assert capsys.readouterr().err == (
        f"fp4sweep: error: no results store at {tmp_path}: its trials/ is not a directory\n"
    )
    assert not (tmp_path / "report").exists()  # no page written


def fp4sweep_process(*args: str) -> subprocess.CompletedProcess:
    """The real entry point, as a user runs it, in a process of its own (no Ray yet)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.run([sys.executable, "-m", "fp4sweep", *args], cwd=PROJECT_ROOT, env=env,
                          capture_output=True, text=True)


def test_an_error_is_one_message_without_traceback(tmp_path):
    done = fp4sweep_process("run", "+sweep=smoke", "quant.scale=ue9m9", f"results_dir={tmp_path}")
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "fp4sweep: error: quant.scale: unknown scale 'ue9m9'; valid: ['e8m0', 'fp32', 'ue4m3', 'ue5m3']"
    )
    assert not (tmp_path / "trials").exists()  # nothing ran, nothing was written


def test_unknown_option_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["run", "--bogus"])
    assert exit_.value.code == 2
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_plan_estimates_compute_from_stored_timings(tmp_path, capsys):
    tree = ConfigTree()
    first = expand(tree, load_settings(tree, ["+sweep=smoke"])).trials[0]
    with StoreWriter(tmp_path) as writer:
        writer.add({"trial_id": first.trial_id, "attempt_id": "a", "task": "regression", "size": "tiny",
                    "status": "done", "time.wall_s": 7200.0})
    assert main(["plan", "+sweep=smoke", f"results_dir={tmp_path}"]) == 0
    assert "regression  tiny  20      1       19      38.0 trial-hours (7200.0 s each)" in capsys.readouterr().out


def test_no_cluster_at_the_address(tmp_path):
    done = fp4sweep_process("run", "+sweep=smoke", "ray.address=auto", f"results_dir={tmp_path}")
    assert done.returncode == 2
    assert "fp4sweep: error: ray.address='auto': Could not find any running Ray instance" in done.stderr
    assert "Traceback" not in done.stderr
