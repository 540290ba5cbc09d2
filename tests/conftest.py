"""Shared pytest configuration."""

from __future__ import annotations

import os
from collections.abc import Generator

import pytest

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


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_sessionfinish(session: pytest.Session) -> Generator[None, object, None]:
    """A run that skipped a test is not a full pass: say what was skipped and why, last, and exit 1.

    The outermost wrapper, so these lines come after pytest's own summary. The skips are the ones
    in pytest's "N skipped": test and collection skips (an xfail is not one).
    """
    yield
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None or not reporter.stats.get("skipped"):
        return
    skipped = reporter.stats["skipped"]
    by_reason: dict[str, list[str]] = {}  # reason -> the file of each test skipped for it
    for report in skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        by_reason.setdefault(reason.removeprefix("Skipped: "), []).append(report.nodeid.split("::")[0])
    if ALLOW_SKIPS:
        reporter.write_line(f"SSE_WSGI_ALLOW_SKIPS is set: {len(skipped)} skipped, accepted in this partial run.")
        return
    reporter.write_sep("=", f"NOT A FULL PASS: {len(skipped)} skipped", red=True, bold=True)
    for reason, files in by_reason.items():
        reporter.write_line(f"{len(files)} skipped in {', '.join(sorted(set(files)))}: {reason}", red=True)
    reporter.write_line("Install what is missing, or set SSE_WSGI_ALLOW_SKIPS=1 to accept a partial run.", red=True)
    if session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
