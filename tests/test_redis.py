"""The Redis broker against a real redis-server: processes share events, ids and history; faults lose nothing."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from sse_wsgi import HISTORY_LOST_EVENT, BrokerUnavailable, Publisher, Subscription
from sse_wsgi.redis import RedisBroker
from sse_wsgi.testing import EventStreamParser, ReceivedEvent
from tests.redis_server import RedisServer, redis_server  # noqa: F401  (the fixture)
from tests.servers.harness import start_server

pytestmark = [pytest.mark.integration, pytest.mark.redis]


class Reader:
    """Reads a subscription (or an HTTP stream's chunks) in a named thread and collects its events."""

    def __init__(self, chunks, name: str = "test-redis-reader") -> None:
        self.events: list[ReceivedEvent] = []
        self.ended = threading.Event()
        self._parser = EventStreamParser()
        self._chunks = chunks
        threading.Thread(target=self._run, name=name, daemon=True).start()

    def _run(self) -> None:
        try:
            for chunk in self._chunks:
                self.events.extend(self._parser.feed(chunk))
        except httpx.HTTPError:
            pass
        finally:
            self.ended.set()

    def wait_for(self, count: int, timeout: float = 10.0) -> list[ReceivedEvent]:
        deadline = time.monotonic() + timeout
        while len(self.events) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(self.events) >= count, f"{len(self.events)} of {count} events: {self.events}"
        return self.events[:count]


@pytest.fixture
def publishers(redis_server: RedisServer) -> Iterator[list[Publisher]]:  # noqa: F811
    """Two publishers on the same Redis, as two worker processes would have."""
    made = [Publisher.from_url(redis_server.url), Publisher.from_url(redis_server.url)]
    yield made
    for publisher in made:
        publisher.close()


def stream_seq(event_id: str) -> tuple[str, int]:
    epoch, n = event_id.split("-")
    return epoch, int(n)


def test_an_event_published_by_one_publisher_reaches_the_other(publishers: list[Publisher]) -> None:
    here, there = publishers
    local = Reader(here.subscribe("chat"))
    remote = Reader(there.subscribe("chat"))
    event_id = there.publish({"text": "hi"}, "chat", event="message")
    for reader in (local, remote):
        [event] = reader.wait_for(1)
        assert (event.data, event.last_event_id) == ('{"text":"hi"}', event_id)


def test_ids_are_global_and_increasing(publishers: list[Publisher]) -> None:
    here, there = publishers
    ids = [(here if n % 2 else there).publish(str(n)) for n in range(20)]
    assert [stream_seq(i) for i in ids] == sorted(stream_seq(i) for i in ids)
    assert len({stream_seq(i)[0] for i in ids}) == 1  # one epoch, shared by every process
    assert len(set(ids)) == 20


def test_event_on_several_channels_is_delivered_once(publishers: list[Publisher]) -> None:
    here, there = publishers
    reader = Reader(here.subscribe(["a", "b"]))
    there.publish("both", ["a", "b"])
    there.publish("end", "b")
    time.sleep(0.3)
    assert [e.data for e in reader.wait_for(2)] == ["both", "end"]
    assert len(reader.events) == 2


def test_resume_from_history_across_processes_in_order(publishers: list[Publisher]) -> None:
    here, there = publishers
    first = there.publish("a1", "a")
    there.publish("c1", "c")
    there.publish("b1", "b")
    there.publish("custom", "a", id="my-id")
    there.publish("a2", "a")
    resumed = Reader(here.subscribe(["a", "b"], last_event_id=first))
    there.publish("live", "b")
    assert [e.data for e in resumed.wait_for(4)] == ["b1", "custom", "a2", "live"]
    from_custom = Reader(here.subscribe("a", last_event_id="my-id"))
    assert [e.data for e in from_custom.wait_for(1)] == ["a2"]


def test_resume_while_another_process_publishes_has_no_gap_and_no_duplicate(publishers: list[Publisher]) -> None:
    here, there = publishers
    start = there.publish("0")
    done = threading.Event()

    def produce() -> None:
        for n in range(1, 300):
            there.publish(str(n))
        done.set()

    threading.Thread(target=produce, name="test-producer").start()
    readers = []
    while not done.is_set():
        readers.append(Reader(here.subscribe(last_event_id=start)))
        time.sleep(0.01)
    for reader in readers:
        assert [int(e.data) for e in reader.wait_for(299)] == list(range(1, 300))


def test_trimmed_history_gives_the_lost_notice(redis_server: RedisServer) -> None:  # noqa: F811
    with Publisher.from_url(redis_server.url, history=10) as publisher:
        first = publisher.publish("e0")
        for n in range(1, 400):  # approximate trimming works in whole stream nodes
            publisher.publish(f"e{n}")
        assert publisher.stats()["history_size"] < 400
        reader = Reader(publisher.subscribe(last_event_id=first))
        notice = reader.wait_for(1)[0]
        assert notice.type == HISTORY_LOST_EVENT
        assert json.loads(notice.data)["last_event_id"] == first
        assert reader.wait_for(2)[1].data != "e1"  # e1 was trimmed: the replay starts later
        assert reader.wait_for(2)[1].type == "message"


@pytest.mark.parametrize("which", ["future of this epoch", "another epoch"])
def test_an_id_never_given_out_gets_the_notice_and_the_history(publishers: list[Publisher], which: str) -> None:
    here, _ = publishers
    epoch, _ = stream_seq(here.publish("kept"))
    unknown = f"{epoch}-99999999" if which == "future of this epoch" else "0badcafe-1"
    reader = Reader(here.subscribe(last_event_id=unknown))
    assert [(e.type, e.data if e.type == "message" else "") for e in reader.wait_for(2)] == [
        (HISTORY_LOST_EVENT, ""), ("message", "kept"),
    ]  # fmt: skip


def test_malformed_id_is_ignored(publishers: list[Publisher]) -> None:
    here, there = publishers
    old = there.publish("old")
    deadline = time.monotonic() + 5
    while here.stats()["last_seen_id"] != old and time.monotonic() < deadline:
        time.sleep(0.02)  # "old" has reached this process, so it is history, not live, for the new subscriber
    reader = Reader(here.subscribe(last_event_id="garbage"))
    there.publish("new")
    assert [e.data for e in reader.wait_for(1)] == ["new"]


def test_callable_data_is_a_type_error_naming_the_alternative(publishers: list[Publisher]) -> None:
    with pytest.raises(TypeError, match="per-subscriber channel"):
        publishers[0].publish(lambda properties: "x")


def test_unreachable_redis_at_start_names_the_url() -> None:
    with pytest.raises(BrokerUnavailable, match=r"redis://:\*\*\*@127\.0\.0\.1:1/0"):
        Publisher.from_url("redis://:secret@127.0.0.1:1/0")


def test_stats_show_the_connection(publishers: list[Publisher]) -> None:
    here, there = publishers
    assert here.stats()["connected"] is False  # no reader runs before the first subscriber
    here.subscribe("x")
    event_id = there.publish("x")
    deadline = time.monotonic() + 5
    while here.stats()["last_seen_id"] != event_id and time.monotonic() < deadline:
        time.sleep(0.02)
    stats = here.stats()
    assert (stats["broker"], stats["connected"], stats["last_seen_id"]) == ("redis", True, event_id)
    assert stats["history_size"] == 1 and stats["last_id"] == event_id
    json.dumps(stats)


def test_redis_restart_loses_nothing_and_keeps_subscribers(redis_server: RedisServer) -> None:  # noqa: F811
    """Redis is killed and restarted (append-only) under a connected subscriber."""
    publisher = Publisher.from_url(redis_server.url)
    subscription: Subscription = publisher.subscribe("chat", heartbeat=0.5)
    reader = Reader(subscription)
    before = [publisher.publish(f"before {n}", "chat") for n in range(3)]
    reader.wait_for(3)

    redis_server.stop()
    with pytest.raises(BrokerUnavailable, match="not published"):
        publisher.publish("while down", "chat")
    time.sleep(1.0)  # the reader notices and backs off
    assert not publisher.stats()["connected"]
    redis_server.start()
    # Another process publishes while this one's reader may still be waiting to reconnect.
    with Publisher.from_url(redis_server.url) as other:
        during = [other.publish(f"during {n}", "chat") for n in range(5)]
    after = [publisher.publish(f"after {n}", "chat") for n in range(3)]

    events = reader.wait_for(11, timeout=15)
    assert [e.last_event_id for e in events] == before + during + after
    assert not reader.ended.is_set() and not subscription.closed
    assert publisher.stats()["reconnects"] >= 1
    publisher.close()
    assert reader.ended.wait(2)


def test_close_stops_the_reader_promptly(redis_server: RedisServer) -> None:  # noqa: F811
    publisher = Publisher.from_url(redis_server.url)
    started = time.monotonic()
    publisher.close()
    assert time.monotonic() - started < 2.5
    assert not any(t.name == "sse-wsgi-redis-reader" and t.is_alive() for t in threading.enumerate())


def test_redis_broker_rejects_bad_arguments(redis_server: RedisServer) -> None:  # noqa: F811
    with pytest.raises(TypeError, match="url must be a str"):
        RedisBroker.from_url(6379)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="history"):
        RedisBroker.from_url(redis_server.url, history=0)


