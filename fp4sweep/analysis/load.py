"""Reading the trial rows of a results store for a report.

The store's own reader (``fp4sweep.results.store``) unifies the schemas of its parts, ignores the
writer's temporary dot-files and lists the files it could not read instead of raising: a report
must come out of any store a sweep leaves behind. Files the sweep's writer found unreadable and
moved to ``quarantine/`` are named too: the trials they held count as not run.

A trial records an option under every axis key its sweep knew (``sweep/plan.py``). A key added
later (a new axis, or an axis placed on a new scope) is a column its row lacks; the trial ran
with the option that its recorded keys give that key (``axes.recorded``): the axis' default for
a new axis, whose default is the behaviour before it existed. ``read_trials`` fills those values
in, so that old trials take part in the effects beside new ones. Rows that record no axis at all
(baselines, and presets of stores written before presets carried axis values) stay without.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from fp4sweep.analysis.quality import axis_columns
from fp4sweep.quant.axes import MIXED, recorded
from fp4sweep.results.store import QUARANTINE, ResultsStore

AXIS_PREFIX = "axis."


def read_trials(results_dir: str | Path) -> tuple[pd.DataFrame, list[str]]:
    """All trial rows of the store at ``results_dir``, and a sentence for each file not readable.

    Rows are returned as stored (every attempt), with the axis options of keys added after they
    ran filled in; the report keeps the latest per trial.
    """
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise FileNotFoundError(f"no results store at {results_dir}: not a directory")
    problems = [
        f"unreadable file {path.relative_to(results_dir)} was set aside by the sweep; the "
        "trials it held count as not run"
        for path in sorted((results_dir / QUARANTINE).glob("*"))
    ]
    store = ResultsStore(results_dir)
    trials = fill_unrecorded_axes(store.trials(latest=False))
    problems += [
        f"corrupt file {problem.path.relative_to(results_dir)} was skipped ({problem.error}); "
        "the trials it held count as not run"
        for problem in store.problems
    ]
    return trials, problems


def fill_unrecorded_axes(trials: pd.DataFrame) -> pd.DataFrame:
    """``trials`` with each empty ``axis.*`` value of a row that records other axes set to the
    option its recorded keys give that key. A key the schema no longer knows, or a row whose
    options it cannot read, is left empty."""
    columns = axis_columns(trials)
    if not columns:
        return trials
    keys = [column.removeprefix(AXIS_PREFIX) for column in columns]
    rows_of: dict[tuple, list[int]] = {}  # rows with the same options are filled once
    for position, row in enumerate(trials[columns].itertuples(index=False, name=None)):
        rows_of.setdefault(tuple(None if pd.isna(v) else v for v in row), []).append(position)
    filled = {column: trials[column].astype(object).to_numpy(copy=True) for column in columns}
    for pattern, positions in rows_of.items():
        known = {key: value for key, value in zip(keys, pattern) if value is not None}
        missing = [key for key, value in zip(keys, pattern) if value is None]
        if not known or not missing:
            continue
        for key, option in _options_of(known, missing).items():
            filled[AXIS_PREFIX + key][positions] = option
    return trials.assign(**filled)


def _options_of(known: dict[str, str], missing: list[str]) -> dict[str, str]:
    """The options that the recorded ``known`` keys give the ``missing`` keys, those it can."""
    # "mixed" summarises narrower keys the row records as well: they say all it does.
    given = {key: option for key, option in known.items() if option != MIXED}
    options = {}
    for key in missing:
        try:
            options[key] = recorded(given, [key])[key]
        except ValueError:  # an axis or option the schema no longer has
            continue
    return options
