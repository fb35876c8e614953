"""Running trials on Ray and storing what they return.

Plain Ray core: one remote function per task family with that family's resources, a bounded
window of trials in flight, workers reused across trials (Ray gives GPU tasks a fresh process per
call unless told otherwise), Ray's retries for a trial whose worker died. The driver is the only
writer of the store; Ctrl-C stores everything finished and stops what is in flight (with the
local Ray the run started, or cancelled on a Ray it found running).

The loop takes its trials from a ``TrialFeed``: a plan's fixed list (``PlanFeed``), or a proposer
that decides what to run next from the results so far (``fp4sweep.sweep.adaptive``).
"""

from __future__ import annotations

import bisect
import contextlib
import datetime as dt
import logging
import math
import os
import re
import signal
import socket
import statistics
import sys
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TextIO

import fp4sweep
from fp4sweep.sweep.config import RaySettings, RunSettings, SweepError
from fp4sweep.results.ids import canonical_json
from fp4sweep.sweep.plan import Plan, TaskPlan, Trial
from fp4sweep.sweep.progress import Progress
from fp4sweep.results.schema import SCHEMA_VERSION
from fp4sweep.results.store import ResultsStore, StoreWriter
from fp4sweep.sweep.trial import TrialOutcome, lost_outcome, run_trial, task_config
from fp4sweep.sweep.wandb_log import make_logger
from fp4sweep.tasks import load_task
from fp4sweep.tasks.datasets import DataNotFoundError, check_data

PROJECT_ROOT = Path(fp4sweep.__file__).resolve().parents[1]
RAY_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"
CONNECT_TIMEOUT_S = 10.0  # how long a run waits for the Ray cluster at ray.address to answer


@dataclass
class RunReport:
    """What one ``run``/``resume`` did, for the command line to print."""

    to_run: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    interrupted: bool = False
    ray_start_s: float = 0.0
    loop_s: float = 0.0  # from the first submission to the last result
    slots: int = 0  # trials the cluster runs at once
    loop_started_at: dt.datetime | None = None
    # (started_at, finished_at) of every finished trial, as its worker saw them
    spans: list[tuple[dt.datetime, dt.datetime]] = field(default_factory=list)

    @property
    def worker_start_s(self) -> float:
        """From the first submission to the first trial starting: Ray starting worker processes."""
        if not self.spans or self.loop_started_at is None:
            return math.nan
        return (min(start for start, _ in self.spans) - self.loop_started_at).total_seconds()

    @property
    def handover_s(self) -> float:
        """Median time from a trial finishing to the next one starting in the freed slot."""
        finishes = sorted(finish for _, finish in self.spans)
        gaps = []
        for start in sorted(start for start, _ in self.spans)[self.slots :]:
            earlier = finishes[: bisect.bisect_right(finishes, start)]
            if earlier:
                gaps.append((start - earlier[-1]).total_seconds())
        return statistics.median(gaps) if gaps else math.nan


def trials_to_run(plan: Plan, statuses: dict[str, str], rerun_failed: bool) -> list[Trial]:
    """Trials with no result yet (never run, or lost in flight), and the failed ones if asked."""
    wanted = {None, "failed"} if rerun_failed else {None}
    return [t for t in plan.trials if statuses.get(t.trial_id) in wanted]


def check_tasks(trials: list[Trial], data: bool) -> None:
    """Import each task module and build each task config once, before anything runs; with
    ``data``, check that the data set each names is in the data directory."""
    seen: set[tuple[str, str, str]] = set()
    for trial in trials:
        task = trial.task
        if (task.module, task.name, task.size) in seen:
            continue
        seen.add((task.module, task.name, task.size))
        try:
            config = task_config(trial.spec, load_task(task.module).Config)
            if data:
                check_data(config)
        except (ValueError, DataNotFoundError) as error:
            raise SweepError(f"task {task.name!r} (size {task.size!r}): {error}") from None


class TrialFeed(Protocol):
    """Where the scheduling loop gets the trials it runs, and whom it tells of each result."""

    # A trial of every task the feed may hand out: the tasks are checked and placed up front.
    task_trials: list[Trial]

    def take(self, room: int) -> list[Trial]:
        """At most ``room`` trials to submit now; none while waiting for those in flight."""

    def finished(self, trial: Trial, row: dict[str, Any]) -> None:
        """A trial's results-store row, once the store writer has flushed as its settings say."""

    def remaining(self) -> int:
        """How many trials are still to come, at most (for progress)."""


