"""Hostile conditions on real servers: reconnect storms, slow consumers, load shedding. Figures go to the report.

Each test prints its figures (events lost and duplicated, RSS at start and end)
in a ``FIGURES`` line, shown with ``pytest -s`` or ``-rP``.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from contextlib import ExitStack, closing
from pathlib import Path

import h11
import httpx
import pytest

from sse_wsgi import HISTORY_LOST_EVENT
from sse_wsgi.testing import EventStreamParser, ReceivedEvent
from tests.support.redis_server import RedisServer
from tests.support.servers.harness import LiveServer, start_server

pytestmark = pytest.mark.integration

APP = "tests.support.servers.apps.basic:app"
HISTORY = 1000  # events the test app keeps (the Publisher default)


def rss_kib(pid: int) -> int:
    """Resident set size of *pid* and its children (gunicorn workers), in KiB."""
    total = 0
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(p) for p in children.read_text().split()]
    for each in pids:
        for line in Path(f"/proc/{each}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


def figures(name: str, **values: object) -> None:
    print(f"FIGURES {name} " + json.dumps(values))


class Publisher(threading.Thread):
    """Publishes numbered events to a channel over HTTP at a steady pace until stopped."""

    def __init__(self, server: LiveServer, channel: str, interval: float) -> None:
        super().__init__(name="test-hostile-publisher", daemon=True)
        self.url = f"{server.url}/publish?channel={channel}"
        self.interval = interval
        self.ids: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        with httpx.Client(timeout=5) as client:
            n = 0
            while not self.stop.is_set():
                self.ids.append(client.post(self.url, content=str(n)).text)
                n += 1
                self.stop.wait(self.interval)


def read_some(url: str, last_event_id: str | None, count: int, timeout: float = 5.0) -> list[ReceivedEvent]:
    """Connect (resuming after *last_event_id*), read up to *count* events, then drop the connection."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    events: list[ReceivedEvent] = []
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=httpx.Timeout(5, read=2)) as client, client.stream("GET", url, headers=headers) as stream:
        parser = EventStreamParser()
        for chunk in stream.iter_raw():
            events.extend(parser.feed(chunk))
            if len(events) >= count or time.monotonic() > deadline:
                break
    return events  # may hold more than count: a chunk can carry several events


def reconnect_storm(server: LiveServer, reconnects: int) -> tuple[list[str], list[str]]:
    """A client that drops and resumes *reconnects* times while events flow; (published ids, received ids)."""
    publisher = Publisher(server, "storm", interval=0.005)
    publisher.start()
    received: list[ReceivedEvent] = []
    last: str | None = None
    try:
        while not publisher.ids:
            time.sleep(0.01)
        received += read_some(server.url + "/events/storm", None, 1)
        last = received[-1].last_event_id
        for _ in range(reconnects):
            received += read_some(server.url + "/events/storm", last, 3)
            last = received[-1].last_event_id
    finally:
        publisher.stop.set()
        publisher.join(5)
    # One last resume collects everything published up to the end.
    target = publisher.ids[-1]
    while last != target:
        more = read_some(server.url + "/events/storm", last, 10**6, timeout=1)
        received += more
        last = received[-1].last_event_id
    return publisher.ids, [e.last_event_id for e in received]


def count_loss(published: list[str], received: list[str]) -> tuple[int, int]:
    first = published.index(received[0])
    expected = published[first:]
    lost = len(set(expected) - set(received))
    duplicated = len(received) - len(set(received))
    return lost, duplicated


@pytest.mark.parametrize("kind", ["gunicorn-gevent", "waitress"])
def test_hundred_reconnects_lose_and_repeat_nothing(kind: str) -> None:
    with start_server(kind, APP, env={"SSE_HEARTBEAT": "1"}) as server:
        published, received = reconnect_storm(server, 100)
    lost, duplicated = count_loss(published, received)
    figures(f"reconnect-storm-{kind}", published=len(published), received=len(received), lost=lost,
            duplicated=duplicated)  # fmt: skip
    assert (lost, duplicated) == (0, 0)
    assert received == published[published.index(received[0]) :]  # in order


