"""What the sweep engine costs per trial: the smoke sweep's trials shortened to one training step,
run on a local Ray, so that nearly all the time is scheduling, worker start-up and storing.

    PYTHONPATH=. python scripts/bench_scheduling.py [--seeds 4] [--cpus 2]

Prints the runner's own account: Ray's start, the time until the first trial starts (Ray starting
worker processes), and the median time from a trial finishing to the next one starting in its slot.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--cpus", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as results:
        seeds = ",".join(str(s) for s in range(args.seeds))
        command = [
            sys.executable, "-m", "fp4sweep", "run", "+sweep=smoke", "task=regression",
            "task.sizes.tiny.steps=1", "task.sizes.tiny.eval_every=1", f"seeds=[{seeds}]",
            f"ray.num_cpus={args.cpus}", f"results_dir={results}",
        ]  # fmt: skip
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True)
    print(done.stdout.strip())


if __name__ == "__main__":
    main()
