"""The results store: Parquet files of trial rows and training curves.

Layout of a results directory::

    trials/base-000041.parquet   all rows of parts up to 41, compacted (at most one is live)
    trials/part-000042.parquet   rows flushed after the last compaction
    curves/...                   the same scheme for per-step curves (long format)
    artifacts/<trial_id>/<name>  small files a trial returned
    quarantine/                  unreadable files moved aside by the writer

Only the sweep driver writes (workers return their results to it), so a cluster needs no shared
filesystem. Every file is written to a dot-prefixed temporary name in its final directory and
renamed, so a crash at any moment leaves only whole files. A compaction writes ``base-N`` holding
everything up to part ``N``; from the moment it is renamed into place, older files are superseded
(readers ignore them even before they are deleted), so no row is ever counted twice.

All live files of ``trials/`` share one schema (a flush that brings new columns compacts), so a
plain ``pandas.read_parquet("results/trials")`` reads the store whole. This module needs only
pyarrow and pandas: the analysis reads the store through it.
"""

from __future__ import annotations

import fcntl
import os
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

# Part of every trial id: bump it when a row's meaning changes, so old results are not reused.
SCHEMA_VERSION = 1

STATUSES = ("done", "diverged", "failed")
TRIALS, CURVES, ARTIFACTS, QUARANTINE = "trials", "curves", "artifacts", "quarantine"

_FIXED_COLUMNS: dict[str, pa.DataType] = {
    "trial_id": pa.string(),
    "attempt_id": pa.string(),
    "schema_version": pa.int32(),
    "sweep": pa.string(),
    "task": pa.string(),
    "size": pa.string(),
    "seed": pa.int64(),
    "recipe_id": pa.string(),
    "recipe_label": pa.string(),
    "is_baseline": pa.bool_(),
    "status": pa.string(),
    "host": pa.string(),
    "device": pa.string(),
    "started_at": pa.timestamp("us", tz="UTC"),
    "finished_at": pa.timestamp("us", tz="UTC"),
    "spec": pa.string(),
}
# Columns that come in families: one per sweep axis, metric, overhead term, timing, ...
_PREFIXED_COLUMNS: dict[str, pa.DataType] = {
    "axis.": pa.string(),
    "metric.": pa.float64(),
    "overhead.": pa.float64(),
    "time.": pa.float64(),
    "error.": pa.string(),
    "version.": pa.string(),
}
CURVE_SCHEMA = pa.schema(
    [
        ("trial_id", pa.string()),
        ("attempt_id", pa.string()),
        ("step", pa.int64()),
        ("name", pa.string()),
        ("value", pa.float64()),
    ]
)

_FILE_NAME = re.compile(r"^(base|part)-(\d{6,})\.parquet$")


class StoreError(RuntimeError):
    """The results directory cannot be used (not writable, locked by another run)."""


def column_type(name: str) -> pa.DataType:
    """The Arrow type of a trials column, fixed by its name so every part agrees on it."""
    if name in _FIXED_COLUMNS:
        return _FIXED_COLUMNS[name]
    for prefix, kind in _PREFIXED_COLUMNS.items():
        if name.startswith(prefix) and len(name) > len(prefix):
            return kind
    raise ValueError(
        f"unknown results column {name!r}; valid: {sorted(_FIXED_COLUMNS)} "
        f"or a name starting with one of {sorted(_PREFIXED_COLUMNS)}"
    )


def trials_schema(columns: Iterable[str]) -> pa.Schema:
    """The schema for a set of columns: fixed columns in their order, then the families sorted."""
    names = set(columns)
    fixed = [c for c in _FIXED_COLUMNS if c in names]
    families = sorted(names - set(fixed))
    return pa.schema([(c, column_type(c)) for c in fixed + families])


@dataclass(frozen=True)
class _Files:
    """The live and superseded Parquet files of one store folder."""

    live: list[Path]
    superseded: list[Path]
    last_seq: int


def _scan(folder: Path) -> _Files:
    found: list[tuple[int, str, Path]] = []
    if folder.is_dir():
        for path in folder.iterdir():
            match = _FILE_NAME.match(path.name)
            if match:
                found.append((int(match.group(2)), match.group(1), path))
    base_seq = max((seq for seq, kind, _ in found if kind == "base"), default=-1)
    live, superseded = [], []
    for seq, kind, path in sorted(found):
        is_live = (kind == "base" and seq == base_seq) or (kind == "part" and seq > base_seq)
        (live if is_live else superseded).append(path)
    return _Files(live, superseded, max((seq for seq, _, _ in found), default=-1))


@dataclass(frozen=True)
class Unreadable:
    """A store file that could not be read; the trials whose rows it held count as not run."""

    path: Path
    error: str

    def __str__(self) -> str:
        return f"{self.path}: {self.error}"


