"""The Markdown report of a run: the table, and each target of the issue as a measured ratio."""

from __future__ import annotations

from typing import Any

OURS = "sse_wsgi-gevent"
PEER = "sse-starlette-uvicorn"
LIMIT = "limit-asyncio"
REDIS = "sse_wsgi-redis-2w"
COLUMNS = ["target", "scenario", "subscribers", "deliveries_per_second", "latency_p50_ms", "latency_p99_ms",
           "latency_max_ms", "lost", "duplicated", "connect_seconds", "server_rss_mb", "server_cpu_percent",
           "rss_per_stream_kb", "idle_cpu_percent", "client_cpu_percent"]  # fmt: skip


def find(results: list[dict[str, Any]], target: str, scenario: str, subscribers: int | None = None) -> dict | None:
    for result in results:
        if result["target"] == target and result["scenario"] == scenario:
            if subscribers is None or result["subscribers"] == subscribers:
                return result if "skipped" not in result and "failed" not in result else None
    return None


def ratio(a: dict | None, b: dict | None, key: str) -> float | None:
    if a is None or b is None or not b.get(key):
        return None
    return round(a[key] / b[key], 2)


def verdicts(results: list[dict[str, Any]]) -> list[tuple[str, str, bool | None]]:
    """(target of the issue, measured, met?) rows."""
    rows: list[tuple[str, str, bool | None]] = []

    def row(name: str, value: float | None, good: bool | None, unit: str = "x") -> None:
        rows.append((name, "not measured" if value is None else f"{value}{unit}", None if value is None else good))

    for scenario in ("fanout_1k", "burst_100"):
        ours, peer = find(results, OURS, scenario), find(results, PEER, scenario)
        speed = ratio(ours, peer, "deliveries_per_second")
        row(f"{scenario}: deliveries/s vs sse-starlette ≥ 2x", speed, speed is not None and speed >= 2)
        p99 = ratio(ours, peer, "latency_p99_ms")
        row(f"{scenario}: p99 vs sse-starlette ≤ 0.5x", p99, p99 is not None and p99 <= 0.5)
        lost = None if ours is None else ours["lost"] + ours["duplicated"]
        row(f"{scenario}: events lost or duplicated = 0", lost, lost == 0, unit="")
    limit = ratio(find(results, OURS, "fanout_1k"), find(results, LIMIT, "fanout_1k"), "deliveries_per_second")
    row("fanout_1k: deliveries/s vs the limit server ≥ 0.6x", limit, limit is not None and limit >= 0.6)
    ours4k, peer4k, limit4k = (find(results, t, "scale", 4000) for t in (OURS, PEER, LIMIT))
    kept_up = None if ours4k is None else round(ours4k["deliveries"] / ours4k["expected_deliveries"], 3)
    row("scale 4,000: every event delivered (share)", kept_up, kept_up == 1.0, unit="")
    speed4k = ratio(ours4k, peer4k, "deliveries_per_second")
    row("scale 4,000: deliveries/s vs sse-starlette ≥ 3x", speed4k, speed4k is not None and speed4k >= 3)
    p99_4k = ratio(ours4k, limit4k, "latency_p99_ms")
    row("scale 4,000: p99 vs the limit server ≤ 3x", p99_4k, p99_4k is not None and p99_4k <= 3)
    idle = find(results, OURS, "idle_10k")
    per_stream = None if idle is None else idle["rss_per_stream_kb"]
    row("idle_10k: RSS per stream ≤ 10 KB", per_stream, per_stream is not None and per_stream <= 10, unit=" KB")
    idle_cpu = None if idle is None else idle["idle_cpu_percent"]
    row(
        "idle_10k: CPU over one 15 s heartbeat period ≈ 0 (≤ 2 %)",
        idle_cpu,
        idle_cpu is not None and idle_cpu < 2,
        unit=" %",
    )
    redis = ratio(find(results, REDIS, "fanout_1k"), find(results, OURS, "fanout_1k"), "deliveries_per_second")
    row("Redis, 2 workers vs 1 in-memory worker ≥ 1.5x (fanout_1k)", redis, redis is not None and redis >= 1.5)
    return rows


def markdown(report: dict[str, Any]) -> str:
    machine = report["machine"]
    lines = [
        f"# Benchmark run {machine['date']}",
        "",
        f"{machine['cpu_model']}, {machine['cpus']} CPUs, {machine['memory_gb']} GB, Python {machine['python']}; "
        f"servers on CPU {machine['server_cpus']}, the load client on CPU {machine['client_cpus']} "
        f"({machine.get('client_loop', 'asyncio')} event loop).",
        "",
        "| " + " | ".join(COLUMNS) + " | note |",
        "|" + "---|" * (len(COLUMNS) + 1),
    ]
    for result in report["results"]:
        note = result.get("skipped") or result.get("failed") or ""
        lines.append("| " + " | ".join(str(result.get(c, "")) for c in COLUMNS) + f" | {note} |")
    lines += ["", "## Targets", "", "| target | measured | met |", "|---|---|---|"]
    for name, measured, good in verdicts(report["results"]):
        lines.append(f"| {name} | {measured} | {'—' if good is None else ('yes' if good else 'no')} |")
    return "\n".join(lines) + "\n"
