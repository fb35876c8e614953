"""One local Ray for the tests that run sweeps in this process."""

from __future__ import annotations

import pytest

from fp4sweep.sweep.config import RaySettings
from fp4sweep.sweep.runner import start_ray


@pytest.fixture(scope="session")
def local_ray():
    """Two trials at a time, as on a 2-core CI machine. Runs in this process use it instead of
    starting their own Ray, which saves seconds per run (the runner uses a Ray it finds)."""
    import ray

    start_ray(RaySettings(address=None, num_cpus=2, max_in_flight=None, max_retries=2))
    yield
    ray.shutdown()
