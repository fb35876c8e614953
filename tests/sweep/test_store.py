"""The results store: atomic parts, compaction, schema growth, damaged files, one writer."""

from __future__ import annotations

import datetime as dt
import errno
import os
import subprocess
import sys

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from fp4sweep.results.schema import column_type
from fp4sweep.results import store
from fp4sweep.results.store import ResultsStore, StoreError, StoreWriter, require_store

NOW = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)


def row(trial_id: str, status: str = "done", attempt: str | None = None, **extra) -> dict:
    return {
        "trial_id": trial_id,
        "attempt_id": attempt or f"{trial_id}-a",
        "schema_version": 1,
        "task": "regression",
        "seed": 0,
        "status": status,
        "started_at": NOW,
        "finished_at": NOW,
        "metric.val_loss": 0.5,
        **extra,
    }


def test_rows_and_curves_round_trip_with_growing_schema(tmp_path):
    with StoreWriter(tmp_path) as writer:
        writer.add(row("t1"), curve=[{"step": 0, "train_loss": 2.0}, {"step": 5, "train_loss": 1.0}])
        writer.flush()
        # A later task brings a metric the first rows lack: the store's schema grows.
        writer.add(row("t2", **{"metric.val_acc": 0.9, "axis.block": "32"}))
        writer.flush()
        writer.add(row("t3"))
        writer.flush()
        # Before close every live file already shares one schema, so plain readers see it all.
        plain = pd.read_parquet(tmp_path / "trials")
        assert sorted(plain["trial_id"]) == ["t1", "t2", "t3"]
        assert plain.set_index("trial_id").loc["t2", "metric.val_acc"] == 0.9
        assert pd.isna(plain.set_index("trial_id").loc["t3", "metric.val_acc"])

    store = ResultsStore(tmp_path)
    trials = store.trials()
    assert sorted(trials["trial_id"]) == ["t1", "t2", "t3"]
    assert trials["started_at"].iloc[0] == pd.Timestamp(NOW)
    assert pads.dataset(tmp_path / "trials").to_table().num_rows == 3
    curves = store.curves()
    assert curves[["step", "name", "value"]].values.tolist() == [[0, "train_loss", 2.0], [5, "train_loss", 1.0]]
    assert store.problems == []


def test_latest_attempt_counts_and_all_attempts_are_kept(tmp_path):
    with StoreWriter(tmp_path) as writer:
        writer.add(row("t1", status="failed", attempt="first"))
        writer.flush()
        writer.add(row("t1", status="done", attempt="second"))
    store = ResultsStore(tmp_path)
    assert store.statuses() == {"t1": "done"}
    assert store.trials()["attempt_id"].tolist() == ["second"]
    assert store.trials(latest=False)["status"].tolist() == ["failed", "done"]


def test_parts_are_compacted(tmp_path):
    with StoreWriter(tmp_path, max_parts=3) as writer:
        for i in range(10):
            writer.add(row(f"t{i}"), curve=[{"step": 0, "loss": float(i)}])
            writer.flush()
            for folder in ("trials", "curves"):
                # At most 3 live files, and the 3 emptied by the last compaction.
                assert len(list((tmp_path / folder).glob("*.parquet"))) <= 6
    store = ResultsStore(tmp_path)
    assert len(store.trials()) == 10
    assert sorted(store.curves()["value"]) == [float(i) for i in range(10)]


def crash(writer: StoreWriter) -> None:
    """Leave a writer as SIGKILL would: buffered rows lost, lock released, nothing compacted."""
    writer._lock.close()


