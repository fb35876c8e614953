"""Checks that task configs run on construction, so a bad value fails before any training with
the offending field and what it may be."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def check_choice(config: Any, name: str, choices: Iterable[str]) -> None:
    """``config.name`` must be one of ``choices``."""
    choices = list(choices)
    value = getattr(config, name)
    if value not in choices:
        raise ValueError(f"{type(config).__qualname__}.{name} = {value!r} is not valid; "
                         f"valid: {choices}")


def check_positive(config: Any, *names: str) -> None:
    """Each ``config.name`` must be > 0."""
    for name in names:
        value = getattr(config, name)
        if not value > 0:
            raise ValueError(f"{type(config).__qualname__}.{name} must be > 0, got {value!r}")


def check_non_negative(config: Any, *names: str) -> None:
    """Each ``config.name`` must be >= 0 (0 meaning "all" or "off", as the field says)."""
    for name in names:
        value = getattr(config, name)
        if not value >= 0:
            raise ValueError(f"{type(config).__qualname__}.{name} must be >= 0, got {value!r}")
