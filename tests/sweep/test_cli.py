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
    assert "sweep smoke: 102 trials (34 recipes x 3 seeds x 1 tasks)" in out
    assert "  scale           e8m0, ue5m3" in out
    assert "  block           16, 32" in out
    assert "  scale_rule      floor" in out
    assert "  rounding@bwd    rne, sr" in out
    assert "regression  tiny  102     0       102     no timings stored yet" in out


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
        "fp4sweep: error: quant.scale: unknown scale 'ue9m9'; valid: ['e8m0', 'ue4m3', 'ue5m3', 'fp32']"
    )
    assert not (tmp_path / "trials").exists()  # nothing ran, nothing was written


def test_axes_lists_every_axis_its_scopes_and_options(capsys):
    from fp4sweep.quant.axes import AXES

    assert main(["axes"]) == 0
    out = capsys.readouterr().out
    for axis in AXES.values():
        assert f"{axis.name}: {axis.meaning}" in out
        assert ", ".join(f"{o}*" if o == axis.default else o for o in axis.options) in out
    assert "scopes: none, bwd, fwd, dgrad, wgrad (whole GEMMs only)" in out  # the transform's
    assert "te_nvfp4: scale=ue4m3 block=16 scale_rule=nvfp4 tensor_scale=fp32 block_2d@w=true" in out


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("axes.transform@x=[rhadamard16]", "axes.transform@x: transform cannot be placed on 'x': both operands"),
        ("axes.rounding__up=[sr]", "axes.rounding__up: unknown scope 'up' of rounding"),
        ("quant.scalee=ue4m3", "quant.scalee: unknown axis 'scalee'; valid: ['quantize', 'elem', 'scale'"),
        ("axes.block_2d@w=[maybe]", "axes.block_2d@w: unknown block_2d 'maybe'; valid: ['false', 'true']"),
        ("seeds=[0,0]", "seeds: [0] listed more than once"),
        ("axes.scale=[]", "axes.scale: an empty list leaves the axis no option"),
        ("task=regresion", "task: unknown task 'regresion'; valid: ['classification', 'diffusion', 'gpt', 'regression']"),
    ],
)
def test_bad_scopes_and_values_exit_2_with_one_line_and_run_nothing(tmp_path, capsys, override, message):
    assert main(["run", "+sweep=smoke", override, f"results_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert err == f"fp4sweep: error: {err.removeprefix('fp4sweep: error: ')}" and err.count("\n") == 1
    assert message in err
    assert not any(tmp_path.iterdir())  # no store, no Ray: nothing ran


def test_a_misspelt_sweep_is_one_line(tmp_path, capsys):
    assert main(["plan", "+sweep=smok", f"results_dir={tmp_path}"]) == 2
    assert capsys.readouterr().err == (
        "fp4sweep: error: sweep: unknown sweep 'smok'; valid: ['adaptive', 'full', 'gpu_smoke', 'ladder', 'optimizers', 'paper', 'paper_cpu', 'placements', 'smoke']\n"
    )


def test_plan_of_the_full_sweep(tmp_path, capsys):
    assert main(["plan", "+sweep=full", f"results_dir={tmp_path}"]) == 0
    out = capsys.readouterr().out
    assert "sweep full: 57648 trials (4804 recipes x 3 seeds x 4 tasks)" in out
    assert "transform@wgrad  none, rhadamard16" in out and "block_2d@w       false, true" in out


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
    assert "regression  tiny  102     1       101     202.0 trial-hours (7200.0 s each)" in capsys.readouterr().out


@pytest.mark.slow
def test_no_cluster_at_the_address(tmp_path):
    done = fp4sweep_process("run", "+sweep=smoke", "ray.address=auto", f"results_dir={tmp_path}")
    assert done.returncode == 2
    assert "fp4sweep: error: ray.address='auto': Could not find any running Ray instance" in done.stderr
    assert "Traceback" not in done.stderr
