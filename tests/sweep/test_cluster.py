"""A sweep on a Ray cluster, as far as one machine allows: `ray start --head` on localhost, then
`fp4sweep run ... ray.address=HOST:PORT` as the README's cluster section has it. The trials run
in the cluster's workers and come back to the driver, which writes the store. On a node that
declares GPUs, Ray shares and spreads GPU trials as their task's fraction says."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pytest

from fp4sweep.sweep.runner import PROJECT_ROOT
from fp4sweep.results.store import ResultsStore

TEST_CONF = str(Path(__file__).parent / "conf")

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, head: subprocess.Popen, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if head.poll() is not None:
            raise RuntimeError(f"`ray start --head` exited with status {head.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise TimeoutError(f"no Ray head listening on port {port} after {seconds} s")


@pytest.fixture
def cluster_env() -> dict[str, str]:
    """The environment of the head and the driver. Ray's clusters authenticate with a token: a
    driver connecting by address needs RAY_AUTH_MODE=token and the cluster's token."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return {**env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}


@pytest.fixture
def ray_head(request, cluster_env):
    """A Ray head node of this test's own (not `ray stop`, which ends every Ray of the host):
    `--block` keeps it in one process whose end stops what it started. Its own temporary
    directory keeps it from becoming what `ray.address=auto` finds on this machine afterwards.
    (A short path: Ray's sockets live there, and socket paths are limited to about 100 bytes.)
    Indirect parameters, (CPUs, GPUs), set what the node declares: 2 CPUs and no GPU unless
    given."""
    cpus, gpus = getattr(request, "param", (2, 0))
    port = free_port()
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    head = subprocess.Popen(
        [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", f"--port={port}",
         f"--temp-dir={temp_dir}", f"--num-cpus={cpus}", f"--num-gpus={gpus}", "--include-dashboard=false",
         "--disable-usage-stats", "--block"],
        env=cluster_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for_port(port, head)
        yield f"127.0.0.1:{port}"
    finally:
        head.terminate()
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait()
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_sweep_on_a_running_cluster_stores_on_the_driver(ray_head, cluster_env, tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "fp4sweep", "run", "+sweep=smoke", f"ray.address={ray_head}",
         "seeds=[0]", "presets=[]", "axes.scale=[ue5m3]", "axes.block=[32]", "axes.tensor_scale=[none]",
         "axes.transform=[none]", "axes.rounding@bwd=[sr]",
         "task=regression", "task.sizes.tiny.steps=20", "task.sizes.tiny.eval_every=10",
         f"results_dir={tmp_path}"],
        cwd=PROJECT_ROOT, env=cluster_env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    trials = ResultsStore(tmp_path).trials()
    assert sorted(trials["recipe_label"]) == ["bf16", "scale=ue5m3 rounding@bwd=sr"]
    assert set(trials["status"]) == {"done"}
    assert set(trials["host"]) == {socket.gethostname()}
    # The cluster outlives the sweep: the driver disconnects, it does not stop a Ray it did not start.
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", int(ray_head.rsplit(":", 1)[1]))) == 0


@pytest.mark.parametrize("ray_head", [(16, 2)], indirect=True)
def test_gpu_trials_share_the_cluster_gpus_and_spread_over_them(ray_head, cluster_env, tmp_path):
    """A node that tells Ray of two GPUs (the probe task trains on the CPU whatever its device):
    each trial asks for a quarter of a GPU, so eight fit at once, and the six trials of the sweep,
    held until all have begun, need both GPUs; Ray gives each one GPU, in CUDA_VISIBLE_DEVICES."""
    log_dir = tmp_path / "gpus"
    log_dir.mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "fp4sweep", "run", "--conf-dir", TEST_CONF, "+sweep=mini", "task=gpu_probe",
         "device=cuda", f"ray.address={ray_head}", f"task.sizes.tiny.log_dir={log_dir}",
         "task.sizes.tiny.together=6", f"results_dir={tmp_path / 'results'}"],
        cwd=PROJECT_ROOT, env=cluster_env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "8 at a time" in done.stdout
    trials = ResultsStore(tmp_path / "results").trials()
    assert len(trials) == 6 and set(trials["status"]) == {"done"}
    assert set(trials["device"]) == {"cuda"}
    records = [json.loads(path.read_text()) for path in log_dir.glob("*.json")]
    assert len(records) == 6 and {record["device"] for record in records} == {"cuda"}
    assert all(len(r["gpu_ids"]) == 1 and r["visible"] == r["gpu_ids"][0] for r in records)
    per_gpu = Counter(record["gpu_ids"][0] for record in records)
    assert set(per_gpu) == {"0", "1"} and max(per_gpu.values()) <= 4
