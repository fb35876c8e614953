"""Sweeps on a local Ray: failures, resume, divergence, dead workers, damaged store files."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from fp4sweep.cli import main
from fp4sweep.sweep import runner
from fp4sweep.sweep.config import RaySettings, SweepError
from fp4sweep.sweep.runner import PROJECT_ROOT
from fp4sweep.results.store import ResultsStore

TEST_CONF = str(Path(__file__).parent / "conf")
COMMON = ["--conf-dir", TEST_CONF, "progress_every=5"]
pytestmark = pytest.mark.usefixtures("local_ray")


def fp4sweep(*args: str) -> int:
    command, *overrides = args
    return main([command, *COMMON, *overrides])


@pytest.mark.slow
def test_a_raising_trial_is_recorded_and_resume_reruns_only_it(tmp_path, capsys):
    fail_while = tmp_path / "broken"
    fail_while.touch()
    sweep = ["+sweep=mini", "task=faulty", "task.sizes.tiny.fail_seed=1",
             f"task.sizes.tiny.fail_while={fail_while}", f"results_dir={tmp_path / 'results'}"]

    assert fp4sweep("run", *sweep) == 1  # the sweep finished, with a failure
    latest = ResultsStore(tmp_path / "results").trials()
    assert len(latest) == 6
    failed = latest[latest["status"] == "failed"]
    assert len(failed) == 1 and (latest["status"] == "done").sum() == 5
    assert failed["seed"].item() == 1 and failed["recipe_label"].item() == "scale=ue5m3"
    assert failed["error.type"].item() == "RuntimeError"
    assert failed["error.message"].item() == "planned failure for seed 1"
    assert "faulty_task.py" in failed["error.traceback"].item()
    assert latest["error.type"].isna().sum() == 5

    capsys.readouterr()
    assert fp4sweep("status", *sweep) == 0
    out = capsys.readouterr().out
    assert "faulty  5     0         1       0        6" in out
    assert f"failed {failed['trial_id'].item()} faulty seed 1 scale=ue5m3: RuntimeError: planned failure" in out

    assert fp4sweep("run", *sweep) == 0  # `run` does not retry failures
    assert len(ResultsStore(tmp_path / "results").trials(latest=False)) == 6

    fail_while.unlink()
    assert fp4sweep("resume", *sweep) == 0
    attempts = ResultsStore(tmp_path / "results").trials(latest=False)
    assert len(attempts) == 7
    rerun = attempts.iloc[-1]
    assert rerun["trial_id"] == failed["trial_id"].item() and rerun["status"] == "done"
    assert (ResultsStore(tmp_path / "results").trials()["status"] == "done").all()


def test_nan_is_diverged(tmp_path):
    results = tmp_path / "results"
    code = fp4sweep("run", "+sweep=mini", "seeds=[0]", "task=regression", "task.sizes.tiny.lr=inf",
                    f"results_dir={results}")
    assert code == 0
    store = ResultsStore(results)
    latest = store.trials().set_index("recipe_label")
    assert latest["status"].to_dict() == {"bf16": "diverged", "scale=ue5m3": "diverged"}
    assert latest["metric.val_loss"].apply(math.isnan).all()
    # In bf16 the infinite step makes the weights NaN; FP4's saturation keeps the loss finite
    # but blown up, which the divergence guard catches too.
    curves = store.curves().set_index("trial_id")
    assert math.isnan(curves.loc[latest.loc["bf16", "trial_id"], "value"])
    assert curves.loc[latest.loc["scale=ue5m3", "trial_id"], "value"] > 1e6


@pytest.mark.slow
def test_a_dead_worker_is_retried(tmp_path):
    marker = tmp_path / "crashed-once"
    results = tmp_path / "results"
    code = fp4sweep("run", "+sweep=mini", "seeds=[0]", "task=faulty",
                    f"task.sizes.tiny.crash_marker={marker}", f"results_dir={results}")
    assert code == 0
    assert marker.exists()  # a worker process did die ...
    assert ResultsStore(results).trials()["status"].tolist() == ["done", "done"]  # ... and was retried


@pytest.mark.slow
def test_a_dead_worker_past_its_retries_is_a_failure(tmp_path):
    results = tmp_path / "results"
    code = fp4sweep("run", "+sweep=mini", "seeds=[0]", "task=faulty", "ray.max_retries=0",
                    f"task.sizes.tiny.crash_marker={tmp_path / 'crashed-once'}", f"results_dir={results}")
    assert code == 1
    latest = ResultsStore(results).trials()
    assert sorted(latest["status"]) == ["done", "failed"]
    assert "Worker" in latest.loc[latest["status"] == "failed", "error.type"].item()


WORKER_VIEW = """
import json, os, sys, ray
from fp4sweep.sweep.config import RaySettings
from fp4sweep.sweep.runner import start_ray
start_ray(RaySettings(address=None, num_cpus=1, max_in_flight=None, max_retries=0))
seen = ray.get(ray.remote(lambda: (os.environ["FP4SWEEP_DATA"], sys.path)).remote())
print(json.dumps({"worker": seen, "driver": [os.environ.get("FP4SWEEP_DATA"), os.environ.get("PYTHONPATH")]}))
"""


@pytest.mark.slow
def test_local_workers_get_the_data_path_and_this_checkout(tmp_path):
    """A local Ray's workers inherit the data path, made absolute, and this checkout on their
    path, from the environment its processes started with; the driver's is left as it was."""
    elsewhere = tmp_path / "elsewhere"
    env = {**os.environ, "FP4SWEEP_DATA": "some-data", "PYTHONPATH": f"{PROJECT_ROOT}{os.pathsep}{elsewhere}"}
    env.pop("RAY_ADDRESS", None)
    env.pop("RAY_AUTH_MODE", None)
    done = subprocess.run([sys.executable, "-c", WORKER_VIEW], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Token authentication" not in done.stderr  # Ray's warning about its default, every run
    seen = json.loads(done.stdout.splitlines()[-1])
    data, path = seen["worker"]
    assert data == str(tmp_path.resolve() / "some-data")
    assert path.index(str(PROJECT_ROOT)) < path.index(str(elsewhere))
    assert seen["driver"] == ["some-data", env["PYTHONPATH"]]


@pytest.mark.slow
def test_a_damaged_file_is_named_and_its_trials_run_again(tmp_path, capsys):
    results = tmp_path / "results"
    sweep = ["+sweep=mini", f"results_dir={results}"]
    assert fp4sweep("run", *sweep, "seeds=[0]") == 0
    before = ResultsStore(results).trials().set_index("trial_id")
    assert fp4sweep("run", *sweep, "seeds=[0,1]") == 0
    seed1 = set(ResultsStore(results).trials().query("seed == 1")["trial_id"])
    parts = sorted((results / "trials").glob("part-*.parquet"))
    assert len(parts) == 1  # the second run's trials, beside the first run's file
    damaged = parts[0]
    damaged.write_bytes(damaged.read_bytes()[:100])

    capsys.readouterr()
    assert fp4sweep("status", *sweep, "seeds=[0,1]") == 0
    captured = capsys.readouterr()
    assert f"unreadable results file (its trials count as not run): {damaged}" in captured.err
    assert "regression  2     0         0       2        4" in captured.out

    assert fp4sweep("run", *sweep, "seeds=[0,1]") == 0
    captured = capsys.readouterr()
    assert f"set aside (its trials run again): {damaged}" in captured.err
    assert "2 of 2 trials finished" in captured.out
    store = ResultsStore(results)
    after = store.trials(latest=False)
    assert store.problems == [] and len(after) == 4
    assert set(after.query("seed == 1")["trial_id"]) == seed1
    # The first run's results were kept, not redone.
    kept = after.set_index("trial_id").loc[before.index]
    pd.testing.assert_series_equal(kept["attempt_id"], before["attempt_id"])
    assert (results / "quarantine" / f"trials-{damaged.name}").exists()


def test_trials_whose_curves_file_is_gone_are_named_and_run_again(tmp_path, capsys):
    results = tmp_path / "results"
    sweep = ["+sweep=mini", "seeds=[0]", f"results_dir={results}"]
    assert fp4sweep("run", *sweep) == 0
    next((results / "curves").glob("base-*.parquet")).unlink()

    capsys.readouterr()
    assert fp4sweep("status", *sweep) == 0
    captured = capsys.readouterr()
    assert "its curves file is missing or unreadable" in captured.err
    assert "regression  0     0         0       2        2" in captured.out

    assert fp4sweep("run", *sweep) == 0
    assert "2 of 2 trials finished" in capsys.readouterr().out
    store = ResultsStore(results)
    assert store.problems == [] and store.curves()["trial_id"].nunique() == 2


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["+sweep=mini", "axes.scale=[ue9m9]"], "axes.scale: unknown scale 'ue9m9'; valid: ["),
        (["+sweep=typo"], "sweep 'typo': unknown key(s) ['sedes']"),
        (["+sweep=mini", "tasks=[regresion]"], "tasks: unknown task 'regresion'; valid: ["),
        (["+sweep=mini", "results_dir=/proc/fp4sweep-results"], "results_dir '/proc/fp4sweep-results' is not writable"),
        (["+sweep=mini", "task=regression", "task.resources.cpu.num_cpus=1000"],
         "task 'regression': a trial asks for 1000 CPU, more than any node of the Ray cluster has "
         "(the largest: 2 CPU); lower task.resources"),
    ],
)
def test_bad_input_exits_with_a_message(overrides, message, capsys):
    assert fp4sweep("run", *overrides) == 2
    err = capsys.readouterr().err
    assert err.startswith("fp4sweep: error: ") and message in err


