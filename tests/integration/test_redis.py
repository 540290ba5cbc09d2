"""The Redis broker against a real redis-server: processes share events, ids and history; faults lose nothing."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from sse_wsgi import HISTORY_LOST_EVENT, BrokerUnavailable, Publisher, PublishOutcomeUnknown, Subscription
from sse_wsgi.redis import RedisBroker
from sse_wsgi.testing import EventStreamParser
from tests.support.demo import run_demo
from tests.support.redis_server import RedisServer
from tests.support.servers.harness import start_server
from tests.support.streams import Reader, open_stream, wait_subscribed

pytestmark = [pytest.mark.integration, pytest.mark.redis]


@pytest.fixture
def publishers(redis_server: RedisServer) -> Iterator[list[Publisher]]:
    """Two publishers on the same Redis, as two worker processes would have."""
    made = [Publisher.from_url(redis_server.url), Publisher.from_url(redis_server.url)]
    yield made
    for publisher in made:
        publisher.close()


def stream_seq(event_id: str) -> tuple[str, int]:
    """The epoch and number of a one-channel id ``<epoch>-<n>-<tag>``."""
    epoch, n, _tag = event_id.split("-")
    return epoch, int(n)


def test_an_event_published_by_one_publisher_reaches_the_other(publishers: list[Publisher]) -> None:
    here, there = publishers
    local = Reader(here.subscribe("chat"))
    remote = Reader(there.subscribe("chat"))
    event_id = there.publish({"text": "hi"}, "chat", event="message")
    for reader in (local, remote):
        [event] = reader.wait_for(1)
        assert (event.data, event.last_event_id) == ('{"text":"hi"}', event_id)


def test_ids_of_a_channel_are_shared_by_every_process_and_increase(publishers: list[Publisher]) -> None:
    here, there = publishers
    ids = [(here if n % 2 else there).publish(str(n)) for n in range(20)]
    assert [stream_seq(i) for i in ids] == [(stream_seq(ids[0])[0], n) for n in range(1, 21)]  # no hole, one epoch
    assert len(set(ids)) == 20
    other = there.publish("x", "another channel")
    assert stream_seq(other)[1] == 1 and stream_seq(other)[0] != stream_seq(ids[0])[0]  # each channel its own


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
    first = here.subscribe(["a", "b"], heartbeat=None)
    reader = Reader(first)
    there.publish("a1", "a")
    [seen] = reader.wait_for(1)
    first.close()
    there.publish("c1", "c")
    there.publish("b1", "b")
    there.publish("custom", "a", id="my-id")
    there.publish("ab", ["b", "a"])
    there.publish("a2", "a")
    resumed = Reader(here.subscribe(["a", "b"], last_event_id=seen.last_event_id))
    there.publish("live", "b")
    assert [e.data for e in resumed.wait_for(5)] == ["b1", "custom", "ab", "a2", "live"]
    from_custom = Reader(here.subscribe("a", last_event_id="my-id"))
    assert [e.data for e in from_custom.wait_for(2)] == ["ab", "a2"]


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


def test_trimmed_history_gives_the_lost_notice_then_exactly_the_history(
    redis_server: RedisServer,
) -> None:
    with Publisher.from_url(redis_server.url, history=10) as publisher:
        first = publisher.publish("e0")
        for n in range(1, 40):
            publisher.publish(f"e{n}")
        reader = Reader(publisher.subscribe(last_event_id=first, heartbeat=None))
        events = reader.wait_for(11)
        assert events[0].type == HISTORY_LOST_EVENT
        assert json.loads(events[0].data)["last_event_id"] == first
        assert [e.data for e in events[1:]] == [f"e{n}" for n in range(30, 40)]  # the last 10, as in memory


@pytest.mark.parametrize("which", ["future of this epoch", "another epoch"])
def test_an_id_never_given_out_gets_the_notice_and_the_history(publishers: list[Publisher], which: str) -> None:
    here, _ = publishers
    epoch, _ = stream_seq(here.publish("kept"))
    unknown = f"{epoch}-99999999-1" if which == "future of this epoch" else "0badcafe-1-1"
    reader = Reader(here.subscribe(last_event_id=unknown))
    assert [(e.type, e.data if e.type == "message" else "") for e in reader.wait_for(2)] == [
        (HISTORY_LOST_EVENT, ""), ("message", "kept"),
    ]  # fmt: skip


def test_malformed_id_is_ignored(publishers: list[Publisher]) -> None:
    here, there = publishers
    there.publish("old")
    reader = Reader(here.subscribe(last_event_id="garbage"))
    there.publish("new")
    assert [e.data for e in reader.wait_for(1)] == ["new"]
    time.sleep(0.2)
    assert len(reader.events) == 1


def test_callable_data_is_a_type_error_naming_the_alternative(publishers: list[Publisher]) -> None:
    with pytest.raises(TypeError, match="per-subscriber channel"):
        publishers[0].publish(lambda properties: "x")


def test_unreachable_redis_at_start_names_the_url() -> None:
    with pytest.raises(BrokerUnavailable, match=r"redis://:\*\*\*@127\.0\.0\.1:1/0"):
        Publisher.from_url("redis://:secret@127.0.0.1:1/0")


def test_stats_show_the_connection_and_the_watched_channels(publishers: list[Publisher]) -> None:
    here, there = publishers
    assert here.stats()["connected"] is False  # no receiver runs before the first subscriber
    here.subscribe("x")
    event_id = there.publish("x", "x")
    deadline = time.monotonic() + 5
    while here.stats()["last_seen_ids"].get("x") != event_id and time.monotonic() < deadline:
        time.sleep(0.02)
    stats = here.stats()
    assert (stats["broker"], stats["cluster"], stats["connected"]) == ("redis", False, True)
    assert (stats["channels_watched"], stats["last_seen_ids"]) == (1, {"x": event_id})
    assert list(stats["nodes"].values()) == [{"connected": True, "channels": 1}]
    assert (stats["history_size"], stats["first_id"], stats["last_id"]) == (1, event_id, event_id)
    json.dumps(stats)


def test_redis_restart_loses_nothing_and_keeps_subscribers(redis_server: RedisServer) -> None:
    """Redis is killed and restarted (append-only) under a connected subscriber."""
    publisher = Publisher.from_url(redis_server.url)
    subscription: Subscription = publisher.subscribe("chat", heartbeat=0.5)
    reader = Reader(subscription)
    before = [publisher.publish(f"before {n}", "chat") for n in range(3)]
    reader.wait_for(3)

    redis_server.stop()
    with pytest.raises(PublishOutcomeUnknown, match="not confirmed") as failed:
        publisher.publish("while down", "chat")
    assert failed.value.idempotency_key  # the key a retry uses to publish it once
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


def test_close_stops_the_receiver_promptly(redis_server: RedisServer) -> None:
    publisher = Publisher.from_url(redis_server.url)
    publisher.subscribe("x", heartbeat=None)
    assert {"sse-wsgi-redis-receiver", f"sse-wsgi-redis-link-127.0.0.1:{redis_server.port}"} <= {
        t.name for t in threading.enumerate()
    }
    started = time.monotonic()
    publisher.close()
    assert time.monotonic() - started < 2.5
    assert not any(t.name.startswith("sse-wsgi-redis-") and t.is_alive() for t in threading.enumerate())


def test_redis_broker_rejects_bad_arguments(redis_server: RedisServer) -> None:
    with pytest.raises(TypeError, match="url must be a str"):
        RedisBroker.from_url(6379)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="history"):
        RedisBroker.from_url(redis_server.url, history=0)


# -- several web-server processes ------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["gunicorn-gthread", "gunicorn-gevent"])
def test_two_servers_share_one_stream(redis_server: RedisServer, kind: str) -> None:
    env = {"SSE_REDIS_URL": redis_server.url, "SSE_HEARTBEAT": "1"}
    with (
        start_server(kind, "tests.support.servers.apps.basic:app", env=env) as one,
        start_server(kind, "tests.support.servers.apps.basic:app", env=env) as two,
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
    redis_server: RedisServer,
    kind: str,
) -> None:
    """The receiver is a thread, or a greenlet under gevent: both reconnect and resume from the last id."""
    env = {"SSE_REDIS_URL": redis_server.url, "SSE_HEARTBEAT": "0.5"}
    with start_server(kind, "tests.support.servers.apps.basic:app", env=env) as server:
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


def test_resume_after_a_web_server_restart(redis_server: RedisServer) -> None:
    env = {"SSE_REDIS_URL": redis_server.url, "SSE_HEARTBEAT": "1"}
    app = "tests.support.servers.apps.basic:app"
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


def test_demo_cli_on_redis(redis_server: RedisServer) -> None:

    with run_demo(["--redis", redis_server.url]) as base, Publisher.from_url(redis_server.url) as elsewhere:
        client, reader = open_stream(base, "/events?channel=chat")
        try:  # the headers came with the first chunk, sent once the subscriber was registered
            event_id = elsewhere.publish({"name": "other process", "text": "hi"}, "chat", event="chat")
            [event] = reader.wait_for(1)
            assert (event.type, event.last_event_id) == ("chat", event_id)
        finally:
            client.close()


def test_two_apps_with_different_keys_on_one_redis_never_see_each_others_events(
    redis_server: RedisServer,
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


def test_an_unknown_last_event_id_does_no_history_scan(redis_server: RedisServer) -> None:
    import redis as redis_py

    client = redis_py.Redis.from_url(redis_server.url)
    with Publisher.from_url(redis_server.url) as publisher:
        for n in range(300):
            publisher.publish(f"e{n}", "chat", id=f"order-{n}")
        publisher.subscribe("chat", heartbeat=None)  # the channel stays watched: no head read per subscribe
        client.config_resetstat()
        for n in range(50):  # cheap anonymous requests with random ids
            publisher.subscribe("chat", last_event_id=f"random-{n}", heartbeat=None).close()
        calls = client.info("commandstats")
        assert not {"cmdstat_xrange", "cmdstat_xrevrange", "cmdstat_eval"} & set(calls)
        assert calls["cmdstat_zscore"]["calls"] == 50  # one index lookup each
        resumed = Reader(publisher.subscribe("chat", last_event_id="order-297", heartbeat=None))
        assert [e.data for e in resumed.wait_for(2)] == ["e298", "e299"]
    client.close()


def test_redis_losing_its_data_gives_live_subscribers_the_loss_event(redis_server: RedisServer) -> None:
    import redis as redis_py

    admin = redis_py.Redis.from_url(redis_server.url)
    with Publisher.from_url(redis_server.url) as publisher:
        reader = Reader(publisher.subscribe("chat", heartbeat=None))
        before = publisher.publish("before", "chat")
        reader.wait_for(1)
        admin.flushall()  # as a restart without persistence, or a failover that lost the writes
        admin.client_kill_filter(_type="pubsub")  # and the connections drop: what went on meanwhile is unknown
        admin.client_kill_filter(_type="normal", skipme=True)
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


def test_writes_lost_by_a_failover_are_reported_live_and_on_resume_never_renumbered_silently(
    redis_server: RedisServer,
) -> None:
    """A promoted replica that missed the last writes numbers new events as the lost ones were numbered."""
    import redis as redis_py

    from sse_wsgi.redis.keys import channel_keys

    admin = redis_py.Redis.from_url(redis_server.url, decode_responses=True)
    keys = channel_keys("sse_wsgi", "chat")
    with Publisher.from_url(redis_server.url) as publisher:
        reader = Reader(publisher.subscribe("chat", heartbeat=None))
        ids = [publisher.publish(f"e{n}", "chat") for n in (1, 2, 3)]
        reader.wait_for(3)
        # Make the data what the replica had (event 1 only), then drop the old master's connections.
        entry_ids = [event_id.split("-", 1)[1] for event_id in ids]  # <n>-<tag>
        admin.xdel(keys.stream, *entry_ids[1:])
        admin.execute_command("XSETID", keys.stream, entry_ids[0])
        admin.hset(keys.meta, mapping={"n": 1, "l": ids[0], "p": ids[0]})  # the replica's metadata names event 1
        admin.client_kill_filter(_type="pubsub")
        deadline = time.monotonic() + 10
        while publisher.stats()["gaps_reported"] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        new = [publisher.publish(f"new{n}", "chat") for n in (2, 3, 4)]
        events = reader.wait_for(7)
        assert [e.data for e in events[:3]] == ["e1", "e2", "e3"]
        assert events[3].type == HISTORY_LOST_EVENT
        assert [(e.data, e.last_event_id) for e in events[4:]] == list(zip(["new2", "new3", "new4"], new, strict=True))
        assert [stream_seq(i)[1] for i in new] == [2, 3, 4]  # the lost numbers, given again
        resumed = Reader(publisher.subscribe("chat", last_event_id=ids[2], heartbeat=None))  # had the old event 3
        replay = resumed.wait_for(3)
        assert replay[0].type == HISTORY_LOST_EVENT  # its tag tells the old 3 from the new one
        assert [e.data for e in replay[1:]] == ["new3", "new4"]
    admin.close()


def test_a_stream_redis_cannot_set_up_now_gets_a_retry_hint_and_leaves_nothing(
    redis_server: RedisServer,
) -> None:
    from werkzeug.test import Client

    from sse_wsgi import SSEMiddleware

    publisher = Publisher.from_url(redis_server.url)
    app = SSEMiddleware(lambda environ, start_response: [], publisher)
    redis_server.stop()
    response = Client(app).get("/events/a-new-channel")
    assert response.status_code == 200  # a browser that got 503 would never come back
    parser = EventStreamParser()
    assert parser.feed(response.get_data()) == []  # a retry hint alone, then the end
    assert parser.retry is not None and 1000 <= parser.retry <= 5000
    assert publisher.subscription_count == 0 and publisher.stats()["channels_watched"] == 0
    redis_server.start()
    live = Reader(publisher.subscribe("a-new-channel", heartbeat=None))  # it works once Redis is back
    publisher.publish("hello", "a-new-channel")
    assert [e.data for e in live.wait_for(1)] == ["hello"]
    publisher.close()


def test_grip_items_on_redis_chain_per_channel_and_reach_a_held_set_once(redis_server: RedisServer) -> None:
    from sse_wsgi.broker import Message

    with Publisher.from_url(redis_server.url, grip="http://127.0.0.1:9?key=k") as publisher:
        broker = publisher.broker
        held = publisher.hold(["b", "a"], None)
        assert (held.replay, held.id) == (None, "0_0")  # placeholders: no event yet on either
        first, items = broker.publish_for_proxies(Message(("a",), "1"))
        assert [(i.channels, i.id, i.prev_id) for i in items] == [
            (("a",), first, "0"),
            (("a", "b"), f"{first}_0", "0_0"),
        ]
        second, items = broker.publish_for_proxies(Message(("b", "a"), "2"))
        token_a, token_b = second.split("_")
        assert [(i.channels, i.id, i.prev_id) for i in items] == [
            (("b",), token_b, "0"), (("a",), token_a, first), (("a", "b"), second, f"{first}_0"),
        ]  # fmt: skip
        assert items[2].record.stream == "b"  # the set takes it from its first channel in the event's order
        resumed = publisher.hold(["a", "b"], f"{first}_0")
        assert resumed.replay is not None and [r.data for r in resumed.replay.records] == ["2"]  # once
        assert resumed.id == second
        single = publisher.hold(["a"], None)
        assert (single.replay, single.id) == (None, token_a)


def test_a_channel_in_many_held_sets_costs_a_publish_a_bounded_number_of_items_on_redis(
    redis_server: RedisServer,
) -> None:
    """``[user:i, news]`` held for many users: a publish to ``news`` makes at most MAX_HELD_SETS + 1 proxy items."""
    from sse_wsgi.broker import MAX_HELD_SETS, Message

    with Publisher.from_url(redis_server.url, grip="http://127.0.0.1:9?key=k") as publisher:
        held = [publisher.hold([f"user:{n}", "news"], None) for n in range(MAX_HELD_SETS + 20)]
        assert all(h is not None for h in held[:MAX_HELD_SETS]) and all(h is None for h in held[MAX_HELD_SETS:])
        assert publisher.hold(["news", "user:0"], None) is not None  # renewed, never refused
        _, items = publisher.broker.publish_for_proxies(Message(("news",), "x"))
        assert len(items) == MAX_HELD_SETS + 1
        assert {item.channels for item in items[1:]} == {("news", f"user:{n}") for n in range(MAX_HELD_SETS)}
        refused = ("news", f"user:{MAX_HELD_SETS}")
        assert publisher.hold(list(refused), None) is None  # and it left no registration behind on user:N
        _, items = publisher.broker.publish_for_proxies(Message((refused[1],), "y"))
        assert [item.channels for item in items] == [(refused[1],)]


def test_a_resume_from_a_caller_id_gives_ids_that_resume_again(publishers: list[Publisher]) -> None:
    """The id a stream resumed from a caller's own id gives out next names exact positions on every channel."""
    here, there = publishers
    there.publish("mine", ["a", "b"], id="my-own-id")
    first = Reader(here.subscribe(["a", "b"], last_event_id="my-own-id", heartbeat=None))
    there.publish("next", "b")
    [event] = first.wait_for(1)
    assert event.data == "next"
    there.publish("missed", "b")
    first.wait_for(2)  # "missed" has reached this process: only a replay can give it to a new stream
    resumed = Reader(here.subscribe(["a", "b"], last_event_id=event.last_event_id, heartbeat=None))
    assert [e.data for e in resumed.wait_for(1)] == ["missed"]