def test_superseded_files_left_by_a_crash_are_not_counted(tmp_path):
    with StoreWriter(tmp_path) as writer:
        writer.add(row("t1"))
        writer.flush()  # the first columns: base-000000
        writer.add(row("t2"))
        writer.flush()  # part-000001
        part = tmp_path / "trials" / "part-000001.parquet"
        saved = part.read_bytes()
        writer.add(row("t3", **{"metric.val_acc": 1.0}))
        writer.flush()  # a new column: everything compacted into base-000002
    # A crash between a compaction's rename and its deletions leaves the old part behind.
    part.write_bytes(saved)
    assert sorted(ResultsStore(tmp_path).trials(latest=False)["trial_id"]) == ["t1", "t2", "t3"]
    # A crash mid-write leaves a dot-file, which readers ignore and the next writer removes.
    (tmp_path / "trials" / ".part-000009.parquet.123.tmp").write_bytes(b"PAR1 half")
    assert ResultsStore(tmp_path).problems == []
    StoreWriter(tmp_path).close()
    assert sorted(p.name for p in (tmp_path / "trials").iterdir()) == ["base-000002.parquet"]


def test_curves_of_an_attempt_without_a_row_are_ignored(tmp_path):
    with StoreWriter(tmp_path) as writer:
        writer.add(row("t1"), curve=[{"step": 0, "loss": 1.0}])
    # As if a crash fell between writing a part's curves and its rows.
    writer = StoreWriter(tmp_path)
    writer.add(row("t2"), curve=[{"step": 0, "loss": 2.0}])
    writer.flush()
    crash(writer)
    os.remove(next((tmp_path / "trials").glob("part-*.parquet")))
    store = ResultsStore(tmp_path)
    assert store.trials()["trial_id"].tolist() == ["t1"]
    assert store.curves()["value"].tolist() == [1.0]


def test_damaged_file_is_reported_then_moved_aside(tmp_path):
    writer = StoreWriter(tmp_path)
    writer.add(row("t1"))
    writer.flush()
    writer.add(row("t2"))
    writer.flush()
    crash(writer)
    damaged = tmp_path / "trials" / "part-000001.parquet"
    damaged.write_bytes(damaged.read_bytes()[:40])

    store = ResultsStore(tmp_path)
    assert store.statuses() == {"t1": "done"}
    assert [p.path for p in store.problems] == [damaged]

    writer = StoreWriter(tmp_path)
    assert len(writer.quarantined) == 1 and damaged.name in writer.quarantined[0]
    writer.close()
    assert (tmp_path / "quarantine" / f"trials-{damaged.name}").exists()
    assert ResultsStore(tmp_path).problems == []


def test_one_writer_at_a_time(tmp_path):
    with StoreWriter(tmp_path):
        with pytest.raises(StoreError, match="another fp4sweep run"):
            StoreWriter(tmp_path)


def test_unwritable_results_dir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreError, match="not writable"):
        StoreWriter(blocker / "results")


def test_unknown_column_is_refused():
    assert str(column_type("metric.anything")) == "double"
    with pytest.raises(ValueError, match="unknown results column 'metrics.loss'"):
        column_type("metrics.loss")


def test_store_needs_neither_ray_nor_torch():
    # The analysis reads the store on machines without the training stack.
    code = "import sys, fp4sweep.results.store; print(sorted({'ray', 'torch'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_an_interrupt_after_a_parts_rename_stores_its_rows_once(tmp_path, monkeypatch):
    writer = StoreWriter(tmp_path)
    writer.add(row("t1"))
    writer.flush()  # the first columns: a compaction
    real = store._write_atomic

    def interrupted_after_rename(path, write):
        real(path, write)
        if path.parent.name == "trials" and path.name.startswith("part-"):
            raise KeyboardInterrupt  # Ctrl-C right after the part is in place

    monkeypatch.setattr(store, "_write_atomic", interrupted_after_rename)
    writer.add(row("t2"))
    with pytest.raises(KeyboardInterrupt):
        writer.flush()
    monkeypatch.setattr(store, "_write_atomic", real)
    writer.close()  # flushes what is still buffered
    assert sorted(ResultsStore(tmp_path).trials(latest=False)["trial_id"]) == ["t1", "t2"]