class PlanFeed:
    """A fixed list of trials, handed out in order."""

    def __init__(self, trials: list[Trial]) -> None:
        self.task_trials = trials
        self._queue = deque(trials)

    def take(self, room: int) -> list[Trial]:
        return [self._queue.popleft() for _ in range(min(room, len(self._queue)))]

    def finished(self, trial: Trial, row: dict[str, Any]) -> None:
        """Nothing to learn: the list is fixed."""

    def remaining(self) -> int:
        return len(self._queue)


def outcome_row(trial: Trial, sweep: str, outcome: TrialOutcome) -> dict[str, Any]:
    """The results-store row of one attempt (README.md's "Results store" lists the columns)."""
    row: dict[str, Any] = {
        "trial_id": trial.trial_id,
        "attempt_id": uuid.uuid4().hex,
        "schema_version": SCHEMA_VERSION,
        "sweep": sweep,
        "task": trial.task.name,
        "size": trial.task.stored_size,
        "seed": trial.spec["seed"],
        "recipe_id": trial.recipe.recipe_id,
        "recipe_label": trial.recipe.label,
        "is_baseline": trial.recipe.is_baseline,
        "is_preset": trial.recipe.is_preset,
        "status": outcome.status,
        "host": outcome.host,
        "device": outcome.device,
        "started_at": outcome.started_at,
        "finished_at": outcome.finished_at,
        "spec": canonical_json(trial.spec),
    }
    families = {
        "axis": trial.recipe.axes or {},
        "metric": outcome.metrics,
        "overhead": outcome.overhead,
        "time": outcome.timing,
        "error": outcome.error or dict.fromkeys(("type", "message", "traceback")),
        "version": outcome.versions,
    }
    for family, values in families.items():
        row.update({f"{family}.{name}": value for name, value in values.items()})
    return row


def run_trials(
    plan: Plan, settings: RunSettings, rerun_failed: bool, stream: TextIO | None = None
) -> RunReport:
    """Run what the store lacks (and what failed, for ``resume``), storing each result."""

    def plan_feed(store: ResultsStore) -> PlanFeed:
        return PlanFeed(trials_to_run(plan, store.statuses(), rerun_failed))

    return run_feed(plan_feed, plan.sweep, settings, stream)


def run_feed(
    make_feed: Callable[[ResultsStore], TrialFeed],
    sweep: str,
    settings: RunSettings,
    stream: TextIO | None = None,
) -> RunReport:
    """Run the trials of the feed that ``make_feed`` builds from the store, storing each result.

    The feed is built once the store is locked for writing and its damaged files are set aside.
    Uses the Ray this process is already connected to, if any; otherwise starts (and afterwards
    stops) a local one, or connects to ``ray.address``.
    """
    stream = stream or sys.stderr
    report = RunReport()
    with StoreWriter(settings.results_dir, flush_seconds=settings.flush_seconds) as writer:
        for note in writer.quarantined:
            print(f"warning: unreadable results file set aside (its trials run again): {note}", file=stream)
        feed = make_feed(ResultsStore(settings.results_dir))
        report.to_run = feed.remaining()
        if not report.to_run:
            return report
        # The data is looked for here when the trials run on this machine; a cluster's nodes
        # may hold it where the driver does not.
        check_tasks(feed.task_trials, data=settings.ray.address is None)
        logger = make_logger(settings.logger, settings.results_dir)
        import ray

        connected = ray.is_initialized()
        started = time.monotonic()
        if not connected:
            start_ray(settings.ray)
        report.ray_start_s = time.monotonic() - started
        try:
            # A Ray this run started goes down with it, and its workers with it; one it found
            # running stays up, so what is in flight there must be cancelled.
            _schedule(ray, feed, sweep, settings, writer, logger, report, stream,
                      cancel_on_interrupt=connected)
        finally:
            if not connected:
                ray.shutdown()
    return report


