"""The results store: Parquet files of trial rows and training curves.

Layout of a results directory::

    trials/base-000041.parquet   all rows of parts up to 41, compacted (at most one is live)
    trials/part-000042.parquet   rows flushed after the last compaction
    curves/...                   the same scheme for per-step curves (long format)
    artifacts/<trial_id>/<name>  small files a trial returned
    quarantine/                  unreadable files moved aside by the writer

Only the sweep driver writes (workers return their results to it), so a cluster needs no shared
filesystem. Every file is written to a dot-prefixed temporary name in its final directory and
renamed, so a crash at any moment leaves only whole files. A trials file and the curves file of
the same number are written together, curves first: a trials file whose curves are missing or
damaged is set aside with them, and its trials run again.

A compaction rewrites a folder's live files as one ``base-N``, in three steps that keep plain
readers (``pandas.read_parquet("results/trials")``, ``pyarrow.dataset``), which see every file of
the folder, from ever counting a row twice:

1. both bases are written under hidden names, ``.base-N.parquet.staged``, curves first; the
   trials one is the commit point (a crash before it leaves the store as it was);
2. in each folder, every file the base replaces is overwritten (by an atomic rename) with an
   empty file of the same name and schema, then the base is renamed into place;
3. the empty files stay until the next compaction or the next writer deletes them, so a reader
   that listed the folder before the compaction opens them without a ``FileNotFoundError``.

A reader that overlaps step 2 may miss the rows being compacted, never count one twice. A crash
after the commit point is finished by the next writer; until then this module's reader reads
the staged base in place of the files it replaces.

All live files of ``trials/`` share one schema (a flush that brings new columns compacts), so a
plain ``pandas.read_parquet("results/trials")`` reads the store whole. This module needs only
pyarrow and pandas: the analysis reads the store through it.
"""

from __future__ import annotations

import fcntl
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from fp4sweep.results.schema import CURVE_SCHEMA, schema_mismatch, trials_schema

TRIALS, CURVES, ARTIFACTS, QUARANTINE = "trials", "curves", "artifacts", "quarantine"

_FILE_NAME = re.compile(r"^(base|part)-(\d{6,})\.parquet$")
_STAGED_NAME = re.compile(r"^\.base-(\d{6,})\.parquet\.staged$")


class StoreError(RuntimeError):
    """The results directory cannot be used (missing, not writable, locked, disk full)."""


def require_store(root: str | os.PathLike[str]) -> Path:
    """``root`` as a Path if it holds a results store (a ``trials`` folder); StoreError if not."""
    root = Path(root)
    trials = root / TRIALS
    if not root.is_dir():
        reason = "is not a directory" if root.exists() else "does not exist"
        raise StoreError(f"no results store at {root}: the directory {reason} (`fp4sweep run` creates one)")
    if not trials.is_dir():
        reason = "is not a directory" if trials.exists() else "is missing"
        raise StoreError(f"no results store at {root}: its {TRIALS}/ {reason}")
    return root


def _staged(folder: Path, seq: int) -> Path:
    return folder / f".base-{seq:06d}.parquet.staged"


def _committed(trials_dir: Path) -> int | None:
    """The number of a compaction past its commit point and not yet finished, if any."""
    if not trials_dir.is_dir():
        return None
    seqs = [int(m.group(1)) for p in trials_dir.iterdir() if (m := _STAGED_NAME.match(p.name))]
    return max(seqs, default=None)


@dataclass(frozen=True)
class _Files:
    """The live and superseded Parquet files of one store folder."""

    live: list[Path]
    superseded: list[Path]
    last_seq: int
    base_seq: int  # -1 without a base


def _scan(folder: Path, committed: int | None = None) -> _Files:
    """A folder's files; a staged base of the ``committed`` compaction counts as its base."""
    found: list[tuple[int, str, Path]] = []
    if folder.is_dir():
        for path in folder.iterdir():
            if match := _FILE_NAME.match(path.name):
                found.append((int(match.group(2)), match.group(1), path))
            elif (match := _STAGED_NAME.match(path.name)) and int(match.group(1)) == committed:
                found.append((committed, "base", path))
    base_seq = max((seq for seq, kind, _ in found if kind == "base"), default=-1)
    live, superseded = [], []
    for seq, kind, path in sorted(found):
        is_live = (kind == "base" and seq == base_seq) or (kind == "part" and seq > base_seq)
        (live if is_live else superseded).append(path)
    return _Files(live, superseded, max((seq for seq, _, _ in found), default=-1), base_seq)


@dataclass(frozen=True)
class Unreadable:
    """A store file that could not be read; the trials whose rows it held count as not run."""

    path: Path
    error: str

    def __str__(self) -> str:
        return f"{self.path}: {self.error}"


