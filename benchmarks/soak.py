"""The soak: minutes of steady publishing under reconnect churn and slow consumers, on gunicorn gevent.

python -m benchmarks --soak --minutes 5
python -m benchmarks.soak --minutes 2 --preload   # the same on gunicorn --preload (app made in the master)

Churners read for a random while, drop the connection and resume with
``Last-Event-ID``: each must get every event from its first connection on,
exactly once and in order. Slow readers take 1 KB every 0.2 s of a 100 KB/s
stream, so that the server cuts them off once the kernel's buffers and their
queue are full; after a minute they drop the connection and resume the same
way (told, with the ``history-lost`` event, when history no longer covers
them). The server's
RSS is sampled all along: once the history is full, it must stay flat. At the end every client leaves,
and the server must hold no subscriber within a heartbeat.
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from sse_wsgi import HISTORY_LOST_EVENT
from sse_wsgi.testing import EventStreamParser

from .client import Publisher, ResponseProtocol
from .targets import TARGETS, Server, Target

HEARTBEAT = 2.0  # seconds, so that the end check is quick
QUEUE_SIZE = 50  # chunks a subscriber may have queued before it is cut off
HISTORY = 5000  # events kept: 100 s at the default rate
RATE = 50.0  # events per second
PAYLOAD = 2048  # bytes of padding per event: 100 KB/s per stream
SLOW_PHASE = 60.0  # seconds a slow reader reads slowly before it drops the connection and resumes
CHURNERS = 100
SLOW_READERS = 10
SAMPLE_EVERY = 5.0  # seconds between RSS samples
STREAM_PATH = "/events?channel=bench"


class Stream(ResponseProtocol):
    """One connection to the events path; its events go to ``on_event``; ``done`` resolves when it ends."""

    def __init__(self, last_event_id: str | None, on_event: Any) -> None:
        resume = f"Last-Event-ID: {last_event_id}\r\n" if last_event_id else ""
        super().__init__(f"GET {STREAM_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\n{resume}\r\n".encode())
        self.on_event = on_event
        self.events = EventStreamParser()
        self.done: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def on_body(self, body: bytes) -> None:
        for event in self.events.feed(body):
            self.on_event(event)

    def on_message_complete(self) -> None:
        self.finish("ended")

    def connection_lost(self, exc: Exception | None) -> None:
        self.finish("lost")

    def close(self) -> None:
        self.finish("dropped")

    def finish(self, how: str) -> None:
        if not self.done.done():
            self.done.set_result(how)
        super().close()


@dataclass
class Reader:
    """What one client saw across all its connections."""

    seqs: list[int] = field(default_factory=list)
    last_id: str | None = None
    first_seq: int | None = None
    connections: int = 0
    lost_notices: int = 0

    def on_event(self, event: Any) -> None:
        if event.type == HISTORY_LOST_EVENT:
            self.lost_notices += 1
            return
        seq = int(event.data.split(" ", 1)[0])
        if self.first_seq is None:
            self.first_seq = seq
        self.seqs.append(seq)
        self.last_id = event.last_event_id

    def tally(self, published: int) -> tuple[int, int, bool]:
        """(lost, duplicated, in order) against the events published since this reader's first."""
        if self.first_seq is None:
            return published, 0, True
        expected = set(range(self.first_seq, published))
        return len(expected - set(self.seqs)), len(self.seqs) - len(set(self.seqs)), self.seqs == sorted(self.seqs)


async def connect(port: int, reader: Reader) -> Stream:
    loop = asyncio.get_running_loop()
    _, stream = await loop.create_connection(lambda: Stream(reader.last_id, reader.on_event), "127.0.0.1", port)
    reader.connections += 1
    return stream


async def churn(port: int, reader: Reader, until: float) -> None:
    """Read for a random 0.5-3 s, drop the connection, resume; until *until*."""
    while time.monotonic() < until:
        stream = await connect(port, reader)
        try:
            await asyncio.wait_for(asyncio.shield(stream.done), random.uniform(0.5, 3.0))
        except asyncio.TimeoutError:
            pass
        stream.close()


async def read_slowly(port: int, reader: Reader, until: float) -> None:
    """Take 1 KB every 0.2 s (a twentieth of the stream's rate) for a while, then drop and resume."""
    loop = asyncio.get_running_loop()
    while time.monotonic() < until:
        stream = Stream(reader.last_id, reader.on_event)
        with socket.socket() as sock:
            sock.setblocking(False)
            await loop.sock_connect(sock, ("127.0.0.1", port))
            reader.connections += 1
            await loop.sock_sendall(sock, stream.request)
            phase_end = min(until, time.monotonic() + SLOW_PHASE)
            while not stream.done.done() and time.monotonic() < phase_end:
                data = await loop.sock_recv(sock, 1024)
                if not data:
                    break
                stream.data_received(data)
                await asyncio.sleep(0.2)
        stream.close()


