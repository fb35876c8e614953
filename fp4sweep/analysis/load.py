"""Reading the trial rows of a results store for a report.

The store's own reader (``fp4sweep.results.store``) unifies the schemas of its parts, ignores the
writer's temporary dot-files and lists the files it could not read instead of raising: a report
must come out of any store a sweep leaves behind. Files the sweep's writer found unreadable and
moved to ``quarantine/`` are named too: the trials they held count as not run.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from fp4sweep.results.store import QUARANTINE, ResultsStore


def read_trials(results_dir: str | Path) -> tuple[pd.DataFrame, list[str]]:
    """All trial rows of the store at ``results_dir``, and a sentence for each file not readable.

    Rows are returned as stored (every attempt); the report keeps the latest per trial.
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
    trials = store.trials(latest=False)
    problems += [
        f"corrupt file {problem.path.relative_to(results_dir)} was skipped ({problem.error}); "
        "the trials it held count as not run"
        for problem in store.problems
    ]
    return trials, problems