# -- several web-server processes ------------------------------------------------------------------


def open_stream(base: str, path: str, headers: dict[str, str] | None = None) -> tuple[httpx.Client, Reader]:
    client = httpx.Client(timeout=httpx.Timeout(5, read=30))
    try:
        response = client.send(client.build_request("GET", base + path, headers=headers), stream=True)
        assert response.status_code == 200
    except Exception:
        client.close()
        raise
    return client, Reader(response.iter_raw(), name=f"test-stream-{path}")


def wait_subscribed(base: str, channel: str, count: int = 1) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if httpx.get(base + "/stats", timeout=5).json()["subscribers"].get(channel, 0) >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"no subscriber on {channel} at {base}")


@pytest.mark.parametrize("kind", ["gunicorn-gthread", "gunicorn-gevent"])
def test_two_servers_share_one_stream(redis_server: RedisServer, kind: str) -> None:  # noqa: F811
    env = {"SSE_REDIS_URL": redis_server.url, "SSE_HEARTBEAT": "1"}
    with (
        start_server(kind, "tests.servers.apps.basic:app", env=env) as one,
        start_server(kind, "tests.servers.apps.basic:app", env=env) as two,
    ):
        client, reader = open_stream(one.url, "/events/room")
        try:
            wait_subscribed(one.url, "room")
            ids = [httpx.post(two.url + "/publish?channel=room", content=f"m{n}", timeout=5).text for n in range(5)]
            events = reader.wait_for(5)
            assert [(e.data, e.last_event_id) for e in events] == [(f"m{n}", i) for n, i in enumerate(ids)]
        finally:
            client.close()


