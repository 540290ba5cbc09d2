"""Argument checks shared by the public constructors and methods."""

from __future__ import annotations

__all__ = ["check_count", "check_seconds"]


def check_seconds(name: str, value: float | None) -> None:
    """Raise unless *value* is ``None`` or a positive number of seconds."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds or None, not {type(value).__name__}: {value!r}")
    if not value > 0 or value == float("inf"):
        raise ValueError(f"{name} must be a positive, finite number of seconds: {value!r}")


def check_count(name: str, value: int, minimum: int = 1) -> None:
    """Raise unless *value* is an ``int`` of at least *minimum*."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}: {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}: {value!r}")
