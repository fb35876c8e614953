"""Reading the trial rows of a results store for a report.

The store is a directory of Parquet parts (see the results-store contract). A report must come out
of any store a sweep leaves behind, so a part that cannot be read is named as a problem rather than
raised, parts written by older versions of the schema are unified with newer ones, and the
driver's temporary dot-files are ignored. Files the sweep's writer found unreadable and moved to
``quarantine/`` are named too: the trials they held count as not run.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

TRIALS_DIR = "trials"
QUARANTINE_DIR = "quarantine"

# Large and never shown in a report; skipping them keeps big stores quick to load.
UNREAD_COLUMNS = ("spec", "error.traceback")


def read_trials(results_dir: str | Path) -> tuple[pd.DataFrame, list[str]]:
    """All trial rows of the store at ``results_dir``, and a sentence for each part not readable.

    Rows are returned as stored (every attempt); the report keeps the latest per trial.
    """
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise FileNotFoundError(f"no results store at {results_dir}: not a directory")
    problems = [
        f"unreadable file {path.relative_to(results_dir)} was set aside by the sweep; the "
        "trials it held count as not run"
        for path in sorted((results_dir / QUARANTINE_DIR).glob("*"))
    ]
    tables = []
    for path in sorted((results_dir / TRIALS_DIR).glob("*.parquet")):
        if path.name.startswith("."):
            continue  # a part still being written; it is renamed into place when whole
        try:
            tables.append(_read_part(path))
        except (pa.ArrowException, OSError) as err:
            problems.append(f"corrupt file {path.relative_to(results_dir)} was skipped: {err}")
    if not tables:
        return pd.DataFrame(), problems
    table = pa.concat_tables(tables, promote_options="permissive")
    return table.to_pandas(), problems


def _read_part(path: Path) -> pa.Table:
    schema = pq.read_schema(path)
    columns = [name for name in schema.names if name not in UNREAD_COLUMNS]
    return pq.read_table(path, columns=columns)