def start_ray(settings: RaySettings) -> None:
    """Start a local Ray, or connect to ``settings.address``, with what trial workers need."""
    import ray

    data = str(Path(os.environ.get("FP4SWEEP_DATA", "data")).resolve())
    local = settings.address is None
    if not local:
        wait_for_address(settings.address)
    options = dict(include_dashboard=False,
                   log_to_driver=False,  # trial output would break the progress line; failures are stored
                   logging_level="WARNING")
    try:
        if local:
            # Workers of a local Ray inherit the environment its processes start with. A runtime
            # environment would do the same, but Ray starts workers for it only when the first
            # trial asks, where it has workers of the plain environment ready from the start.
            # "local" starts a Ray of our own: left out, Ray would join the latest cluster
            # started on this machine (or the one RAY_ADDRESS names), which may be another user's.
            # Ray warns on every start of a local cluster that it enables token authentication,
            # its default: news to nobody running a sweep on their own machine.
            with environment(FP4SWEEP_DATA=data, PYTHONPATH=_with_project(os.environ.get("PYTHONPATH"))), \
                    _quiet(RAY_AUTH_LOGGER):
                ray.init(address="local", num_cpus=settings.num_cpus, **options)
        else:
            env_vars = {
                # Tasks read their data from here; workers on other hosts get the driver's path.
                "FP4SWEEP_DATA": data,
                "PYTHONPATH": _with_project("${PYTHONPATH}"),
            }
            ray.init(address=settings.address, runtime_env={"env_vars": env_vars}, **options)
    except ConnectionError as error:
        raise SweepError(f"ray.address={settings.address!r}: {error}") from None


def wait_for_address(address: str) -> None:
    """Wait up to ``CONNECT_TIMEOUT_S`` for something to accept connections at a ``host:port``
    address (``ray://`` too); SweepError if nothing does. Ray itself retries for minutes."""
    match = re.fullmatch(r"(?:ray://)?\[?([^\[\]]+?)\]?:(\d+)", address)
    if match is None:
        return  # "auto", or a form Ray resolves itself
    host, port = match.group(1), int(match.group(2))
    deadline = time.monotonic() + CONNECT_TIMEOUT_S
    while True:
        try:
            socket.create_connection((host, port), timeout=max(0.1, deadline - time.monotonic())).close()
            return
        except OSError as error:
            if time.monotonic() >= deadline:
                raise SweepError(
                    f"ray.address={address!r}: no Ray cluster answered within {CONNECT_TIMEOUT_S:g} s "
                    f"({error.strerror or error}); start one with `ray start --head`, or check the address"
                ) from None
            time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))


def _with_project(pythonpath: str | None) -> str:
    """This checkout first, so that workers run the driver's code (and tests' task modules)."""
    return os.pathsep.join(filter(None, [str(PROJECT_ROOT), pythonpath]))


@contextlib.contextmanager
def interrupt_deferred() -> Iterator[None]:
    """Ctrl-C (SIGINT) held back until the block ends, then raised as KeyboardInterrupt."""
    previous = signal.getsignal(signal.SIGINT)
    # Only the main thread receives signals; a handler not set from Python cannot be restored.
    if threading.current_thread() is not threading.main_thread() or previous is None:
        yield
        return
    received: list[int] = []
    try:
        signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt


@contextlib.contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    """The named logger's warnings suppressed (errors still shown)."""
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