def _read_file(path: Path, expected: pa.Schema | None) -> pa.Table:
    """One store file, checked against the store's schema (ValueError if it does not match)."""
    table = pq.read_table(path)
    if "trial_id" not in table.column_names:
        raise ValueError("no trial_id column")
    mismatch = schema_mismatch(table.schema, expected)
    if mismatch:
        raise ValueError(mismatch)
    return table


def _read_folder(folder: Path, expected: pa.Schema | None) -> tuple[dict[Path, pa.Table], list[Unreadable]]:
    """The tables of a folder's live files, and the files that cannot be read."""
    while True:
        tables, problems = {}, []
        for path in _scan(folder, _committed(folder.parent / TRIALS)).live:
            try:
                tables[path] = _read_file(path, expected)
            except FileNotFoundError:
                break  # a writer compacted it away meanwhile; its base file is in place: scan again
            except (OSError, ValueError, pa.ArrowException) as error:
                problems.append(Unreadable(path, f"{type(error).__name__}: {error}"))
        else:
            return tables, problems


def _seq(path: Path) -> int:
    match = _FILE_NAME.match(path.name) or _STAGED_NAME.match(path.name)
    return int(match.groups()[-1])


def _concat(tables: Sequence[pa.Table], empty: pa.Schema) -> pa.Table:
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
    the latest counts. A trial whose rows sit in an unreadable file counts as not run, and so
    does one whose curves file is missing or unreadable (in a store with a ``curves`` folder:
    the writer makes one, so a store of trials alone, written otherwise, reads too).
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
            tables, problems = _read_folder(self.trials_dir, None)
            covered = self._curve_coverage()
            for path in list(tables):
                if not covered(_seq(path)):
                    del tables[path]
                    problems.append(Unreadable(path, "its curves file is missing or unreadable"))
            self.problems += problems
            empty = trials_schema(["trial_id", "attempt_id", "task", "size", "status"])
            self._trials = _concat(list(tables.values()), empty)
        return self._trials

    def curves_table(self) -> pa.Table:
        """Every curve point of every attempt, including attempts whose row was never written."""
        if self._curves is None:
            tables, problems = _read_folder(self.curves_dir, CURVE_SCHEMA)
            self.problems += problems
            self._curves = _concat(list(tables.values()), CURVE_SCHEMA)
        return self._curves

    def _curve_coverage(self) -> Callable[[int], bool]:
        """Whether the trials file of a number has its curves: the curves file of that number
        reads (its footer and schema, which is cheap), or a curves base past it does (a
        compaction between its two folders)."""
        if not self.curves_dir.is_dir():
            return lambda seq: True  # trials written by another writer, without curves
        files = _scan(self.curves_dir, _committed(self.trials_dir))
        whole = set()
        for path in files.live:
            try:
                if schema_mismatch(pq.read_schema(path), CURVE_SCHEMA) is None:
                    whole.add(_seq(path))
            except (OSError, pa.ArrowException):
                pass  # curves_table() names the file when it is read
        return lambda seq: seq in whole or (files.base_seq > seq and files.base_seq in whole)

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


def _fsync_folder(folder: Path) -> None:
    handle = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


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
    _fsync_folder(path.parent)


