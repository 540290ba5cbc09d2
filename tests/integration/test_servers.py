"""The server matrix: every supported WSGI server streams promptly, to many clients, and frees what clients leave.

gunicorn runs both ways: importing the app in each worker, and with ``--preload`` (the app and its
publisher made in the master, then forked), on the in-memory broker and on Redis.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, closing

import httpx
import pytest

from sse_wsgi._http import DEFAULT_RETRY_MS as DEFAULT_RETRY
from sse_wsgi.testing import EventStreamParser, ReceivedEvent
from tests.support.redis_server import RedisServer
from tests.support.servers.harness import PRELOADED, SERVERS, LiveServer, start_server, wait_until

pytestmark = pytest.mark.integration

HEARTBEAT = 1.0  # seconds
STREAMS = 50
EVENTS = 20
MATRIX = SERVERS + PRELOADED
APP = "tests.support.servers.apps.basic:app"


@pytest.fixture(scope="module", params=MATRIX)
def server(request: pytest.FixtureRequest) -> Iterator[LiveServer]:
    env = {"SSE_HEARTBEAT": str(HEARTBEAT)}
    with start_server(request.param, APP, env=env) as live:
        yield live


def check_opening(chunk: bytes) -> None:
    """The first chunk of a stream: whole fields, no event, and the default ``retry:``."""
    parser = EventStreamParser()
    assert parser.feed(chunk) == [], chunk
    assert chunk.endswith(b"\n\n"), chunk
    assert parser.retry == DEFAULT_RETRY, f"no retry: {DEFAULT_RETRY} in the opening chunk {chunk!r}"


class RawStream:
    """An event stream read over a plain socket (HTTP/1.0-style framing and chunked both handled by h11)."""

    def __init__(self, base: str, path: str, name: str) -> None:
        self.client = httpx.Client(timeout=httpx.Timeout(5, read=30))
        try:
            self.response = self.client.send(self.client.build_request("GET", base + path), stream=True)
        except httpx.HTTPError:
            self.client.close()
            raise
        self.opened = time.monotonic()
        self.first_chunk = b""
        self.first_chunk_at = 0.0
        self.comments: list[str] = []
        self.events: list[ReceivedEvent] = []
        self.arrivals: list[float] = []
        self.ended = threading.Event()
        self.parser = EventStreamParser()
        threading.Thread(target=self._read, name=name, daemon=True).start()

    def _read(self) -> None:
        try:
            for chunk in self.response.iter_raw():
                if not self.first_chunk:
                    self.first_chunk, self.first_chunk_at = chunk, time.monotonic()
                events = self.parser.feed(chunk)
                self.events.extend(events)
                self.arrivals.extend(time.monotonic() for _ in events)
        except httpx.HTTPError:
            pass
        finally:
            self.ended.set()

    def wait(self, condition, timeout: float = 10.0) -> bool:
        return wait_until(condition, timeout)

    def close(self) -> None:
        self.response.close()
        self.client.close()


def stats(server: LiveServer) -> dict:
    return httpx.get(server.url + "/stats", timeout=5).json()


def wait_subscriptions(server: LiveServer, count: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while (current := stats(server)["subscriptions"]) != count and time.monotonic() < deadline:
        time.sleep(0.1)
    return current


def publish(server: LiveServer, data: str, channel: str) -> str:
    response = httpx.post(f"{server.url}/publish?channel={channel}", content=data.encode(), timeout=5)
    assert response.status_code == 200
    return response.text


def test_stream_opens_at_once_and_first_event_is_not_buffered(server: LiveServer) -> None:
    stream = RawStream(server.url, "/events/prompt", "test-prompt")
    try:
        assert stream.response.status_code == 200
        assert stream.response.headers["content-type"] == "text/event-stream; charset=utf-8"
        assert stream.wait(lambda: stream.first_chunk, 5)
        check_opening(stream.first_chunk)
        assert stream.first_chunk_at - stream.opened < 2
        sent = time.monotonic()
        event_id = publish(server, "first", "prompt")
        assert stream.wait(lambda: stream.events, 5), f"{server.kind} held the event back"
        assert (stream.events[0].data, stream.events[0].last_event_id) == ("first", event_id)
        assert stream.arrivals[0] - sent < 1.0
    finally:
        stream.close()


def test_heartbeats_arrive_on_an_idle_stream(server: LiveServer) -> None:
    stream = RawStream(server.url, "/events/idle", "test-idle")
    try:
        assert stream.wait(lambda: stream.parser.comments.count("keep-alive") >= 2, HEARTBEAT * 3 + 3)
        assert not stream.events
    finally:
        stream.close()


def check_many_streams_get_every_event_in_order(server: LiveServer) -> None:
    with ExitStack() as opened:
        streams = [opened.enter_context(closing(RawStream(server.url, "/events/crowd", f"test-crowd-{n}")))
                   for n in range(STREAMS)]  # fmt: skip
        assert all(s.response.status_code == 200 for s in streams)
        assert wait_subscriptions(server, STREAMS, 10) == STREAMS
        ids = [publish(server, f"event {n}", "crowd") for n in range(EVENTS)]
        for stream in streams:
            delivered = stream.wait(lambda s=stream: len(s.events) >= EVENTS, 15)
            assert delivered, f"{server.kind}: {len(stream.events)} of {EVENTS} events reached a stream"
            assert [(e.data, e.last_event_id) for e in stream.events] == [
                (f"event {n}", event_id) for n, event_id in enumerate(ids)
            ]


def test_many_concurrent_streams_each_get_every_event_in_order(server: LiveServer) -> None:
    assert wait_subscriptions(server, 0, HEARTBEAT + 3) == 0  # earlier tests' clients are gone
    check_many_streams_get_every_event_in_order(server)


def wait_connected(server: LiveServer, connected: bool, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while (state := stats(server)["connected"]) != connected and time.monotonic() < deadline:
        time.sleep(0.1)
    return bool(state)


@pytest.mark.redis
@pytest.mark.parametrize("kind", MATRIX)
def test_on_redis_many_streams_get_every_event_and_stats_tell_the_reader_state(
    redis_server: RedisServer,
    kind: str,
) -> None:
    """``connected`` is the state of the reader of the worker that answers: dead with Redis gone, never stuck."""
    env = {"SSE_HEARTBEAT": str(HEARTBEAT), "SSE_REDIS_URL": redis_server.url}
    with start_server(kind, APP, env=env) as live:
        check_many_streams_get_every_event_in_order(live)
        assert stats(live)["connected"] is True
        redis_server.stop()
        assert wait_connected(live, False, 3) is False, f"{kind}: stats() say connected with Redis gone"
        redis_server.start()
        assert wait_connected(live, True, 10) is True, f"{kind}: not connected again after Redis came back"


def test_subscribers_are_freed_after_clients_disconnect(server: LiveServer) -> None:
    assert wait_subscriptions(server, 0, HEARTBEAT + 3) == 0  # earlier tests' clients
    sockets = []
    for _ in range(10):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        sock.sendall(b"GET /events/leaving HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.")
        sockets.append(sock)
    assert wait_subscriptions(server, 10, 5) == 10
    gone_at = time.monotonic()
    for sock in sockets:
        sock.close()
    assert wait_subscriptions(server, 0, HEARTBEAT + 3) == 0, f"{server.kind} kept subscribers of gone clients"
    assert time.monotonic() - gone_at <= HEARTBEAT + 3


CONCURRENCY_WARNING = "handles one request at a time per process"


def test_no_concurrency_warning_on_a_concurrent_server(server: LiveServer) -> None:
    assert CONCURRENCY_WARNING not in server.output()


def test_gunicorn_sync_gets_one_clear_warning() -> None:
    with start_server("gunicorn-sync", "tests.support.servers.apps.basic:app", env={"SSE_HEARTBEAT": "0.3"}) as sync:
        for _ in range(2):  # one worker, one stream at a time: the second waits for the first to be freed
            with httpx.stream("GET", sync.url + "/events", timeout=10) as response:
                check_opening(next(response.iter_raw()))
        deadline = time.monotonic() + 5
        while CONCURRENCY_WARNING not in sync.output() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sync.output().count(CONCURRENCY_WARNING) == 1
        assert "gunicorn -k gthread" in sync.output()


def test_max_lifetime_ends_the_stream_normally_and_resume_loses_nothing() -> None:
    env = {"SSE_HEARTBEAT": "5", "SSE_MAX_LIFETIME": "1"}
    with start_server("waitress", "tests.support.servers.apps.basic:app", env=env) as live:
        with httpx.Client(timeout=10) as client:
            started = time.monotonic()
            with client.stream("GET", live.url + "/events/life") as response:
                parser = EventStreamParser()
                events = []
                for chunk in response.iter_raw():  # ends cleanly: no exception from the client
                    events.extend(parser.feed(chunk))
                    if not events:
                        publish(live, "before the end", "life")
            lifetime = time.monotonic() - started
            assert 0.9 <= lifetime < 4
            assert response.status_code == 200
            [event] = events
            missed = publish(live, "while away", "life")
            headers = {"Last-Event-ID": event.last_event_id}
            with client.stream("GET", live.url + "/events/life", headers=headers) as again:
                parser = EventStreamParser()
                resumed: list[ReceivedEvent] = []
                for chunk in again.iter_raw():
                    resumed.extend(parser.feed(chunk))
                    if resumed:
                        break
            assert [(e.data, e.last_event_id) for e in resumed] == [("while away", missed)]
