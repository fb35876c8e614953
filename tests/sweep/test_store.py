"""The results store: atomic parts, compaction, schema growth, damaged files, one writer."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys

import pandas as pd
import pyarrow.dataset as pads
import pytest

from fp4sweep.results.schema import column_type
from fp4sweep.results.store import ResultsStore, StoreError, StoreWriter

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