@pytest.mark.parametrize("kind", ["gunicorn-gthread", "gunicorn-gevent"])
def test_redis_restart_under_a_live_worker_keeps_the_stream_and_loses_nothing(
    redis_server: RedisServer,  # noqa: F811
    kind: str,
) -> None:
    """The receiver is a thread, or a greenlet under gevent: both reconnect and resume from the last id."""
    env = {"SSE_REDIS_URL": redis_server.url, "SSE_HEARTBEAT": "0.5"}
    with start_server(kind, "tests.servers.apps.basic:app", env=env) as server:
        client, reader = open_stream(server.url, "/events/room")
        try:
            wait_subscribed(server.url, "room")

            def publish(text: str) -> str:
                return httpx.post(server.url + "/publish?channel=room", content=text, timeout=5).text

            before = [publish(f"before {n}") for n in range(3)]
            reader.wait_for(3)
            redis_server.stop()
            time.sleep(1.0)  # the worker's receiver notices and backs off
            redis_server.start()
            with Publisher.from_url(redis_server.url) as other:  # another process, during the reconnect window
                during = [other.publish(f"during {n}", "room") for n in range(5)]
            after = [publish(f"after {n}") for n in range(3)]
            events = reader.wait_for(11, timeout=15)
            assert [e.last_event_id for e in events] == before + during + after
            assert not reader.ended.is_set()  # the same stream throughout
            assert httpx.get(server.url + "/stats", timeout=5).json()["reconnects"] >= 1
        finally:
            client.close()