class Crash(BaseException):
    """SIGKILL at an exact point: nothing after it runs."""


def store_before_a_compaction(root) -> StoreWriter:
    """Three live files in each folder; the next flush compacts them with t3."""
    writer = StoreWriter(root, max_parts=3)
    for trial in ("t0", "t1", "t2"):
        writer.add(row(trial), curve=[{"step": 0, "loss": 1.0}])
        writer.flush()
    writer.add(row("t3"), curve=[{"step": 0, "loss": 1.0}])
    return writer


def plain_reads(root) -> list[list[str]]:
    """The trial ids that readers which are not ours see, both folders."""
    reads = []
    for folder in ("trials", "curves"):
        reads.append(sorted(pd.read_parquet(root / folder)["trial_id"]))
        reads.append(sorted(pads.dataset(root / folder).to_table()["trial_id"].to_pylist()))
    return reads


# A compaction of 3 files a folder renames: 2 staged bases (the second is its commit point),
# then per folder 3 emptied files and the base: 10 renames.
@pytest.mark.parametrize("crash_at", range(1, 11))
def test_a_crash_inside_a_compaction_never_shows_a_row_twice(tmp_path, monkeypatch, crash_at):
    writer = store_before_a_compaction(tmp_path)
    real, renames = os.replace, []

    def replace(source, target):
        renames.append(target)
        if len(renames) == crash_at:
            raise Crash
        real(source, target)

    monkeypatch.setattr(store.os, "replace", replace)
    with pytest.raises(Crash):
        writer.flush()
    monkeypatch.setattr(store.os, "replace", real)
    crash(writer)
    committed = crash_at > 2
    for seen in plain_reads(tmp_path):
        assert len(seen) == len(set(seen))  # never a row twice
    expected = ["t0", "t1", "t2", "t3"] if committed else ["t0", "t1", "t2"]
    assert sorted(ResultsStore(tmp_path).trials(latest=False)["trial_id"]) == expected

    StoreWriter(tmp_path).close()  # finishes the compaction, or drops it
    assert plain_reads(tmp_path) == [expected] * 4
    store_ = ResultsStore(tmp_path)
    assert sorted(store_.trials(latest=False)["trial_id"]) == expected
    assert sorted(store_.curves()["trial_id"]) == expected and store_.problems == []


def test_a_reader_that_listed_before_a_compaction_opens_every_file_it_listed(tmp_path):
    writer = store_before_a_compaction(tmp_path)
    listed = list((tmp_path / "trials").glob("*.parquet"))
    writer.flush()  # compacts
    writer.add(row("t4"))
    writer.flush()
    rows = [pq.read_table(path).num_rows for path in listed]  # no FileNotFoundError
    assert rows == [0, 0, 0]  # emptied: their rows are in the base now
    writer.close()


def test_a_column_of_the_wrong_type_is_set_aside_like_an_unreadable_file(tmp_path):
    with StoreWriter(tmp_path) as writer:
        writer.add(row("t1"))
    wrong = tmp_path / "trials" / "part-000007.parquet"
    pq.write_table(pa.table({"trial_id": ["t2"], "metric.val_loss": ["0.5"]}), wrong)
    pq.write_table(store.CURVE_SCHEMA.empty_table(), tmp_path / "curves" / wrong.name)

    reader = ResultsStore(tmp_path)
    assert reader.statuses() == {"t1": "done"}
    assert [str(p) for p in reader.problems] == [
        f"{wrong}: ValueError: column 'metric.val_loss' is string, not double"
    ]
    with StoreWriter(tmp_path) as writer:
        assert len(writer.quarantined) == 1
    assert (tmp_path / "quarantine" / f"trials-{wrong.name}").exists()


