"""Run the scenarios against every target in one invocation; write JSON, a Markdown table and a chart.

python -m benchmarks --all                 # the full run, each load three times (about 20 minutes)
python -m benchmarks --smoke               # a tiny run that checks the harness (about 20 s)
python -m benchmarks --targets sse_wsgi-gevent limit-asyncio --scenarios fanout_1k
python -m benchmarks --targets sse_wsgi-grip-sync sse_wsgi-gevent --scenarios fanout_1k idle_10k  # GRIP, Pushpin
python -m benchmarks.grip_hold             # what one stream held by Pushpin costs the app, in process
python -m benchmarks --soak --minutes 5    # churn, slow consumers and memory over minutes (benchmarks/soak.py)
python -m benchmarks --redis-layout        # the Redis broker's layout, old against new (benchmarks/redis_layout.py)
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import resource
import time
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import psutil

from .client import hold_idle, run_load
from .targets import CLIENT_CPUS, SERVER_CPUS, SINGLE_STREAM_TREE, TARGETS, RedisProcess, Server, missing_pushpin

T = TypeVar("T")
RESULTS = Path(__file__).resolve().parent / "results"
STREAM_PATH = "/events?channel=bench"


@dataclass(frozen=True)
class Load:
    """One measured run: subscribers, events, rate (None: as fast as possible)."""

    scenario: str
    subscribers: int
    events: int
    rate: float | None
    payload: int = 64
    drain: float = 15.0  # seconds to wait for the last deliveries
    idle: float = 15.0  # seconds of idle measurement (events == 0): one heartbeat period of every app
    settle: float = 5.0  # seconds between the last stream opening and the idle measurement


SCENARIOS: dict[str, list[Load]] = {
    "fanout_1k": [Load("fanout_1k", 1000, 200, 100.0)],
    "burst_100": [Load("burst_100", 100, 2000, None)],
    "scale": [Load("scale", n, 100, 20.0) for n in (100, 1000, 4000)],
    "idle_10k": [Load("idle_10k", 10_000, 0, None)],
}
SMOKE = {
    "fanout_1k": [Load("fanout_1k", 20, 20, 100.0, drain=5.0)],
    "burst_100": [Load("burst_100", 10, 50, None, drain=5.0)],
    "idle_10k": [Load("idle_10k", 50, 0, None, idle=1.0, settle=0.0)],
}
SMOKE_TARGETS = ["sse_wsgi-gevent", "limit-asyncio"]
# The Redis comparisons (one and two workers, the one-stream broker before) are a fan-out question:
# run them there only.
ONLY = {
    "sse_wsgi-redis-2w": {"fanout_1k"},
    "sse_wsgi-redis-1w": {"fanout_1k"},
    "sse_wsgi-redis-1w-single-stream": {"fanout_1k"},
}


def client_loop() -> str:
    """The client's event loop: uvloop when installed (the plain asyncio loop saturates the client CPU)."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


def run_client(coroutine: Coroutine[Any, Any, T]) -> T:
    if client_loop() == "uvloop":
        import uvloop

        return uvloop.run(coroutine)
    return asyncio.run(coroutine)