async def soak(port: int, server: Server, minutes: float, target: str = "sse_wsgi-gevent") -> dict[str, Any]:
    churners = [Reader() for _ in range(CHURNERS)]
    slow = [Reader() for _ in range(SLOW_READERS)]
    publisher = Publisher(port)
    await publisher.connect()
    padding = b"x" * PAYLOAD
    started = time.monotonic()
    until = started + minutes * 60
    tasks = [asyncio.create_task(churn(port, r, until)) for r in churners]
    tasks += [asyncio.create_task(read_slowly(port, r, until)) for r in slow]
    samples: list[tuple[float, int]] = []
    published = 0
    next_sample = started
    while time.monotonic() < until:
        delay = started + published / RATE - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        await publisher.send(b"%d %.6f %s" % (published, time.monotonic(), padding))
        published += 1
        if time.monotonic() >= next_sample:
            samples.append((round(time.monotonic() - started, 1), server.rss()))
            next_sample += SAMPLE_EVERY
    await asyncio.gather(*tasks)
    await publisher.close()
    # The churners' last connections caught up? One last resume each collects the rest.
    for reader in churners:
        stream = await connect(port, reader)
        deadline = time.monotonic() + 10
        while (not reader.seqs or reader.seqs[-1] < published - 1) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        stream.close()
    await asyncio.sleep(HEARTBEAT * 2 + 1)  # every client has left: each stream is freed at its next write
    stats = await asyncio.to_thread(server_stats, port)
    return figures(churners, slow, published, samples, stats, minutes, target)


def server_stats(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=10) as answer:
        return json.loads(answer.read())  # type: ignore[no-any-return]


def figures(
    churners: list[Reader], slow: list[Reader], published: int, samples: list[tuple[float, int]],
    stats: dict[str, Any], minutes: float, target: str = "sse_wsgi-gevent",
) -> dict[str, Any]:  # fmt: skip
    tallies = [r.tally(published) for r in churners]
    history_full = HISTORY / RATE + SAMPLE_EVERY  # seconds: from here on, memory must stay flat
    warm = [rss for at, rss in samples if at >= history_full] or [rss for _, rss in samples]
    return {
        "scenario": "soak",
        "target": target,
        "minutes": minutes,
        "events_published": published,
        "churners": len(churners),
        "churner_connections": sum(r.connections for r in churners),
        "churner_events_lost": sum(t[0] for t in tallies),
        "churner_events_duplicated": sum(t[1] for t in tallies),
        "churners_in_order": all(t[2] for t in tallies),
        "slow_readers": len(slow),
        "slow_connections": sum(r.connections for r in slow),
        "slow_subscribers_cut": stats["slow_subscribers_cut"],
        "slow_history_lost_notices": sum(r.lost_notices for r in slow),
        "slow_events_duplicated": sum(len(r.seqs) - len(set(r.seqs)) for r in slow),
        "rss_mb_history_full": round(warm[0] / 2**20, 1),
        "rss_mb_last": round(warm[-1] / 2**20, 1),
        "rss_mb_max": round(max(warm) / 2**20, 1),
        "rss_mb_samples": [[at, round(rss / 2**20, 1)] for at, rss in samples],
        "subscriptions_left": stats["subscriptions"],
    }


def preloaded(target: Target) -> Target:
    """*target* (a gunicorn one) started with ``--preload``: the app and its publisher made in the master."""

    def command(port: int, streams: int) -> list[str]:
        argv = target.command(port, streams)
        return [*argv[:-1], "--preload", argv[-1]]  # the app spec stays last

    return Target(f"{target.name}-preload", command, target.max_streams, target.needs_redis, "gunicorn --preload")


def run_soak(minutes: float, preload: bool = False) -> dict[str, Any]:
    from .run import run_client

    env = {"BENCH_HEARTBEAT": str(HEARTBEAT), "BENCH_QUEUE_SIZE": str(QUEUE_SIZE), "BENCH_HISTORY": str(HISTORY)}
    target = TARGETS["sse_wsgi-gevent"]
    if preload:
        target = preloaded(target)
    server = Server(target, CHURNERS + SLOW_READERS + 50, None, env=env)
    try:
        return run_client(soak(server.port, server, minutes, target.name))
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.soak [--minutes M] [--preload] [--out DIR]``: the soak alone, figures to ``--out``."""
    import argparse
    import datetime
    import os
    from pathlib import Path

    from .run import RESULTS, machine, raise_open_file_limit
    from .targets import CLIENT_CPUS

    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__)
    parser.add_argument("--minutes", type=float, default=5.0, help="how long the soak runs (default: 5)")
    parser.add_argument("--preload", action="store_true", help="start gunicorn with --preload")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where results go (default: benchmarks/results)")
    args = parser.parse_args(argv)
    if args.minutes <= 0:
        parser.error("--minutes takes a positive number")
    raise_open_file_limit()
    os.sched_setaffinity(0, CLIENT_CPUS)
    result = run_soak(args.minutes, preload=args.preload)
    print(json.dumps(result, indent=2))
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"soak-{'preload-' if args.preload else ''}{datetime.date.today().isoformat()}"
    (args.out / f"{stem}.json").write_text(json.dumps({"machine": machine(), "results": [result]}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