def test_resume_after_a_web_server_restart(redis_server: RedisServer) -> None:  # noqa: F811
    env = {"SSE_REDIS_URL": redis_server.url, "SSE_HEARTBEAT": "1"}
    app = "tests.servers.apps.basic:app"
    with start_server("gunicorn-gthread", app, env=env) as other:
        with start_server("waitress", app, env=env) as first_run:
            client, reader = open_stream(first_run.url, "/events/news")
            seen = httpx.post(other.url + "/publish?channel=news", content="seen", timeout=5).text
            assert [e.last_event_id for e in reader.wait_for(1)] == [seen]
        assert reader.ended.wait(10)  # the server went away under the client
        client.close()
        missed = [
            httpx.post(other.url + "/publish?channel=news", content=f"missed {n}", timeout=5).text for n in range(3)
        ]
        with start_server("waitress", app, env=env) as second_run:
            client, reader = open_stream(second_run.url, "/events/news", headers={"Last-Event-ID": seen})
            try:
                events = reader.wait_for(3)
                assert [(e.data, e.last_event_id) for e in events] == [(f"missed {n}", i) for n, i in enumerate(missed)]
            finally:
                client.close()


def test_demo_cli_on_redis(redis_server: RedisServer) -> None:  # noqa: F811
    from tests.test_cli import run_demo

    with run_demo(["--redis", redis_server.url]) as base, Publisher.from_url(redis_server.url) as elsewhere:
        client, reader = open_stream(base, "/events?channel=chat")
        try:  # the headers came with the first chunk, sent once the subscriber was registered
            event_id = elsewhere.publish({"name": "other process", "text": "hi"}, "chat", event="chat")
            [event] = reader.wait_for(1)
            assert (event.type, event.last_event_id) == ("chat", event_id)
        finally:
            client.close()


def test_two_apps_with_different_keys_on_one_redis_never_see_each_others_events(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    with (
        Publisher.from_url(redis_server.url, key="app-one") as one,
        Publisher.from_url(redis_server.url, key="app-two") as two,
    ):
        reader_one, reader_two = Reader(one.subscribe("chat")), Reader(two.subscribe("chat"))
        first = one.publish("for one", "chat")
        two.publish("for two", "chat")
        assert [e.data for e in reader_one.wait_for(1)] == ["for one"]
        assert [e.data for e in reader_two.wait_for(1)] == ["for two"]
        time.sleep(0.3)
        assert len(reader_one.events) == len(reader_two.events) == 1
        resumed = Reader(two.subscribe("chat", last_event_id=first))  # one's id means nothing to two
        assert [(e.type, e.data) for e in resumed.wait_for(2)][1] == ("message", "for two")


def test_an_unknown_last_event_id_does_no_history_scan(redis_server: RedisServer) -> None:  # noqa: F811
    import redis as redis_py

    client = redis_py.Redis.from_url(redis_server.url)
    with Publisher.from_url(redis_server.url) as publisher:
        for n in range(300):
            publisher.publish(f"e{n}", "chat", id=f"order-{n}")
        client.config_resetstat()
        for n in range(50):  # cheap anonymous requests with random ids
            publisher.subscribe("chat", last_event_id=f"random-{n}", heartbeat=None).close()
        calls = client.info("commandstats")
        assert not {"cmdstat_xrange", "cmdstat_xrevrange"} & set(calls)  # (XREAD is the live reader)
        assert calls["cmdstat_zscore"]["calls"] == 50  # one index lookup each
        resumed = Reader(publisher.subscribe("chat", last_event_id="order-297", heartbeat=None))
        assert [e.data for e in resumed.wait_for(2)] == ["e298", "e299"]
    client.close()


def test_redis_losing_its_data_gives_live_subscribers_the_loss_event(redis_server: RedisServer) -> None:  # noqa: F811
    import redis as redis_py

    admin = redis_py.Redis.from_url(redis_server.url)
    with Publisher.from_url(redis_server.url) as publisher:
        reader = Reader(publisher.subscribe("chat", heartbeat=None))
        before = publisher.publish("before", "chat")
        reader.wait_for(1)
        admin.flushall()  # as a restart without persistence, or a failover that lost the writes
        admin.client_kill_filter(_type="normal", skipme=True)  # and the connections drop
        deadline = time.monotonic() + 10
        while publisher.stats()["gaps_reported"] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        after = publisher.publish("after", "chat")
        events = reader.wait_for(3)
    admin.close()
    assert events[0].data == "before"
    assert events[1].type == HISTORY_LOST_EVENT and json.loads(events[1].data)["last_event_id"] == before
    assert (events[2].data, events[2].last_event_id) == ("after", after)
    assert after.partition("-")[0] != before.partition("-")[0]  # a new epoch: old ids are never taken for new ones
