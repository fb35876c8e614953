"""Fixtures of the analysis tests; the synthetic stores themselves are built by
``synthetic_store`` (a module of its own, so that test files import it by a name no other test
folder uses)."""

import pytest
from synthetic_store import write_store


@pytest.fixture
def rows_to_store(tmp_path):
    """Write rows as a store in a fresh directory and return that directory."""
    return lambda rows, parts=2: write_store(rows, tmp_path / "results", parts)