@contextlib.contextmanager
def environment(**values: str) -> Iterator[None]:
    """``os.environ`` with ``values`` set, restored on the way out."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@dataclass(frozen=True)
class _Placement:
    remote: Any  # the Ray remote function with this task family's resources
    device: str
    threads: int
    fits: int  # how many such trials the cluster runs at once


def _placement(ray: Any, task: TaskPlan, settings: RunSettings) -> _Placement:
    cluster = ray.cluster_resources()
    gpus = cluster.get("GPU", 0)
    if settings.device == "cuda" and not gpus:
        raise SweepError("device=cuda but the Ray cluster has no GPU; use device=auto or device=cpu")
    use_gpu = settings.device == "cuda" or (settings.device == "auto" and gpus > 0)
    resources = dict(task.resources["gpu" if use_gpu else "cpu"])
    if use_gpu and not resources.get("num_gpus"):
        raise SweepError(f"conf/task/{task.name}.yaml: resources.gpu needs num_gpus > 0")
    resources.setdefault("num_cpus", 1)
    _check_fits(ray, task, resources)
    limits = [cluster.get("CPU", 0) / resources["num_cpus"]] if resources["num_cpus"] else []
    if use_gpu:
        limits.append(gpus / resources["num_gpus"])
    fits = max(1, int(min(limits, default=1)))
    remote = ray.remote(
        **resources,
        max_calls=0,  # reuse workers: Ray's default for GPU tasks is a new process per trial
        max_retries=settings.ray.max_retries,  # reruns when the worker process dies
        retry_exceptions=False,  # an exception is a result (run_trial records it), not a retry
    )(run_trial)
    return _Placement(remote, "cuda" if use_gpu else "cpu", max(1, int(resources["num_cpus"])), fits)


def _check_fits(ray: Any, task: TaskPlan, resources: dict[str, Any]) -> None:
    """SweepError if no node of the cluster has what one trial asks for: it would wait forever."""
    needs = {"CPU": resources.get("num_cpus", 0), "GPU": resources.get("num_gpus", 0),
             "memory": resources.get("memory", 0), **resources.get("resources", {})}
    needs = {name: amount for name, amount in needs.items() if amount}
    nodes = [node["Resources"] for node in ray.nodes() if node["Alive"]]
    if any(all(node.get(name, 0) >= amount for name, amount in needs.items()) for node in nodes):
        return
    largest = {name: max((node.get(name, 0) for node in nodes), default=0) for name in needs}
    raise SweepError(
        f"task {task.name!r}: a trial asks for {_amounts(needs)}, more than any node of the Ray "
        f"cluster has (the largest: {_amounts(largest)}); lower task.resources"
    )


def _amounts(resources: dict[str, float]) -> str:
    return ", ".join(f"{amount:g} {name}" for name, amount in resources.items())


def _schedule(
    ray: Any,
    feed: TrialFeed,
    sweep: str,
    settings: RunSettings,
    writer: StoreWriter,
    logger: Any,
    report: RunReport,
    stream: TextIO,
    cancel_on_interrupt: bool,
) -> None:
    placements: dict[str, _Placement] = {}
    for trial in feed.task_trials:
        if trial.task.name not in placements:
            placements[trial.task.name] = _placement(ray, trial.task, settings)
    report.slots = max(p.fits for p in placements.values())
    window = settings.ray.max_in_flight or 2 * report.slots
    progress = Progress(report.to_run, stream, settings.progress_every)
    in_flight: dict[Any, Trial] = {}
    started = time.monotonic()
    report.loop_started_at = dt.datetime.now(dt.timezone.utc)
    try:
        while True:
            for trial in feed.take(window - len(in_flight)):
                place = placements[trial.task.name]
                ref = place.remote.remote(trial.spec, trial.task.module, place.device, place.threads)
                in_flight[ref] = trial
            if not in_flight:
                break
            progress.running = min(len(in_flight), report.slots)
            progress.total = progress.finished + len(in_flight) + feed.remaining()
            progress.update()
            ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=1.0)
            # A finished trial is stored and counted, or neither: what the run reports when
            # interrupted is what the store holds.
            with interrupt_deferred():
                results = []
                for ref in ready:
                    trial = in_flight.pop(ref)
                    try:
                        outcome = ray.get(ref)
                    except ray.exceptions.RayError as error:  # the worker died past its retries
                        outcome = lost_outcome(error, placements[trial.task.name].device)
                    row = outcome_row(trial, sweep, outcome)
                    writer.add(row, outcome.curve, outcome.artifacts)
                    if logger is not None:
                        logger.log(row, outcome.curve)
                    report.counts[outcome.status] += 1
                    report.spans.append((outcome.started_at, outcome.finished_at))
                    progress.counts[outcome.status] += 1
                    results.append((trial, row))
                writer.maybe_flush()
                for trial, row in results:
                    feed.finished(trial, row)
    except KeyboardInterrupt:
        report.interrupted = True
        # Finished trials reach the store first: Ray 2.60 can abort the process when a
        # cancelled task's reply races its cancellation (task_manager.cc, "Tried to complete
        # task that was not pending").
        writer.flush()
        if cancel_on_interrupt:
            for ref in in_flight:
                ray.cancel(ref, force=True)
    finally:
        report.loop_s = time.monotonic() - started
        progress.finish()
