"""The row schema of the results store: the fixed columns, the column families, the statuses of a
trial and the schema version that is part of every trial id.

A column's Arrow type is fixed by its name, so every file of a store agrees on it and a file that
disagrees is damaged (the store sets it aside like an unreadable one).
"""

from __future__ import annotations

from collections.abc import Iterable

import pyarrow as pa

# Part of every trial id: bump it when a row's meaning changes, so old results are not reused.
SCHEMA_VERSION = 1

# "done" and "diverged" are results about the recipe; "failed" is an exception, run again by resume.
STATUSES = ("done", "diverged", "failed")

# ``recipe_label`` of the axis-crossed recipe with every axis at its default (the report names it
# by the preset it equals).
DEFAULTS_LABEL = "axis defaults"

FIXED_COLUMNS: dict[str, pa.DataType] = {
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
    "is_preset": pa.bool_(),
    "status": pa.string(),
    "host": pa.string(),
    "device": pa.string(),
    "started_at": pa.timestamp("us", tz="UTC"),
    "finished_at": pa.timestamp("us", tz="UTC"),
    "spec": pa.string(),
}
# Columns that come in families: one per sweep axis, metric, overhead term, timing, ...
COLUMN_FAMILIES: dict[str, pa.DataType] = {
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


def column_type(name: str) -> pa.DataType:
    """The Arrow type of a trials column, fixed by its name so every part agrees on it."""
    if name in FIXED_COLUMNS:
        return FIXED_COLUMNS[name]
    for prefix, kind in COLUMN_FAMILIES.items():
        if name.startswith(prefix) and len(name) > len(prefix):
            return kind
    raise ValueError(
        f"unknown results column {name!r}; valid: {sorted(FIXED_COLUMNS)} "
        f"or a name starting with one of {sorted(COLUMN_FAMILIES)}"
    )


def trials_schema(columns: Iterable[str]) -> pa.Schema:
    """The schema for a set of columns: fixed columns in their order, then the families sorted."""
    names = set(columns)
    fixed = [c for c in FIXED_COLUMNS if c in names]
    families = sorted(names - set(fixed))
    return pa.schema([(c, column_type(c)) for c in fixed + families])


def schema_mismatch(schema: pa.Schema, expected: pa.Schema | None = None) -> str | None:
    """Why a file's schema is not the store's (a column of the wrong type or unknown), or None.

    ``expected`` is a fixed schema (curves); without it each column's type comes from its name.
    """
    for field in schema:
        if expected is not None:
            index = expected.get_field_index(field.name)
            if index < 0:
                return f"unknown column {field.name!r}"
            want = expected.field(index).type
        else:
            try:
                want = column_type(field.name)
            except ValueError as error:
                return str(error)
        if not _compatible(field.type, want):
            return f"column {field.name!r} is {field.type}, not {want}"
    return None


def _compatible(actual: pa.DataType, want: pa.DataType) -> bool:
    """Whether a column of type ``actual`` holds what the schema's ``want`` means: other writers
    (pandas) write large strings, integer metrics or other timestamp units, and a column of
    nulls only as type null; a number stored as text is damage."""
    if actual == want or pa.types.is_null(actual):
        return True
    kinds = (
        (pa.types.is_string, lambda t: pa.types.is_string(t) or pa.types.is_large_string(t)),
        (pa.types.is_floating, lambda t: pa.types.is_floating(t) or pa.types.is_integer(t)),
        (pa.types.is_integer, pa.types.is_integer),
        (pa.types.is_timestamp, pa.types.is_timestamp),
    )
    return any(is_kind(want) and holds(actual) for is_kind, holds in kinds)
