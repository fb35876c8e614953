"""Synthetic results stores in the contract's layout: rows built one by one, written as parts."""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

STARTED = datetime(2025, 1, 1, tzinfo=timezone.utc)


def recipe_id(label: str) -> str:
    return hashlib.sha256(label.encode()).hexdigest()[:16]


def trial_row(
    task: str,
    seed: int,
    label: str,
    *,
    axes: dict[str, str] | None = None,
    status: str = "done",
    val_loss: float | None = 1.0,
    val_acc: float | None = None,
    overhead: float = 0.0,
    step_s: float | None = 0.1,
    size: str = "tiny",
    attempt: int = 0,
) -> dict:
    """One row of trials/*.parquet; ``label == "bf16"`` makes the baseline."""
    baseline = label == "bf16"
    row = {
        "trial_id": recipe_id(f"{task}/{size}/{seed}/{label}"),
        "schema_version": 1,
        "sweep": "synthetic",
        "task": task,
        "size": size,
        "seed": seed,
        "recipe_id": recipe_id(label),
        "recipe_label": label,
        "is_baseline": baseline,
        "status": status,
        "metric.val_loss": val_loss if status == "done" else None,
        "metric.train_loss": val_loss if status == "done" else None,
        "overhead.model": 0.0 if baseline else overhead,
        "overhead.model_fwd": 0.0 if baseline else overhead / 3,
        "overhead.model_bwd": 0.0 if baseline else 2 * overhead / 3,
        "overhead.points": 0.0 if baseline else 2.0,
        "time.train_s": None if step_s is None else 100 * step_s,
        "time.step_s": step_s,
        "time.wall_s": None if step_s is None else 110 * step_s,
        "error.type": "RuntimeError" if status == "failed" else None,
        "error.message": f"CUDA error in {label}" if status == "failed" else None,
        "error.traceback": "Traceback ..." if status == "failed" else None,
        "host": "node0",
        "device": "cpu",
        "version.fp4sweep": "0.1.0",
        "version.torch": "2.13.0",
        "started_at": STARTED,
        "finished_at": STARTED + pd.Timedelta(minutes=1 + attempt),
        "spec": "{}",
    }
    if val_acc is not None:
        row["metric.val_acc"] = val_acc if status == "done" else None
    for axis, value in (axes or {}).items():
        row[f"axis.{axis}"] = None if baseline else value
    return row


def write_store(rows: list[dict], results_dir: Path, parts: int = 2) -> Path:
    """Write ``rows`` as ``parts`` Parquet files under results_dir/trials, as the driver does."""
    frame = pd.DataFrame(rows)
    for column in ("started_at", "finished_at"):
        frame[column] = frame[column].astype("datetime64[us, UTC]")
    frame["schema_version"] = frame["schema_version"].astype("int32")
    trials_dir = results_dir / "trials"
    trials_dir.mkdir(parents=True, exist_ok=True)
    size = -(-len(frame) // parts)
    for part in range(parts):
        chunk = frame.iloc[part * size:(part + 1) * size]
        # Parts written before an axis existed lack its column: drop all-null ones per part.
        chunk = chunk.dropna(axis=1, how="all")
        table = pa.Table.from_pandas(chunk, preserve_index=False)
        pq.write_table(table, trials_dir / f"part-{part:06d}.parquet")
    return results_dir
