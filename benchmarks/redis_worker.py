"""One process of the Redis layout benchmark (benchmarks/redis_layout.py): a subscriber or a publisher.

It imports nothing but the standard library and ``sse_wsgi``, so that the same file drives the broker of
this work tree and the one-stream broker of an older commit extracted from git: the driver runs it as
``python -P benchmarks/redis_worker.py '<json settings>'`` with ``PYTHONPATH`` (and the working directory)
set to the tree whose ``sse_wsgi`` is measured.

The worker talks in JSON lines: it writes ``{"event": ...}`` lines to stdout and reads commands
(``go``, ``stop``) from stdin, one a line.

- ``subscribe``: one ``Publisher.from_url``, one subscription per channel, each read by a thread of its
  own; says ``ready`` once all are registered, ``done`` once it has received the deliveries it was told to
  expect, and on ``stop`` answers its figures (per channel: count, sum of the sequence numbers, in order?;
  delivery latencies; the publisher's ``stats()``) and exits.
- ``publish``: publishes a few warm-up events (to channels ``warm-up:<i>``), says ``ready``, waits for
  ``go``, publishes its events one after the other, each to a channel drawn from a fixed seed (see
  :func:`plan`), and answers the time each ``publish`` call took and its CPU seconds.

Every event's data is ``"<seq> <monotonic publish time> "`` padded with ``x`` to the payload size (the
monotonic clock is the machine's, so latencies across processes hold).
"""

from __future__ import annotations

import json
import random
import sys
import threading
import time
from typing import Any

WARM_UP_CHANNELS = 8  # warm-up events, one per channel: scripts loaded, connections (to every master) open
STOP_TIMEOUT = 10.0  # seconds for the reader threads to end once the publisher is closed

_print_lock = threading.Lock()


def say(event: str, **figures: Any) -> None:
    """Write one JSON line to stdout."""
    with _print_lock:
        sys.stdout.write(json.dumps({"event": event, **figures}) + "\n")
        sys.stdout.flush()


def plan(seed: int, channels: int, events: int) -> list[int]:
    """The channel index of each event: uniform over *channels*, the same for the same seed in any process."""
    chooser = random.Random(seed)
    return [chooser.randrange(channels) for _ in range(events)]


def payload(seq: int, size: int) -> str:
    return f"{seq} {time.monotonic():.6f} ".ljust(size, "x")


def command(expected: str) -> None:
    """Wait for *expected* on stdin (the driver bounds how long it waits for this process)."""
    line = sys.stdin.readline().strip()
    if line != expected:
        raise SystemExit(f"expected {expected!r} on stdin, got {line!r}")


class Reader:
    """One subscription read by a thread of its own: counts what it gets, checks the order."""

    def __init__(self, subscription: Any, channel: str, progress: Progress) -> None:
        self.subscription = subscription
        self.channel = channel
        self.progress = progress
        self.count = 0
        self.seq_sum = 0
        self.last_seq = -1
        self.in_order = True
        self.latencies_us: list[int] = []
        self.thread = threading.Thread(target=self._read, name=f"reader-{channel}", daemon=True)
        self.thread.start()

    def _read(self) -> None:
        for chunk in self.subscription:
            now = time.monotonic()
            got = 0
            for event in chunk.split(b"\n\n"):
                start = event.find(b"data:")
                if start < 0:
                    continue  # a comment, or the empty tail after the last event
                seq_text, sent = event[start + 5 :].lstrip().split(b" ", 2)[:2]
                seq = int(seq_text)
                self.in_order = self.in_order and seq > self.last_seq
                self.last_seq = seq
                self.seq_sum += seq
                self.latencies_us.append(round((now - float(sent)) * 1e6))
                got += 1
            self.count += got
            self.progress.add(got)

    def figures(self) -> dict[str, Any]:
        return {"count": self.count, "seq_sum": self.seq_sum, "in_order": self.in_order}


class Progress:
    """Deliveries so far over all readers; says ``done`` once they reach the expected number."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.deliveries = 0
        self._lock = threading.Lock()
        self._said = False

    def add(self, count: int) -> None:
        with self._lock:
            self.deliveries += count
            reached = self.deliveries >= self.expected and not self._said
            self._said = self._said or reached
        if reached:
            say("done", deliveries=self.deliveries, at=time.monotonic())


def subscribe(settings: dict[str, Any]) -> None:
    import sse_wsgi

    publisher = sse_wsgi.Publisher.from_url(settings["url"], history=settings["history"], key=settings["key"])
    progress = Progress(settings["expect"])
    readers = [Reader(publisher.subscribe(c, heartbeat=None), c, progress) for c in settings["channels"]]
    say("ready", sse_wsgi=sse_wsgi.__file__, channels=len(readers))
    command("stop")
    stats = publisher.stats()
    publisher.close()
    deadline = time.monotonic() + STOP_TIMEOUT
    for reader in readers:
        reader.thread.join(max(0.0, deadline - time.monotonic()))
    say(
        "result",
        channels={r.channel: r.figures() for r in readers},
        deliveries=sum(r.count for r in readers),
        latencies_us=[latency for r in readers for latency in r.latencies_us],
        readers_left=sum(1 for r in readers if r.thread.is_alive()),
        stats={k: stats.get(k) for k in ("events_published", "events_delivered", "slow_subscribers_cut")},
        gaps_reported=stats.get("gaps_reported"),
    )


def publish(settings: dict[str, Any]) -> None:
    import sse_wsgi

    publisher = sse_wsgi.Publisher.from_url(settings["url"], history=settings["history"], key=settings["key"])
    for index in range(WARM_UP_CHANNELS):
        publisher.publish("warm-up", f"warm-up:{index}")
    if "channel" in settings:  # every event to one channel
        channels = [settings["channel"]] * settings["events"]
    else:  # each to one of channels <prefix>0 .. <prefix><channels - 1>, drawn from the seed
        drawn = plan(settings["seed"], settings["channels"], settings["events"])
        channels = [f"{settings['prefix']}{i}" for i in drawn]
    size = settings["payload"]
    say("ready", sse_wsgi=sse_wsgi.__file__)
    command("go")
    latencies_us = []
    cpu_before, started = time.process_time(), time.monotonic()
    for seq, channel in enumerate(channels):
        data = payload(seq, size)
        before = time.perf_counter()
        publisher.publish(data, channel)
        latencies_us.append(round((time.perf_counter() - before) * 1e6))
    ended = time.monotonic()
    cpu = time.process_time() - cpu_before
    publisher.close()
    say("result", started=started, ended=ended, cpu_seconds=cpu, latencies_us=latencies_us)


def main() -> None:
    settings = json.loads(sys.argv[1])
    {"subscribe": subscribe, "publish": publish}[settings["role"]](settings)


if __name__ == "__main__":
    main()
