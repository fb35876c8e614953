"""Content hashes that name trials and recipes, so the same work is recognised across runs."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from fp4sweep.results.schema import SCHEMA_VERSION


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no spaces: equal values give equal text.

    Non-finite floats are written as Python's json module does (NaN, Infinity), which it reads back.
    """
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def content_hash(value: Any) -> str:
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()[:16]


def trial_id(spec: dict[str, Any]) -> str:
    """The id of a resolved trial spec under the current result schema."""
    return content_hash({"schema_version": SCHEMA_VERSION, "spec": spec})


def joined_json(parts: dict[str, str]) -> str:
    """``canonical_json`` of a mapping whose values are given as their canonical JSON already:
    a sweep serialises each task and recipe once instead of once per trial."""
    return "{" + ",".join(f"{json.dumps(key)}:{parts[key]}" for key in sorted(parts)) + "}"


def trial_id_of_json(spec_json: str) -> str:
    """``trial_id`` of the spec whose canonical JSON is ``spec_json``."""
    text = joined_json({"schema_version": canonical_json(SCHEMA_VERSION), "spec": spec_json})
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def recipe_id(recipe: dict[str, Any]) -> str:
    """The id of a recipe alone: the same across tasks and seeds."""
    return content_hash(recipe)