def _read_folder(folder: Path, problems: list[Unreadable]) -> list[pa.Table]:
    """The tables of a folder's live files; those that cannot be read go to ``problems``."""
    while True:
        tables, found = [], []
        for path in _scan(folder).live:
            try:
                table = pq.read_table(path)
                if "trial_id" not in table.column_names:
                    raise ValueError("no trial_id column")
            except FileNotFoundError:
                break  # a writer compacted it away meanwhile; its base file is in place: scan again
            except (OSError, ValueError, pa.ArrowException) as error:
                found.append(Unreadable(path, f"{type(error).__name__}: {error}"))
                continue
            tables.append(table)
        else:
            problems += found
            return tables


def _concat(tables: list[pa.Table], empty: pa.Schema) -> pa.Table:
    if not tables:
        return empty.empty_table()
    return pa.concat_tables(tables, promote_options="permissive")


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` with exactly ``schema``'s columns: missing ones are null, types are cast."""
    columns = [
        table[f.name].cast(f.type) if f.name in table.column_names else pa.nulls(len(table), f.type)
        for f in schema
    ]
    return pa.table(columns, schema=schema)


class ResultsStore:
    """Reads a results directory; files that cannot be read are listed in ``problems``.

    A trial may have several rows (one per finished attempt, e.g. a failed run and its resume);
    the latest counts. A trial whose rows sit in an unreadable file counts as not run.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.trials_dir = self.root / TRIALS
        self.curves_dir = self.root / CURVES
        self.problems: list[Unreadable] = []
        self._trials: pa.Table | None = None
        self._curves: pa.Table | None = None

    def artifact_dir(self, trial_id: str) -> Path:
        return self.root / ARTIFACTS / trial_id

    def trials_table(self) -> pa.Table:
        """Every attempt's row, oldest first, with the schemas of all files unified."""
        if self._trials is None:
            tables = _read_folder(self.trials_dir, self.problems)
            empty = trials_schema(["trial_id", "attempt_id", "task", "size", "status"])
            self._trials = _concat(tables, empty)
        return self._trials

    def curves_table(self) -> pa.Table:
        """Every curve point of every attempt, including attempts whose row was never written."""
        if self._curves is None:
            tables = _read_folder(self.curves_dir, self.problems)
            self._curves = _concat(tables, CURVE_SCHEMA)
        return self._curves

    def trials(self, latest: bool = True) -> pd.DataFrame:
        """The trial rows as a DataFrame: the latest attempt of each trial, or all attempts."""
        frame = self.trials_table().to_pandas()
        if latest:
            frame = frame.drop_duplicates("trial_id", keep="last").reset_index(drop=True)
        return frame

    def curves(self) -> pd.DataFrame:
        """Curve points (trial_id, step, name, value) of the attempts that count."""
        attempts = set(self.trials()["attempt_id"])
        frame = self.curves_table().to_pandas()
        return frame[frame["attempt_id"].isin(attempts)].reset_index(drop=True)

    def statuses(self) -> dict[str, str]:
        """trial_id -> status of its latest attempt."""
        table = self.trials_table()
        return dict(zip(table["trial_id"].to_pylist(), table["status"].to_pylist()))


def _write_atomic(path: Path, write: Any) -> None:
    """Write through ``write(temp_path)`` to a dot-file beside ``path``, then rename it into place.

    The data reaches the disk before the rename, and the rename before we return: not even a
    power cut leaves a partial file under the final name.
    """
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(temp)
        with open(temp, "rb") as written:
            os.fsync(written.fileno())
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def _rows_to_table(rows: Sequence[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    return pa.table(
        {f.name: pa.array([row.get(f.name) for row in rows], type=f.type) for f in schema},
        schema=schema,
    )


class StoreWriter:
    """The single writer of a results directory (held under an exclusive lock).

    ``add`` buffers a finished attempt; ``flush`` writes buffered rows as a new part, at the latest
    ``flush_seconds`` after the oldest buffered row (call ``maybe_flush`` from the driver's loop).
    Once ``max_parts`` parts are live, or new rows bring new columns, a flush compacts instead:
    everything is rewritten as one base file, so a folder never holds more than ``max_parts + 1``.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        flush_seconds: float = 5.0,
        flush_rows: int = 256,
        max_parts: int = 16,
    ) -> None:
        self.root = Path(root)
        self._trials_dir = self.root / TRIALS
        self._curves_dir = self.root / CURVES
        self.flush_seconds = flush_seconds
        self.flush_rows = flush_rows
        self.max_parts = max_parts
        self.quarantined: list[str] = []  # what was moved aside, for the caller to report
        self._rows: list[dict[str, Any]] = []
        self._curve_rows: list[dict[str, Any]] = []
        self._oldest: float | None = None
        self._lock = self._acquire_lock()
        reader = self._set_aside_damage()
        self._seq = max(_scan(self._trials_dir).last_seq, _scan(self._curves_dir).last_seq) + 1
        self._columns = set(reader.trials_table().column_names)

    def _acquire_lock(self) -> Any:
        try:
            for folder in (self._trials_dir, self._curves_dir, self.root / ARTIFACTS):
                folder.mkdir(parents=True, exist_ok=True)
            probe = self.root / f".write-probe-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
            lock = open(self.root / ".lock", "a")  # noqa: SIM115 - held for the writer's life
        except OSError as error:
            raise StoreError(f"results_dir {str(self.root)!r} is not writable: {error}") from error
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise StoreError(
                f"results_dir {str(self.root)!r} is being written by another fp4sweep run"
            ) from None
        return lock

    def _set_aside_damage(self) -> ResultsStore:
        """Delete leftovers of crashed writers and superseded files; move unreadable files aside.

        Safe because we hold the lock: no other writer's temporary file can be in flight.
        Returns a reader of what is left.
        """
        for folder in (self._trials_dir, self._curves_dir):
            for path in [*folder.glob(".*.tmp"), *_scan(folder).superseded]:
                path.unlink()
        reader = ResultsStore(self.root)
        # Reading every live file notes the ones that fail.
        reader.trials_table()
        reader.curves_table()
        for problem in reader.problems:
            target = self.root / QUARANTINE / f"{problem.path.parent.name}-{problem.path.name}"
            target.parent.mkdir(exist_ok=True)
            os.replace(problem.path, target)
            self.quarantined.append(f"{problem} (moved to {target})")
        return reader

    def add(
        self,
        row: dict[str, Any],
        curve: Sequence[dict[str, float]] = (),
        artifacts: dict[str, bytes] | None = None,
    ) -> None:
        """Buffer one finished attempt: its row, its curve (dicts with a ``step``), its files."""
        for name, data in (artifacts or {}).items():
            folder = self.root / ARTIFACTS / row["trial_id"]
            folder.mkdir(parents=True, exist_ok=True)
            _write_atomic(folder / name, lambda temp, data=data: temp.write_bytes(data))
        self._rows.append(row)
        for point in curve:
            step = int(point["step"])
            for name, value in point.items():
                if name != "step":
                    self._curve_rows.append(
                        {
                            "trial_id": row["trial_id"],
                            "attempt_id": row["attempt_id"],
                            "step": step,
                            "name": name,
                            "value": float(value),
                        }
                    )
        if self._oldest is None:
            self._oldest = time.monotonic()

    def maybe_flush(self) -> None:
        """Flush if the buffer is big or old enough."""
        if self._oldest is None:
            return
        old = time.monotonic() - self._oldest >= self.flush_seconds
        if old or len(self._rows) >= self.flush_rows:
            self.flush()

    def flush(self) -> None:
        """Write the buffered attempts: curves first, so a row never lacks its curve."""
        if not self._rows:
            return
        columns = self._columns | {c for row in self._rows for c in row}
        if columns != self._columns or len(_scan(self._trials_dir).live) >= self.max_parts:
            self._compact(columns)
        else:
            seq = self._next_seq()
            self._write(self._curves_dir / f"part-{seq:06d}.parquet", self._curve_rows, CURVE_SCHEMA)
            self._write(self._trials_dir / f"part-{seq:06d}.parquet", self._rows, trials_schema(columns))
        self._rows, self._curve_rows, self._oldest = [], [], None

    def close(self) -> None:
        """Flush and release the lock."""
        try:
            self.flush()
        finally:
            self._lock.close()

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _next_seq(self) -> int:
        seq, self._seq = self._seq, self._seq + 1
        return seq

    def _write(self, path: Path, rows: Sequence[dict[str, Any]], schema: pa.Schema) -> None:
        table = _rows_to_table(rows, schema)
        _write_atomic(path, lambda temp: pq.write_table(table, temp))

    def _compact(self, columns: set[str]) -> None:
        """Write the store and the buffered rows as one base file, then delete what it supersedes."""
        reader = ResultsStore(self.root)
        schema = trials_schema(columns)
        trials = pa.concat_tables(
            [_conform(reader.trials_table(), schema), _rows_to_table(self._rows, schema)]
        )
        # Curves of attempts that never got a row (a crash between the two writes) are dropped.
        curves = reader.curves_table()
        attempts = trials["attempt_id"].combine_chunks()
        curves = curves.filter(pc.is_in(curves["attempt_id"], value_set=attempts))
        curves = pa.concat_tables([curves, _rows_to_table(self._curve_rows, CURVE_SCHEMA)])
        seq = self._next_seq()
        # Curves first: once trials/base-seq exists, curves/base-seq must too.
        _write_atomic(self._curves_dir / f"base-{seq:06d}.parquet", lambda t: pq.write_table(curves, t))
        _write_atomic(self._trials_dir / f"base-{seq:06d}.parquet", lambda t: pq.write_table(trials, t))
        for folder in (self._curves_dir, self._trials_dir):
            for path in _scan(folder).superseded:
                path.unlink()
        self._columns = columns
