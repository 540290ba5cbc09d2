"""Shutdown: Publisher.close() and gunicorn's TERM/HUP end every stream cleanly and at once; clients resume."""

from __future__ import annotations

import signal
import threading
import time

import httpx
import pytest

from sse_wsgi.testing import EventStreamParser, ReceivedEvent
from tests.support.redis_server import RedisServer
from tests.support.servers.harness import SERVERS, LiveServer, start_server

pytestmark = pytest.mark.integration

APP = "tests.support.servers.apps.basic:app"
HOOK = ["-c", "tests/support/servers/gunicorn_conf.py"]


class Stream:
    """An open stream read in a named thread: when and how it ended, and the events it carried."""

    def __init__(self, url: str, headers: dict[str, str] | None = None) -> None:
        self.client = httpx.Client(timeout=httpx.Timeout(5, read=30))
        self.response = self.client.send(self.client.build_request("GET", url, headers=headers), stream=True)
        assert self.response.status_code == 200
        self.events: list[ReceivedEvent] = []
        self.error: Exception | None = None
        self.ended_at = 0.0
        self.ended = threading.Event()
        threading.Thread(target=self._read, name="test-shutdown-stream", daemon=True).start()

    def _read(self) -> None:
        parser = EventStreamParser()
        try:
            for chunk in self.response.iter_raw():
                self.events.extend(parser.feed(chunk))
        except httpx.HTTPError as error:  # a reset or a truncated chunked body: not a clean end
            self.error = error
        finally:
            self.ended_at = time.monotonic()
            self.ended.set()
            self.client.close()


def wait_until(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)
    return bool(condition())


def reconnect_like_a_browser(url: str, last_event_id: str) -> Stream:
    """Reconnect with Last-Event-ID, again after a short wait while a stopping worker answers ``retry:`` only."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        stream = Stream(url, headers={"Last-Event-ID": last_event_id})
        if not stream.ended.wait(0.5):
            return stream  # still open: a live worker
        assert stream.error is None and stream.events == []  # a draining worker's retry-only answer
        time.sleep(0.25)
    raise AssertionError("no worker took the stream")


def subscriptions(server: LiveServer) -> int:
    return int(httpx.get(server.url + "/stats", timeout=5).json()["subscriptions"])


@pytest.mark.parametrize("kind", SERVERS)
def test_publisher_close_ends_every_stream_within_a_second(kind: str) -> None:
    with start_server(kind, APP, env={"SSE_HEARTBEAT": "30"}) as server:
        streams = [Stream(server.url + "/events") for _ in range(5)]
        assert wait_until(lambda: subscriptions(server) == 5, 5)
        closed_at = time.monotonic()
        assert httpx.post(server.url + "/close", timeout=5).text == "closed"
        for stream in streams:
            assert stream.ended.wait(3), f"{kind}: a stream outlived Publisher.close()"
            assert stream.error is None, f"{kind}: the stream did not end cleanly: {stream.error!r}"
            assert stream.ended_at - closed_at < 1.0
        assert httpx.get(server.url + "/events", timeout=5).status_code == 503


@pytest.mark.parametrize("kind", ["gunicorn-gthread", "gunicorn-gevent"])
def test_gunicorn_term_ends_streams_cleanly_and_the_worker_exits_at_once(kind: str) -> None:
    server = start_server(kind, APP, env={"SSE_HEARTBEAT": "30"}, args=HOOK)
    try:
        streams = [Stream(server.url + "/events") for _ in range(3)]
        assert wait_until(lambda: subscriptions(server) == 3, 5)
        stopped_at = time.monotonic()
        server.signal(signal.SIGTERM)
        for stream in streams:
            assert stream.ended.wait(3)
            assert stream.error is None, f"not a clean end: {stream.error!r}"
            assert stream.ended_at - stopped_at < 1.5
        assert server.proc is not None
        server.proc.wait(4)  # well before --graceful-timeout 5 would kill it
        assert time.monotonic() - stopped_at < 4
        assert "ending every event stream" in server.output() or server.proc.returncode == 0
    finally:
        server.stop()


@pytest.mark.redis
@pytest.mark.parametrize("kind", ["gunicorn-gthread", "gunicorn-gevent"])
def test_gunicorn_hup_clients_resume_on_new_workers_without_loss(kind: str, redis_server: RedisServer) -> None:
    env = {"SSE_HEARTBEAT": "30", "SSE_REDIS_URL": redis_server.url}
    with start_server(kind, APP, env=env, args=HOOK) as server:
        stream = Stream(server.url + "/events/live")
        assert wait_until(lambda: subscriptions(server) == 1, 5)
        ids = [httpx.post(server.url + "/publish?channel=live", content=f"e{n}", timeout=5).text for n in range(3)]
        assert wait_until(lambda: len(stream.events) == 3, 5)
        server.signal(signal.SIGHUP)  # graceful reload: new workers, the old ones stop
        assert stream.ended.wait(5)
        assert stream.error is None, f"not a clean end: {stream.error!r}"
        # Published while the client was between workers (the master keeps the listening socket).
        ids += [httpx.post(server.url + "/publish?channel=live", content=f"e{n}", timeout=10).text for n in range(3, 6)]
        resumed = reconnect_like_a_browser(server.url + "/events/live", stream.events[-1].last_event_id)
        ids.append(httpx.post(server.url + "/publish?channel=live", content="e6", timeout=5).text)
        assert wait_until(lambda: len(resumed.events) >= 4, 10)
        received = stream.events + resumed.events
        assert [e.last_event_id for e in received] == ids  # none lost, none twice
        assert [e.data for e in received] == [f"e{n}" for n in range(7)]
        resumed.response.close()
