"""A short run of the benchmark harness, so that it keeps working (figures come from full runs)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.require import require

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_smoke_run_delivers_every_event_and_writes_its_report(tmp_path: Path) -> None:
    require(len(__import__("os").sched_getaffinity(0)) >= 2, "the harness pins server and client to two CPUs")
    subprocess.run(
        [sys.executable, "-m", "benchmarks", "--smoke", "--no-chart", "--out", str(tmp_path)],
        cwd=ROOT, check=True, timeout=120, capture_output=True,
    )  # fmt: skip
    report = json.loads((tmp_path / "smoke.json").read_text())
    loads = [r for r in report["results"] if r["scenario"] != "idle_10k"]
    idle = [r for r in report["results"] if r["scenario"] == "idle_10k"]
    assert {r["target"] for r in loads} == {"sse_wsgi-gevent", "limit-asyncio"}
    for result in loads:
        assert result["deliveries"] == result["expected_deliveries"] > 0
        assert (result["lost"], result["duplicated"]) == (0, 0)
        assert result["deliveries_per_second"] > 0 and result["latency_p99_ms"] > 0
    assert all(r["rss_per_stream_kb"] is not None and r["connect_seconds"] > 0 for r in idle)
    table = (tmp_path / "smoke.md").read_text()
    assert "| sse_wsgi-gevent | fanout_1k | 20 |" in table


def test_short_soak_loses_nothing_and_leaves_no_subscriber(tmp_path: Path) -> None:
    require(len(__import__("os").sched_getaffinity(0)) >= 2, "the harness pins server and client to two CPUs")
    subprocess.run(
        [sys.executable, "-m", "benchmarks", "--soak", "--minutes", "0.25", "--out", str(tmp_path)],
        cwd=ROOT, check=True, timeout=120, capture_output=True,
    )  # fmt: skip
    [report] = tmp_path.glob("soak-*.json")
    [soak] = json.loads(report.read_text())["results"]
    assert soak["events_published"] > 100  # 50 a second for 15 s, unless the machine lags
    assert soak["churner_connections"] > soak["churners"]  # they dropped and resumed
    assert (soak["churner_events_lost"], soak["churner_events_duplicated"]) == (0, 0)
    assert soak["churners_in_order"] is True
    assert soak["slow_events_duplicated"] == 0
    assert soak["subscriptions_left"] == 0


def test_redis_layout_quick_run_receives_only_the_channels_a_process_follows(tmp_path: Path) -> None:
    """benchmarks/redis_layout.py on the per-channel setups (its one-stream baseline needs the git history)."""
    require(len(__import__("os").sched_getaffinity(0)) >= 2, "the harness pins Redis and the clients to two CPUs")
    from benchmarks.redis_layout import redis_binaries

    require(redis_binaries() is not None, "redis-server and redis-cli 7.0 or later are needed (a Redis Cluster)")
    subprocess.run(
        [sys.executable, "-m", "benchmarks.redis_layout", "--quick", "--out", str(tmp_path),
         "--setups", "per-channel", "per-channel-cluster"],
        cwd=ROOT, check=True, timeout=120, capture_output=True,
    )  # fmt: skip
    report = json.loads((tmp_path / "redis-layout-quick.json").read_text())
    setups = {"per-channel", "per-channel-cluster"}
    results = {(r["scenario"], r["setup"]): r for r in report["results"]}
    assert set(results) == {(s, setup) for s in ("routing", "fanout", "throughput") for setup in setups}
    assert not [r for r in results.values() if "failed" in r or r["failed_runs"]]
    for scenario in ("routing", "fanout"):
        for setup in setups:
            result = results[scenario, setup]
            assert result["lost"] == 0 and result["deliveries"] == result["expected_deliveries"] > 0, result
    assert all(results["routing", s]["in_order"] and results["routing", s]["channels_wrong"] == 0 for s in setups)
    assert all(results["fanout", s]["all_complete_in_order"] for s in setups)
    published = report["sizes"]["routing_events"]
    for setup in setups:  # each process receives its channels' events only, not every event
        received = results["routing", setup]["records_received"]
        assert received == results["routing", setup]["expected_deliveries"] < 0.1 * published
    spread = results["throughput", "per-channel-cluster"]["keys_per_master"]
    assert len(spread) == 3 and all(keys > 0 for keys in spread.values())