def _write_table(path: Path, table: pa.Table) -> None:
    _write_atomic(path, lambda temp: pq.write_table(table, temp))


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
    everything is rewritten as one base file, so a folder never holds more than ``max_parts``
    live files (and as many emptied ones, see the module's docstring). Rows leave the buffer
    exactly when their file is in place, whatever interrupts a flush (Ctrl-C, a full disk):
    never lost, never written twice.
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
        try:
            self._finish_compaction()
            reader = self._set_aside_damage()
        except OSError as error:
            self._lock.close()
            raise StoreError(f"results_dir {str(self.root)!r}: {error}") from None
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

    def _finish_compaction(self) -> None:
        """Publish a compaction past its commit point; drop what a crash left of the others.

        Safe because we hold the lock: no other writer's file can be in flight.
        """
        committed = _committed(self._trials_dir)
        if committed is not None:
            self._publish(committed)
        for folder in (self._trials_dir, self._curves_dir):
            for path in [*folder.glob(".*.tmp"), *folder.glob(".*.staged")]:
                path.unlink()

    def _set_aside_damage(self) -> ResultsStore:
        """Delete superseded files; move unreadable files, and the trials files whose curves are
        unreadable, aside. Returns a reader of what is left."""
        for folder in (self._trials_dir, self._curves_dir):
            for path in _scan(folder).superseded:
                path.unlink()
        reader = ResultsStore(self.root)
        # Reading every live file notes the ones that fail.
        reader.trials_table()
        reader.curves_table()
        damaged = {problem.path: str(problem) for problem in reader.problems}
        for problem in reader.problems:
            partner = self._trials_dir / problem.path.name
            if problem.path.parent == self._curves_dir and partner.exists() and partner not in damaged:
                damaged[partner] = f"{partner}: its curves file {problem.path.name} is unreadable"
        for path, reason in damaged.items():
            target = self.root / QUARANTINE / f"{path.parent.name}-{path.name}"
            target.parent.mkdir(exist_ok=True)
            os.replace(path, target)
            self.quarantined.append(f"{reason} (moved to {target})")
        return ResultsStore(self.root) if damaged else reader

    def add(
        self,
        row: dict[str, Any],
        curve: Sequence[dict[str, float]] = (),
        artifacts: dict[str, bytes] | None = None,
    ) -> None:
        """Buffer one finished attempt: its row, its curve (dicts with a ``step``), its files."""
        try:
            for name, data in (artifacts or {}).items():
                folder = self.root / ARTIFACTS / row["trial_id"]
                folder.mkdir(parents=True, exist_ok=True)
                _write_atomic(folder / name, lambda temp, data=data: temp.write_bytes(data))
        except OSError as error:
            raise self._write_failed(error, stored=False, pending=len(self._rows) + 1) from None
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
        seq = self._next_seq()
        try:
            if columns != self._columns or len(_scan(self._trials_dir).live) >= self.max_parts:
                self._compact(columns, seq)
            else:
                _write_table(self._curves_dir / f"part-{seq:06d}.parquet", _rows_to_table(self._curve_rows, CURVE_SCHEMA))
                _write_table(self._trials_dir / f"part-{seq:06d}.parquet", _rows_to_table(self._rows, trials_schema(columns)))
            self._clear()
        except BaseException as error:
            # Whatever stopped the flush, its rows are stored exactly when their file is in place:
            # then they leave the buffer (else close() would write them twice), else they stay.
            stored = self._stored(seq)
            pending = len(self._rows)
            if stored:
                self._clear()
            else:
                for path in (self._curves_dir / f"part-{seq:06d}.parquet", _staged(self._curves_dir, seq)):
                    path.unlink(missing_ok=True)
            if isinstance(error, OSError):
                raise self._write_failed(error, stored, pending) from None
            raise

    def _write_failed(self, error: OSError, stored: bool, pending: int) -> StoreError:
        what = (
            "the results are stored; the next run tidies the store up"
            if stored
            else f"{pending} finished trial(s) could not be stored and run again next time; "
            "what was stored before is intact"
        )
        return StoreError(f"cannot write to results_dir {str(self.root)!r}: {error.strerror or error}; {what}")

    def _clear(self) -> None:
        self._rows, self._curve_rows, self._oldest = [], [], None

    def _stored(self, seq: int) -> bool:
        """Whether the trials file of flush ``seq`` (a part, or a compaction's base) is in place."""
        names = (f"part-{seq:06d}.parquet", f"base-{seq:06d}.parquet", _staged(self._trials_dir, seq).name)
        return any((self._trials_dir / name).exists() for name in names)

    def close(self) -> None:
        """Flush, finish a compaction a Ctrl-C cut short, and release the lock."""
        try:
            self.flush()
            self._finish_compaction()
        finally:
            self._lock.close()

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, exc_type: object, error: object, traceback: object) -> None:
        if isinstance(error, StoreError):
            self._lock.close()  # writing failed already: another flush would fail the same way
        else:
            self.close()

    def _next_seq(self) -> int:
        seq, self._seq = self._seq, self._seq + 1
        return seq

    def _compact(self, columns: set[str], seq: int) -> None:
        """Write the store and the buffered rows as one base file (see the module's docstring)."""
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
        _write_table(_staged(self._curves_dir, seq), curves)
        _write_table(_staged(self._trials_dir, seq), trials)  # the commit point
        self._columns = columns
        self._publish(seq)

    def _publish(self, seq: int) -> None:
        """Steps 2 and 3 of a compaction whose staged bases are written: curves, then trials."""
        for folder in (self._curves_dir, self._trials_dir):
            staged = _staged(folder, seq)
            if not staged.exists():
                continue  # published before a crash cut the other folder short
            empty = pq.read_schema(staged).empty_table()
            files = _scan(folder)
            for path in files.superseded:  # emptied by the compaction before: long unlisted
                path.unlink(missing_ok=True)
            for path in files.live:
                _write_table(path, empty)
            os.replace(staged, folder / f"base-{seq:06d}.parquet")
            _fsync_folder(folder)
