"""The Markdown report of a run: the table, and each target of the issue as a measured ratio.

A run with a GRIP target (Pushpin in front of the app) also gets the app's and Pushpin's figures
apart, and GRIP against the app streaming itself (gevent, gthread) as ratios.
"""

from __future__ import annotations

from typing import Any

OURS = "sse_wsgi-gevent"
PEER = "sse-starlette-uvicorn"
LIMIT = "limit-asyncio"
REDIS = "sse_wsgi-redis-2w"
GRIP = "sse_wsgi-grip-sync"
GRIP_PEERS = ("sse_wsgi-gevent", "sse_wsgi-gthread")
COLUMNS = ["target", "scenario", "subscribers", "deliveries_per_second", "latency_p50_ms", "latency_p99_ms",
           "latency_max_ms", "lost", "duplicated", "streams_cut", "connect_seconds", "server_rss_mb",
           "server_cpu_percent", "rss_per_stream_kb", "idle_cpu_percent", "client_cpu_percent"]  # fmt: skip
# The server's figures split in parts (GRIP: the app and Pushpin); the unprefixed ones are their sums.
PART_COLUMNS = ["target", "scenario", "subscribers", "app_rss_mb", "app_cpu_percent", "app_cpu_us_per_delivery",
                "pushpin_rss_mb", "pushpin_cpu_percent", "pushpin_cpu_us_per_delivery", "app_rss_idle_mb",
                "pushpin_rss_idle_mb", "app_rss_per_stream_kb", "pushpin_rss_per_stream_kb", "app_idle_cpu_percent",
                "pushpin_idle_cpu_percent"]  # fmt: skip
# GRIP against the app streaming itself, per scenario: (row, key). An app_ key of a target with no
# Pushpin is its unprefixed figure (the app is the whole server there).
GRIP_ROWS = {
    "fanout_1k": [("deliveries/s", "deliveries_per_second"), ("p50 ms", "latency_p50_ms"),
                  ("p99 ms", "latency_p99_ms"), ("lost", "lost"), ("streams cut", "streams_cut"),
                  ("server RSS MB (all)", "server_rss_mb"), ("server CPU % (all)", "server_cpu_percent"),
                  ("server CPU µs per delivery (all)", "server_cpu_us_per_delivery"),
                  ("app RSS MB", "app_rss_mb"), ("app CPU %", "app_cpu_percent"),
                  ("app CPU µs per delivery", "app_cpu_us_per_delivery"), ("Pushpin RSS MB", "pushpin_rss_mb"),
                  ("Pushpin CPU %", "pushpin_cpu_percent"),
                  ("Pushpin CPU µs per delivery", "pushpin_cpu_us_per_delivery")],
    "idle_10k": [("connect s", "connect_seconds"), ("streams cut", "streams_cut"),
                 ("RSS per stream KB (all)", "rss_per_stream_kb"), ("idle CPU % (all)", "idle_cpu_percent"),
                 ("app RSS per stream KB", "app_rss_per_stream_kb"), ("app idle CPU %", "app_idle_cpu_percent"),
                 ("Pushpin RSS per stream KB", "pushpin_rss_per_stream_kb"),
                 ("Pushpin idle CPU %", "pushpin_idle_cpu_percent"), ("server RSS MB (all)", "server_rss_mb")],
}  # fmt: skip
APP_FALLBACK = {"app_rss_mb": "server_rss_mb", "app_cpu_percent": "server_cpu_percent",
                "app_cpu_us_per_delivery": "server_cpu_us_per_delivery", "app_rss_per_stream_kb": "rss_per_stream_kb",
                "app_idle_cpu_percent": "idle_cpu_percent"}  # fmt: skip


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


def figure(result: dict[str, Any] | None, key: str) -> Any:
    """*key* of *result*; for a server with no parts, an ``app_`` key is the whole server's figure."""
    if result is None:
        return None
    if key not in result and "pushpin_rss_mb" not in result and "pushpin_rss_per_stream_kb" not in result:
        key = APP_FALLBACK.get(key, key)
    return result.get(key)


def grip_sections(results: list[dict[str, Any]]) -> list[str]:
    """The app and Pushpin apart, and GRIP against the peers as ratios (empty without a GRIP result)."""
    parts = [r for r in results if "pushpin_rss_mb" in r or "pushpin_rss_per_stream_kb" in r]
    if not parts:
        return []
    lines = ["", "## App and Pushpin apart (GRIP)", "", "| " + " | ".join(PART_COLUMNS) + " |",
             "|" + "---|" * len(PART_COLUMNS)]  # fmt: skip
    for result in parts:
        lines.append("| " + " | ".join(str(result.get(c, "")) for c in PART_COLUMNS) + " |")
    for scenario, rows in GRIP_ROWS.items():
        grip = find(results, GRIP, scenario)
        if grip is None:
            continue
        peers = [(name, find(results, name, scenario)) for name in GRIP_PEERS]
        header = ["measure", GRIP, *(name for name, _ in peers), *(f"GRIP / {name}" for name, _ in peers)]
        lines += ["", f"## GRIP against the app streaming itself: {scenario}", "", "| " + " | ".join(header) + " |",
                  "|" + "---|" * len(header)]  # fmt: skip
        for label, key in rows:
            ours = figure(grip, key)
            cells = [label, "—" if ours is None else str(ours)]
            cells += ["—" if figure(peer, key) is None else str(figure(peer, key)) for _, peer in peers]
            for _, peer in peers:
                theirs = figure(peer, key)
                ok = isinstance(ours, (int, float)) and isinstance(theirs, (int, float)) and theirs
                cells.append(f"{round(ours / theirs, 2)}x" if ok else "—")
            lines.append("| " + " | ".join(cells) + " |")
        names = {name for name, _ in peers}
        skipped = [
            f"{r['target']}: {r.get('skipped') or r.get('failed')}"
            for r in results
            if r["target"] in names and r["scenario"] == scenario and ("skipped" in r or "failed" in r)
        ]
        if skipped:
            lines += ["", "Not measured: " + "; ".join(skipped) + "."]
    return lines


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
    lines += grip_sections(report["results"])
    return "\n".join(lines) + "\n"