def raise_open_file_limit() -> None:
    """Soft open-files limit up to the hard one: the servers (and Pushpin's condure) inherit it."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def open_file_limit_refuses(load: Load) -> str | None:
    """Why the open-files limit cannot hold *load*'s streams, or ``None``.

    The load client and the process that holds the streams (the app's worker, or Pushpin's
    condure) each need a descriptor a stream, and a few hundred besides.
    """
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = load.subscribers + 200
    if soft != resource.RLIM_INFINITY and soft < needed:
        return f"the open-files limit is {soft}; {load.subscribers} streams need {needed} (ulimit -n)"
    return None


def load_figures(
    server: Server, rss: dict[str, int], cpu: dict[str, float], seconds: float, deliveries: int
) -> dict[str, float]:
    """RSS, CPU share of *seconds* and CPU microseconds per delivery: the server's, and each part's when it has
    several (GRIP: ``app_``, ``pushpin_``).

    The CPU share counts the whole run (opening the streams, and the drain's wait when deliveries are
    missing), so it is lower for a run that waits; the CPU per delivery is not.
    """
    figures: dict[str, float] = {}
    for prefix, parts in [("server_", server.parts), *((f"{p}_", (p,)) for p in server.parts if len(server.parts) > 1)]:
        used = sum(cpu[part] for part in parts)
        figures[f"{prefix}rss_mb"] = round(sum(rss[part] for part in parts) / 2**20, 1)
        figures[f"{prefix}cpu_percent"] = round(100 * used / seconds, 1)
        figures[f"{prefix}cpu_us_per_delivery"] = round(1e6 * used / max(1, deliveries), 2)
    return figures


def measure(target_name: str, load: Load, redis: RedisProcess | None) -> dict[str, Any]:
    target = TARGETS[target_name]
    base = {"target": target_name, "scenario": load.scenario, "subscribers": load.subscribers}
    if load.subscribers > target.max_streams:
        return {**base, "skipped": f"{target.note}: at most {target.max_streams} streams"}
    if target.needs_redis and redis is None:
        return {**base, "skipped": "needs redis-server"}
    if target.grip and missing_pushpin():
        return {**base, "skipped": f"needs Pushpin (no {', '.join(missing_pushpin())})"}
    refused = open_file_limit_refuses(load)
    if refused:
        return {**base, "skipped": refused}
    if redis is not None:
        redis.flush()
    server: Server | None = None
    try:
        server = Server(target, load.subscribers, redis.url if target.needs_redis and redis else None)
        if load.events == 0:
            return {**base, **idle(server, load, target.open_in_flight)}
        cpu_before = {part: server.cpu_seconds(part) for part in server.parts}
        started = time.monotonic()
        figures = run_client(
            run_load(server.stream_port, STREAM_PATH, load.subscribers, load.events, load.rate, load.payload,
                     load.drain, publish_port=server.publish_port, in_flight=target.open_in_flight)
        )  # fmt: skip
        elapsed = time.monotonic() - started
        rss = {part: server.rss(part) for part in server.parts}
        cpu = {part: server.cpu_seconds(part) - cpu_before[part] for part in server.parts}
        return {**base, **figures, **load_figures(server, rss, cpu, elapsed, int(figures["deliveries"]))}
    except (RuntimeError, OSError, EOFError, asyncio.TimeoutError) as error:
        return {**base, "failed": f"{type(error).__name__}: {error}"}
    finally:
        if server is not None:
            server.stop()


def median_of(runs: Iterable[dict[str, Any]], load: Load) -> dict[str, Any]:
    """The median of a few runs of *load*, with every run's key figures.

    One run of a loaded server on a shared machine can land far from the
    usual. Runs are ranked by the figure the load is about: p99 latency at a
    set rate (every target that keeps up delivers the same), deliveries per
    second as fast as possible, RSS per stream when idle.
    """
    done = list(runs)
    measured = [r for r in done if "skipped" not in r and "failed" not in r]
    if not measured:
        return done[0]
    if load.events == 0:
        key = "rss_per_stream_kb"
    else:
        key = "latency_p99_ms" if load.rate else "deliveries_per_second"
    measured.sort(key=lambda r: r[key])
    median = dict(measured[len(measured) // 2])
    if len(done) > 1:
        shown = ("deliveries_per_second", "latency_p99_ms", "rss_per_stream_kb", "idle_cpu_percent", "streams_cut",
                 "failed")  # fmt: skip
        median["runs"] = [{k: r[k] for k in shown if k in r} for r in done]
    return median


def idle(server: Server, load: Load, in_flight: int | None = None) -> dict[str, Any]:
    """Hold *load*'s streams: RSS before and with them, and CPU over ``load.idle`` seconds.

    A server of several parts (GRIP: the app and Pushpin) gets each part's figures as well,
    under ``app_`` and ``pushpin_``; the unprefixed figures are the sums.
    """
    rss_idle = {part: server.rss(part) for part in server.parts}

    async def hold() -> dict[str, Any]:
        streams, connect_seconds = await hold_idle(
            server.stream_port, STREAM_PATH, load.subscribers, publish_port=server.publish_port, in_flight=in_flight
        )
        await asyncio.sleep(load.settle)
        rss_streams = {part: server.rss(part) for part in server.parts}
        cpu_before = {part: server.cpu_seconds(part) for part in server.parts}
        await asyncio.sleep(load.idle)
        cpu = {part: server.cpu_seconds(part) - cpu_before[part] for part in server.parts}
        cut = sum(1 for stream in streams if stream.cut)
        for stream in streams:
            stream.close()

        def figures(prefix: str, idle_bytes: int, streams_bytes: int, seconds: float) -> dict[str, float]:
            return {
                f"{prefix}rss_idle_mb": round(idle_bytes / 2**20, 1),
                f"{prefix}rss_mb": round(streams_bytes / 2**20, 1),
                f"{prefix}rss_per_stream_kb": round((streams_bytes - idle_bytes) / load.subscribers / 1024, 2),
                f"{prefix}idle_cpu_percent": round(100 * seconds / load.idle, 2),
            }

        result: dict[str, Any] = {"connect_seconds": round(connect_seconds, 2), "streams_cut": cut}
        total = figures("", sum(rss_idle.values()), sum(rss_streams.values()), sum(cpu.values()))
        result.update({"server_rss_idle_mb": total.pop("rss_idle_mb"), "server_rss_mb": total.pop("rss_mb"), **total})
        if len(server.parts) > 1:
            for part in server.parts:
                result.update(figures(f"{part}_", rss_idle[part], rss_streams[part], cpu[part]))
        return result

    return run_client(hold())


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def machine() -> dict[str, Any]:
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "server_cpus": sorted(SERVER_CPUS),
        "client_cpus": sorted(CLIENT_CPUS),
        "client_loop": client_loop(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--all", action="store_true", help="every target and scenario")
    parser.add_argument("--smoke", action="store_true", help="a tiny run that checks the harness")
    parser.add_argument("--targets", nargs="+", choices=sorted(TARGETS))
    parser.add_argument("--scenarios", nargs="+", choices=sorted(SCENARIOS))
    parser.add_argument("--out", type=Path, default=RESULTS, help="where results go (default: benchmarks/results)")
    parser.add_argument("--no-chart", action="store_true", help="skip the matplotlib chart")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each load; the median one is kept (default: 3)")
    parser.add_argument("--soak", action="store_true", help="the soak run alone (see benchmarks/soak.py)")
    parser.add_argument("--minutes", type=float, default=5.0, help="how long the soak runs (default: 5)")
    parser.add_argument(
        "--redis-layout", action="store_true", help="the Redis layout comparison alone (with --smoke: its quick run)"
    )
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.minutes <= 0:
        parser.error("--repeat takes a whole number of at least 1, --minutes a positive number")
    if args.soak:
        return soak_main(args.minutes, args.out)
    if args.redis_layout:
        from .redis_layout import main as redis_layout_main

        return redis_layout_main(["--out", str(args.out), *(["--quick"] if args.smoke else [])])
    scenarios = SMOKE if args.smoke else SCENARIOS
    targets = args.targets or (SMOKE_TARGETS if args.smoke else list(TARGETS))
    chosen = args.scenarios or list(scenarios)
    if not (args.all or args.smoke or args.targets or args.scenarios):
        parser.error("say --all, --smoke, or name --targets/--scenarios")
    raise_open_file_limit()
    os.sched_setaffinity(0, CLIENT_CPUS)
    redis = RedisProcess() if any(TARGETS[t].needs_redis for t in targets) else None
    results = []
    try:
        for name in targets:
            for scenario in chosen:
                if scenario not in scenarios or (name in ONLY and scenario not in ONLY[name]):
                    continue
                for load in scenarios[scenario]:
                    runs = (measure(name, load, redis) for _ in range(1 if args.smoke else args.repeat))
                    result = median_of(runs, load)
                    print(json.dumps(result), flush=True)
                    results.append(result)
    finally:
        if redis is not None:
            redis.stop()
        SINGLE_STREAM_TREE.cleanup()
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "smoke" if args.smoke else f"run-{datetime.date.today().isoformat()}"
    report = {"machine": machine(), "results": results}
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    from .report import markdown

    (args.out / f"{stem}.md").write_text(markdown(report))
    if not args.no_chart:
        from .chart import draw

        draw(report, args.out / f"{stem}.png")
    return 0


def soak_main(minutes: float, out: Path) -> int:
    """Run the soak; write its figures with the machine's to ``soak-DATE.json``; print them."""
    from .soak import run_soak

    raise_open_file_limit()
    os.sched_setaffinity(0, CLIENT_CPUS)
    result = run_soak(minutes)
    print(json.dumps(result, indent=2))
    out.mkdir(parents=True, exist_ok=True)
    report = {"machine": machine(), "results": [result]}
    (out / f"soak-{datetime.date.today().isoformat()}.json").write_text(json.dumps(report, indent=2) + "\n")
    return 0
