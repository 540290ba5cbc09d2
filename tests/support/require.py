"""Whether a tool a test needs may be missing: skip loudly, or in CI fail."""

from __future__ import annotations

import os

import pytest

__all__ = ["ALLOW_SKIPS", "IN_CI", "require"]

#: In CI a missing tool (server, browser, Redis) fails a test instead of skipping it.
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

#: ``SSE_WSGI_ALLOW_SKIPS=1`` asks for a partial run: skipped tests no longer fail it.
#: tox.ini reads the same variable to let tox skip the envs whose Python is missing.
ALLOW_SKIPS = os.environ.get("SSE_WSGI_ALLOW_SKIPS", "").strip().lower() in ("1", "true", "yes", "on")


def require(condition: bool, reason: str) -> None:
    """Skip when *condition* is false, loudly; in CI, fail instead."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"required in CI: {reason}")
    pytest.skip(reason)
