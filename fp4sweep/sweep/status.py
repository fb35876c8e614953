"""Where a sweep stands: trial counts by task and status, and what the rest should cost."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

import pandas as pd

from fp4sweep.results.schema import STATUSES

if TYPE_CHECKING:
    from fp4sweep.sweep.plan import Plan  # only a type here: status without a sweep expands nothing

COLUMNS = (*STATUSES, "pending")


def counts_by_task(plan: Plan | None, latest: pd.DataFrame) -> dict[str, Counter[str]]:
    """task -> status -> count: over the plan's trials (unstored ones pending), or over the store."""
    counts: dict[str, Counter[str]] = {}
    if plan is None:
        for task, status in zip(latest["task"], latest["status"]):
            counts.setdefault(task, Counter())[status] += 1
        return counts
    statuses = dict(zip(latest["trial_id"], latest["status"]))
    for trial in plan.trials:
        counts.setdefault(trial.task.name, Counter())[statuses.get(trial.trial_id, "pending")] += 1
    return counts


def mean_trial_seconds(latest: pd.DataFrame) -> dict[tuple[str, str], float]:
    """(task, size) -> mean wall time of its finished trials in the store."""
    if "time.wall_s" not in latest:
        return {}
    finished = latest[latest["status"].isin(["done", "diverged"])]
    return finished.groupby(["task", "size"])["time.wall_s"].mean().to_dict()


def format_table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)