def wandb_installed() -> bool:
    return importlib.util.find_spec("wandb") is not None


@pytest.mark.skipif(not wandb_installed(), reason="wandb is not installed (it is optional)")
def test_wandb_logs_one_offline_run_per_trial(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    results = tmp_path / "results"
    assert fp4sweep("run", "+sweep=mini", "seeds=[0]", "logger=wandb", f"results_dir={results}") == 0
    runs = sorted((results / "wandb" / "wandb").glob("offline-run-*"))
    assert sorted(r.name.rsplit("-", 1)[1] for r in runs) == sorted(ResultsStore(results).trials()["trial_id"])


def test_wandb_missing_is_a_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # what `import wandb` meets without it
    assert fp4sweep("run", "+sweep=mini", "logger=wandb", f"results_dir={tmp_path}") == 2
    assert "logger=wandb needs the wandb package: pip install 'fp4sweep[wandb]'" in capsys.readouterr().err


def test_scoped_axes_run_into_the_store_with_readable_labels_and_no_unset_axes(tmp_path):
    results = tmp_path / "results"
    sweep = ["+sweep=scoped", "quant.block_2d@w=true", "task.sizes.tiny.steps=20",
             "task=regression", f"results_dir={results}"]
    assert fp4sweep("run", *sweep) == 0
    rows = ResultsStore(results).trials().set_index("recipe_label")
    assert len(rows) == 5  # bf16, te_nvfp4 and the three other placements of dy's rounding and the rotation
    te = rows.loc["te_nvfp4"]
    assert (te["axis.transform@wgrad"], te["axis.rounding@dy"], te["axis.block_2d@w"]) == ("rhadamard16", "sr", "true")
    plain = rows.loc["scale=ue4m3 block=16 scale_rule=nvfp4 tensor_scale=fp32 block_2d@w=true"]
    assert (plain["axis.transform@wgrad"], plain["axis.rounding@dy"]) == ("none", "rne")
    axes = [c for c in rows.columns if c.startswith("axis.")]
    assert {"axis.transform@wgrad", "axis.rounding@dy", "axis.block_2d@w", "axis.scale"} <= set(axes)
    assert rows.drop(index="bf16")[axes].notna().all().all()  # only the baseline has no axes
    assert (rows["status"] == "done").all()


def test_an_address_where_no_ray_answers_is_given_up_after_the_stated_timeout(monkeypatch):
    monkeypatch.setattr(runner, "CONNECT_TIMEOUT_S", 1.0)
    started = time.monotonic()
    with pytest.raises(SweepError, match=r"^ray.address='127.0.0.1:1': no Ray cluster answered within 1 s "):
        runner.start_ray(RaySettings(address="127.0.0.1:1", num_cpus=None, max_in_flight=None, max_retries=0))
    assert 1.0 <= time.monotonic() - started < 5


def test_a_missing_data_set_is_named_before_ray_starts(tmp_path, monkeypatch, capsys):
    import ray

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray started")

    monkeypatch.setenv("FP4SWEEP_DATA", str(tmp_path / "no-data"))
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", no_ray)
    assert fp4sweep("run", "+sweep=mini", "task=classification", f"results_dir={tmp_path / 'results'}") == 2
    err = capsys.readouterr().err
    assert err.startswith("fp4sweep: error: task 'classification' (size 'tiny'): fashion_mnist (train) not found")
    assert "run `fp4sweep data fetch fashion_mnist`" in err and len(err.splitlines()) == 1


def test_ctrl_c_while_a_result_is_stored_waits_for_it():
    done = []
    with pytest.raises(KeyboardInterrupt):
        with runner.interrupt_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)  # the signal is delivered meanwhile
            done.append("stored and counted")
    assert done == ["stored and counted"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
