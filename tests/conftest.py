"""Shared pytest configuration."""

from __future__ import annotations

import os

import pytest

#: In CI a missing tool (server, browser, Redis) fails a test instead of skipping it.
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(condition: bool, reason: str) -> None:
    """Skip when *condition* is false, loudly; in CI, fail instead."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"required in CI: {reason}")
    pytest.skip(reason)