def test_types_other_writers_use_for_the_same_values_are_read(tmp_path):
    # pandas writes large strings and integer-valued metrics as integers; a store of trials
    # alone (no curves folder) is read as it is.
    (tmp_path / "trials").mkdir()
    table = pa.table({"trial_id": pa.array(["t1"], pa.large_string()), "metric.steps": [300],
                      "status": pa.array([None], pa.null())})
    pq.write_table(table, tmp_path / "trials" / "part-000000.parquet")
    reader = ResultsStore(tmp_path)
    assert reader.trials()["metric.steps"].tolist() == [300] and reader.problems == []


def test_trials_whose_curves_file_is_deleted_count_as_not_run(tmp_path):
    with StoreWriter(tmp_path) as writer:
        writer.add(row("t1"), curve=[{"step": 0, "loss": 1.0}])
        writer.flush()
        writer.add(row("t2"), curve=[{"step": 0, "loss": 2.0}])
    (tmp_path / "curves" / "part-000001.parquet").unlink()

    reader = ResultsStore(tmp_path)
    assert reader.statuses() == {"t1": "done"}
    part = tmp_path / "trials" / "part-000001.parquet"
    assert [str(p) for p in reader.problems] == [f"{part}: its curves file is missing or unreadable"]
    with StoreWriter(tmp_path) as writer:
        assert writer.quarantined == [f"{part}: its curves file is missing or unreadable "
                                      f"(moved to {tmp_path / 'quarantine' / 'trials-part-000001.parquet'})"]
    assert ResultsStore(tmp_path).problems == []


def test_a_damaged_curves_file_sets_its_trials_aside_with_it(tmp_path):
    with StoreWriter(tmp_path) as writer:
        writer.add(row("t1"), curve=[{"step": 0, "loss": 1.0}])
        writer.flush()
        writer.add(row("t2"), curve=[{"step": 0, "loss": 2.0}])
    damaged = tmp_path / "curves" / "part-000001.parquet"
    data = bytearray(damaged.read_bytes())
    data[8:40] = b"\xff" * 32  # the footer reads, the column data does not
    damaged.write_bytes(bytes(data))

    with StoreWriter(tmp_path) as writer:
        assert len(writer.quarantined) == 2
    reader = ResultsStore(tmp_path)
    assert reader.statuses() == {"t1": "done"} and reader.problems == []
    assert sorted(p.name for p in (tmp_path / "quarantine").iterdir()) == [
        "curves-part-000001.parquet", "trials-part-000001.parquet"
    ]


def test_a_full_disk_is_one_error_and_loses_nothing(tmp_path, monkeypatch):
    writes = []

    def full(*args, **kwargs):
        writes.append(args)
        raise OSError(errno.ENOSPC, "No space left on device")

    writer = StoreWriter(tmp_path)
    writer.add(row("t1"))
    writer.flush()
    writer.add(row("t2"))
    monkeypatch.setattr(store.pq, "write_table", full)
    with pytest.raises(StoreError) as error:
        with writer:
            writer.flush()
    assert str(error.value) == (
        f"cannot write to results_dir {str(tmp_path)!r}: No space left on device; 1 finished trial(s) "
        "could not be stored and run again next time; what was stored before is intact"
    )
    assert len(writes) == 1  # leaving the writer does not try (and fail) again
    monkeypatch.undo()
    assert ResultsStore(tmp_path).statuses() == {"t1": "done"}
    assert sorted(os.listdir(tmp_path / "trials")) == ["base-000000.parquet"]  # no torn file


@pytest.mark.parametrize("layout", ["missing", "file", "no trials"])
def test_a_directory_without_a_store_is_named(tmp_path, layout):
    root = tmp_path / "results"
    if layout == "file":
        (root).mkdir()
        (root / "trials").write_text("")
    elif layout == "no trials":
        root.mkdir()
    reason = {"missing": "the directory does not exist", "file": "its trials/ is not a directory",
              "no trials": "its trials/ is missing"}[layout]
    with pytest.raises(StoreError, match=f"^no results store at {root}: {reason}"):
        require_store(root)