@pytest.mark.redis
def test_reconnects_across_web_server_and_redis_restarts_lose_nothing(redis_server: RedisServer) -> None:
    env = {"SSE_HEARTBEAT": "1", "SSE_REDIS_URL": redis_server.url}
    received: list[str] = []
    published: list[str] = []
    last: str | None = None
    with start_server("gunicorn-gthread", APP, env=env) as writer:
        for phase in ("first server", "restarted server", "after redis restart"):
            with start_server("waitress", APP, env=env) as reader:
                publisher = Publisher(writer, "storm", interval=0.01)
                publisher.start()
                while len(publisher.ids) < 5:
                    time.sleep(0.01)
                for _ in range(10):
                    events = read_some(reader.url + "/events/storm", last, 3)
                    received += [e.last_event_id for e in events]
                    last = received[-1] if received else last
                publisher.stop.set()
                publisher.join(5)
                published += publisher.ids
                while last != published[-1]:
                    received += [e.last_event_id for e in read_some(reader.url + "/events/storm", last, 10**6, 1)]
                    last = received[-1]
            if phase == "restarted server":
                redis_server.restart()  # append-only: history survives
                time.sleep(0.5)  # the web servers' readers reconnect with backoff
    lost, duplicated = count_loss(published, received)
    figures("restarts-redis", published=len(published), received=len(received), lost=lost, duplicated=duplicated)
    assert (lost, duplicated) == (0, 0)


def test_slow_consumers_are_cut_off_fast_ones_keep_up_and_memory_stays_flat() -> None:
    """100 subscribers, 10 of them sleeping between small reads (queues of 100); RSS flat once the history is full."""
    env = {"SSE_HEARTBEAT": "5", "SSE_QUEUE_SIZE": "100"}
    with start_server("gunicorn-gthread", APP, env=env, args=["--threads", "150"]) as server, ExitStack() as streams:
        fast = [streams.enter_context(closing(FastReader(server, n))) for n in range(90)]
        slow = [streams.enter_context(closing(SlowReader(server, n))) for n in range(10)]
        deadline = time.monotonic() + 10
        while httpx.get(server.url + "/stats", timeout=5).json()["subscriptions"] < 100 and time.monotonic() < deadline:
            time.sleep(0.05)
        rss_start = rss_kib(server.proc.pid)  # type: ignore[union-attr]
        padding = "x" * 4000
        ids = []
        with httpx.Client(timeout=5) as client:
            for _ in range(HISTORY + 500):
                body = f"{time.monotonic():.6f} {padding}"
                ids.append(client.post(server.url + "/publish?channel=load", content=body).text)
                if len(ids) == HISTORY:  # the history is full from here on: memory must stay flat
                    rss_full = rss_kib(server.proc.pid)  # type: ignore[union-attr]
        deadline = time.monotonic() + 30
        while any(len(r.events) < len(ids) for r in fast) and time.monotonic() < deadline:
            time.sleep(0.1)
        stats = httpx.get(server.url + "/stats", timeout=5).json()
        rss_end = rss_kib(server.proc.pid)  # type: ignore[union-attr]
        for reader in slow:
            reader.hurry()  # read what the kernel still holds, up to the stream's end
        deadline = time.monotonic() + 30
        while not all(r.ended.is_set() for r in slow) and time.monotonic() < deadline:
            time.sleep(0.1)
        lags = sorted(lag for r in fast for lag in r.lags)
        p99 = lags[int(len(lags) * 0.99)]
        figures("slow-consumers", rss_start_kib=rss_start, rss_history_full_kib=rss_full, rss_end_kib=rss_end,
                cut_off=stats["slow_subscribers_cut"],
                fast_p50_ms=round(lags[len(lags) // 2] * 1000, 1), fast_p99_ms=round(p99 * 1000, 1),
                slow_received=[len(r.events) for r in slow], events=len(ids))  # fmt: skip
        assert all([e.last_event_id for e in r.events] == ids for r in fast)  # fast ones got everything
        assert stats["slow_subscribers_cut"] == 10
        assert stats["subscriptions"] == 90
        assert [r.outcome for r in slow] == ["end of stream"] * 10  # each cut-off stream ended normally
        assert all(0 < len(r.events) < len(ids) for r in slow)
        assert p99 < 2.0  # seconds: the slow ones never held the others up (a blocked publish would)
        assert rss_end - rss_full < 6_000  # KiB: flat once the history is full (cut-off queues dropped, not kept)
        # A cut-off client that reconnects from its last event catches up from what history still holds.
        # How much the kernel buffered before the cut depends on its TCP buffer sizes: when events it
        # missed were already trimmed, the history-lost notice comes first.
        last = slow[0].events[-1].last_event_id
        missed = ids[ids.index(last) + 1 :]
        kept = [i for i in missed if i in ids[-HISTORY:]]
        assert kept
        expected = ([HISTORY_LOST_EVENT] if len(kept) < len(missed) else []) + ["message"] * len(kept)
        resumed = read_some(server.url + "/events/load", last, len(expected), timeout=20)
        assert [e.type for e in resumed] == expected
        assert [e.last_event_id for e in resumed if e.type == "message"] == kept


class SlowReader:
    """A client that sleeps between small reads, decoding the chunked stream with h11."""

    def __init__(self, server: LiveServer, n: int) -> None:
        # The receive buffer keeps its default size: shrinking it below the loopback MSS makes the
        # kernel advertise a zero window and back off its probes for minutes, whatever the reader does.
        self.sock = socket.create_connection(("127.0.0.1", server.port))
        self.http = h11.Connection(h11.CLIENT)
        request = h11.Request(method="GET", target="/events/load", headers=[("Host", "127.0.0.1")])
        self.sock.sendall(self.http.send(request) + self.http.send(h11.EndOfMessage()))
        self.pause, self.read_size = 0.2, 1024
        self.events: list[ReceivedEvent] = []
        self.ended = threading.Event()
        self.outcome = "still open"
        threading.Thread(target=self._read, name=f"test-slow-{n}", daemon=True).start()

    def _read(self) -> None:
        parser = EventStreamParser()
        try:
            while not self.ended.is_set():
                data = self.sock.recv(self.read_size)
                self.http.receive_data(data)
                while (event := self.http.next_event()) not in (h11.NEED_DATA, h11.PAUSED):
                    if isinstance(event, h11.Data):
                        self.events.extend(parser.feed(bytes(event.data)))
                    elif isinstance(event, h11.EndOfMessage):
                        self.outcome = "end of stream"
                        self.ended.set()
                if not data and not self.ended.is_set():
                    self.outcome = "closed before the end of the stream"
                    return
                time.sleep(self.pause)
        except (OSError, h11.ProtocolError) as error:  # the stream broke off: the assertion shows how
            self.outcome = repr(error)

    def hurry(self) -> None:
        """Read as fast as a normal client from now on."""
        self.pause, self.read_size = 0, 1 << 16

    def close(self) -> None:
        self.sock.close()


class FastReader:
    """A client that reads as fast as it can and notes each event's delay since it was published."""

    def __init__(self, server: LiveServer, n: int) -> None:
        self.client = httpx.Client(timeout=httpx.Timeout(5, read=30))
        try:
            self.response = self.client.send(self.client.build_request("GET", server.url + "/events/load"), stream=True)
        except httpx.HTTPError:
            self.client.close()
            raise
        self.events: list[ReceivedEvent] = []
        self.lags: list[float] = []
        threading.Thread(target=self._read, name=f"test-fast-{n}", daemon=True).start()

    def _read(self) -> None:
        parser = EventStreamParser()
        try:
            for chunk in self.response.iter_raw():
                now = time.monotonic()
                events = parser.feed(chunk)
                self.events.extend(events)
                self.lags.extend(now - float(e.data.split(" ", 1)[0]) for e in events)
        except httpx.HTTPError:
            pass

    def close(self) -> None:
        self.response.close()
        self.client.close()


def test_max_subscribers_sheds_load_with_a_retry_only_stream() -> None:
    with start_server("waitress", APP, env={"SSE_MAX_SUBSCRIBERS": "3", "SSE_HEARTBEAT": "1"}) as server:
        with httpx.Client(timeout=httpx.Timeout(5, read=10)) as client:
            held = [client.send(client.build_request("GET", server.url + "/events"), stream=True) for _ in range(3)]
            for response in held:
                next(response.iter_raw())
            refused = client.get(server.url + "/events")  # reads to the end: the stream ends by itself
            assert refused.status_code == 200
            assert refused.headers["content-type"] == "text/event-stream; charset=utf-8"
            parser = EventStreamParser()
            assert parser.feed(refused.content) == []
            assert parser.retry is not None and 5000 <= parser.retry <= 15000
            assert refused.content == f"retry: {parser.retry}\n\n".encode()
            stats = client.get(server.url + "/stats").json()
            assert (stats["streams_refused"], stats["subscriptions"]) == (1, 3)
            for response in held:
                response.close()
