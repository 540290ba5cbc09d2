"""Publisher and Subscription on the in-memory broker: every behaviour docs/guide.md gives them."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from sse_wsgi import HISTORY_LOST_EVENT, Event, Publisher, PublisherClosed, Subscription
from sse_wsgi.broker import Record
from sse_wsgi.memory import MemoryBroker
from sse_wsgi.subscription import MAX_CHUNK_BYTES
from sse_wsgi.testing import EventStreamParser, parse_events
from tests.support.streams import data_of, take

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def publisher():
    with Publisher() as publisher:
        yield publisher


def test_subscriber_is_registered_when_subscribe_returns(publisher: Publisher) -> None:
    subscription = publisher.subscribe("chat")
    assert list(publisher.get_subscribers("chat")) == [subscription]
    publisher.publish("right after", "chat")
    assert data_of(take(subscription, 1)) == ["right after"]


def test_publish_returns_increasing_ids_that_go_on_the_wire(publisher: Publisher) -> None:
    subscription = publisher.subscribe()
    ids = [publisher.publish(f"m{i}") for i in range(5)]
    numbers = [int(i.rpartition("-")[2]) for i in ids]  # <epoch>-<n>, one epoch
    assert numbers == sorted(numbers) and len({i.rpartition("-")[0] for i in ids}) == 1
    assert len(set(ids)) == 5
    assert [e.last_event_id for e in take(subscription, 5)] == ids


def test_custom_id_event_and_retry_are_sent(publisher: Publisher) -> None:
    subscription = publisher.subscribe()
    assert publisher.publish("x", event="update", id="abc-1", retry=0) == "abc-1"
    chunk = next(subscription)
    assert chunk == b"event: update\nid: abc-1\nretry: 0\ndata: x\n\n"


def test_non_str_data_goes_through_the_serializer() -> None:
    with Publisher(serializer=lambda value: f"<{value}>") as publisher:
        subscription = publisher.subscribe()
        publisher.publish(7)
        publisher.publish("as is")
        assert data_of(take(subscription, 2)) == ["<7>", "as is"]


def test_default_serializer_is_compact_json(publisher: Publisher) -> None:
    subscription = publisher.subscribe()
    publisher.publish({"a": [1, 2]})
    assert data_of(take(subscription, 1)) == ['{"a":[1,2]}']


def test_channels_are_separate_and_lists_subscribe_to_several(publisher: Publisher) -> None:
    a = publisher.subscribe("a")
    both = publisher.subscribe(["a", "b"])
    publisher.publish("to b", "b")
    publisher.publish("to a", "a")
    assert data_of(take(a, 1)) == ["to a"]
    assert data_of(take(both, 2)) == ["to b", "to a"]


def test_event_on_several_channels_reaches_a_subscriber_of_several_once(publisher: Publisher) -> None:
    both = publisher.subscribe(["a", "b"])
    publisher.publish("once", ["a", "b"])
    publisher.publish("end", "a")
    assert data_of(take(both, 2)) == ["once", "end"]


def test_callable_data_is_computed_per_subscriber(publisher: Publisher) -> None:
    alice = publisher.subscribe(properties={"name": "alice"})
    bob = publisher.subscribe(properties={"name": "bob"})
    nobody = publisher.subscribe(properties={"name": "nobody"})
    publisher.publish(lambda p: None if p["name"] == "nobody" else f"hi {p['name']}")
    publisher.publish(lambda p: "" if p["name"] == "alice" else 0)
    assert data_of(take(alice, 2)) == ["hi alice", ""]
    assert data_of(take(bob, 2)) == ["hi bob", "0"]
    assert data_of(take(nobody, 1)) == ["0"]  # it got nothing for the first event


def test_callable_data_that_raises_skips_only_that_subscriber(publisher: Publisher) -> None:
    good = publisher.subscribe(properties=1)
    bad = publisher.subscribe(properties=0)
    publisher.publish(lambda p: str(1 / p))
    publisher.publish("next")
    assert data_of(take(good, 2)) == ["1.0", "next"]
    assert data_of(take(bad, 1)) == ["next"]


def test_initial_data_comes_first(publisher: Publisher) -> None:
    subscription = publisher.subscribe(initial_data=["first", {"n": 2}, Event("third", event="e")])
    publisher.publish("live")
    events = take(subscription, 4)
    assert [(e.type, e.data) for e in events] == [
        ("message", "first"), ("message", '{"n":2}'), ("e", "third"), ("message", "live"),
    ]  # fmt: skip


def test_get_subscribers_gives_properties_and_channels(publisher: Publisher) -> None:
    one = publisher.subscribe(["a", "b"], properties={"user": 1})
    two = publisher.subscribe("b", properties={"user": 2})
    assert list(publisher.get_subscribers("a")) == [one]
    assert set(publisher.get_subscribers(["a", "b"])) == {one, two}
    assert [s.properties for s in publisher.get_subscribers("b")] == [{"user": 1}, {"user": 2}]
    assert one.channels == ("a", "b")
    assert list(publisher.get_subscribers("nobody")) == []


def test_close_unregisters_a_subscription_that_was_never_iterated(publisher: Publisher) -> None:
    subscription = publisher.subscribe("a")
    subscription.close()
    subscription.close()  # idempotent
    assert list(publisher.get_subscribers("a")) == []
    assert publisher.subscription_count == 0
    with pytest.raises(StopIteration):
        next(subscription)


def test_subscription_is_a_context_manager(publisher: Publisher) -> None:
    with publisher.subscribe("a") as subscription:
        assert publisher.subscription_count == 1
    assert subscription.closed
    assert publisher.subscription_count == 0


def test_heartbeat_comment_after_idle_seconds(publisher: Publisher) -> None:
    subscription = publisher.subscribe(heartbeat=0.2)
    started = time.monotonic()
    assert next(subscription) == b": keep-alive\n\n"
    assert 0.15 <= time.monotonic() - started < 2
    publisher.publish("event resets the idle clock")
    assert b"data: event resets" in next(subscription)


def test_max_lifetime_ends_the_stream(publisher: Publisher) -> None:
    subscription = publisher.subscribe(max_lifetime=0.2, heartbeat=5)
    started = time.monotonic()
    assert list(subscription) == []
    assert 0.15 <= time.monotonic() - started < 2
    assert publisher.subscription_count == 0


def test_client_disconnected_signal_ends_the_stream(publisher: Publisher) -> None:
    gone = threading.Event()
    subscription = publisher.subscribe(heartbeat=0.3, client_disconnected=gone.is_set)
    assert next(subscription) == b": keep-alive\n\n"  # asked at the heartbeat: still there
    gone.set()
    started = time.monotonic()
    assert list(subscription) == []  # asked at the next heartbeat: gone, so no heartbeat is written
    assert time.monotonic() - started < 2
    assert publisher.subscription_count == 0


# -- history and Last-Event-ID ---------------------------------------------------------------------


def test_resume_sends_missed_events_in_order_across_channels(publisher: Publisher) -> None:
    first = publisher.publish("a1", "a")
    publisher.publish("b1", "b")
    publisher.publish("c1", "c")
    publisher.publish("a2", "a")
    publisher.publish("ab", ["a", "b"])
    subscription = publisher.subscribe(["a", "b"], last_event_id=first)
    publisher.publish("live", "b")
    assert data_of(take(subscription, 4)) == ["b1", "a2", "ab", "live"]


def test_resume_with_custom_ids(publisher: Publisher) -> None:
    publisher.publish("one", id="x-1")
    publisher.publish("two", id="x-2")
    publisher.publish("three")
    subscription = publisher.subscribe(last_event_id="x-1")
    assert data_of(take(subscription, 2)) == ["two", "three"]


def test_malformed_last_event_id_is_ignored(publisher: Publisher) -> None:
    publisher.publish("old")
    subscription = publisher.subscribe(last_event_id="not-an-id")
    publisher.publish("live")
    assert data_of(take(subscription, 1)) == ["live"]


def test_resume_older_than_history_announces_lost_events_first() -> None:
    with Publisher(history=3) as publisher:
        first = publisher.publish("e1")
        ids = [publisher.publish(f"e{n}") for n in range(2, 7)]
        subscription = publisher.subscribe(last_event_id=first)
        events = take(subscription, 4)
    assert events[0].type == HISTORY_LOST_EVENT
    assert json.loads(events[0].data) == {"last_event_id": first, "oldest_id": ids[2]}
    assert data_of(events[1:]) == ["e4", "e5", "e6"]


def test_resume_at_the_oldest_kept_boundary_loses_nothing() -> None:
    with Publisher(history=3) as publisher:
        ids = [publisher.publish(f"e{n}") for n in range(1, 6)]  # keeps e3..e5
        subscription = publisher.subscribe(last_event_id=ids[1])  # e2: everything after it is kept
        publisher.publish("e6")
        assert data_of(take(subscription, 4)) == ["e3", "e4", "e5", "e6"]


def test_a_long_replay_goes_out_in_bounded_chunks_in_order() -> None:
    """A client owed the whole history gets it in chunks of at most MAX_CHUNK_BYTES, not one copy of it all."""
    with Publisher(history=2000) as publisher:
        first = publisher.publish("start")
        ids = [publisher.publish("x" * 1000 + str(n)) for n in range(1500)]
        big = publisher.publish("y" * (MAX_CHUNK_BYTES * 2))  # one event larger than the bound goes alone
        subscription = publisher.subscribe(last_event_id=first)
        live = publisher.publish("live")
        parser, chunks, events = EventStreamParser(), [], []
        while len(events) < len(ids) + 2:
            chunks.append(next(subscription))
            events.extend(parser.feed(chunks[-1]))
        subscription.close()
    assert [e.last_event_id for e in events] == [*ids, big, live]
    assert len(chunks) > 20
    assert all(len(c) <= MAX_CHUNK_BYTES + 1100 for c in chunks if b"yyyy" not in c)  # one event past the mark
    assert [len(c) > MAX_CHUNK_BYTES * 2 for c in chunks].count(True) == 1


def test_id_from_before_a_restart_gets_the_notice_and_the_whole_history() -> None:
    with Publisher() as before:
        before.publish("one")
        old_ids = [before.publish(f"before {n}") for n in range(5)]
    with Publisher() as after:  # the process restarted: its ids start again
        after_ids = [after.publish(f"after {n}") for n in range(7)]
        assert not set(old_ids) & set(after_ids)
        subscription = after.subscribe(last_event_id=old_ids[-1])
        events = take(subscription, 8)
    assert events[0].type == HISTORY_LOST_EVENT
    assert json.loads(events[0].data) == {"last_event_id": old_ids[-1], "oldest_id": after_ids[0]}
    assert data_of(events[1:]) == [f"after {n}" for n in range(7)]


def test_resume_while_publishing_has_no_gap_and_no_duplicate() -> None:
    """Register, replay to the head, then flush what arrived meanwhile."""
    total = 3000
    publisher = Publisher(history=2 * total, queue_size=total)  # no subscriber is read until the end
    start = publisher.publish("0")
    stop = threading.Event()

    def produce() -> None:
        for n in range(1, total):
            publisher.publish(str(n))
        stop.set()

    producer = threading.Thread(target=produce, name="test-producer")
    producer.start()
    subscriptions = []
    while not stop.is_set():  # subscribe at many points of the stream
        subscriptions.append(publisher.subscribe(last_event_id=start))
    producer.join(10)
    assert len(subscriptions) > 1
    for subscription in subscriptions[:: max(1, len(subscriptions) // 20)]:
        assert [int(d) for d in data_of(take(subscription, total - 1))] == list(range(1, total))
    publisher.close()


class LateBroker(MemoryBroker):
    """The in-memory broker, delivering only on :meth:`release`, as a cross-process broker's reader does."""

    def start(self, deliver, lost) -> None:
        self.held: list[Record] = []
        self._deliver_late = deliver
        super().start(self.held.append, lost)

    def release(self) -> None:
        held = self.held[:]
        self.held.clear()
        for record in held:
            self._deliver_late(record)


def test_resume_skips_the_resumed_event_when_it_is_delivered_late() -> None:
    broker = LateBroker()
    with Publisher(broker) as publisher:
        seen = publisher.publish("seen")
        subscription = publisher.subscribe(last_event_id=seen)  # nothing after "seen" to replay yet
        broker.release()  # "seen" reaches this process only now
        publisher.publish("new")
        broker.release()
        assert data_of(take(subscription, 1)) == ["new"]


# -- slow subscribers, close, stats ----------------------------------------------------------------


def test_slow_subscriber_is_cut_off_and_catches_up_from_history() -> None:
    with Publisher(queue_size=5, history=100) as publisher:
        slow = publisher.subscribe()
        fast = publisher.subscribe()
        ids, fast_got = [], []
        for n in range(1, 11):
            ids.append(publisher.publish(f"e{n}"))
            fast_got.extend(data_of(parse_events(next(fast))))  # the fast one keeps up
        assert fast_got == [f"e{n}" for n in range(1, 11)]
        assert list(slow) == []  # the slow one was cut off: its stream ends normally
        assert publisher.stats()["slow_subscribers_cut"] == 1
        assert list(publisher.get_subscribers()) == [fast]
        resumed = publisher.subscribe(last_event_id=ids[0])
        assert data_of(take(resumed, 9)) == [f"e{n}" for n in range(2, 11)]


def test_close_ends_every_stream_and_refuses_more() -> None:
    publisher = Publisher()
    subscriptions = [publisher.subscribe(heartbeat=30) for _ in range(5)]
    ended = []

    def drain(subscription: Subscription) -> None:
        list(subscription)
        ended.append(subscription)

    threads = [threading.Thread(target=drain, args=(s,), name=f"test-drain-{i}") for i, s in enumerate(subscriptions)]
    for thread in threads:
        thread.start()
    started = time.monotonic()
    publisher.close()
    for thread in threads:
        thread.join(2)
    assert len(ended) == 5
    assert time.monotonic() - started < 1
    with pytest.raises(PublisherClosed, match="closed"):
        publisher.subscribe()
    with pytest.raises(PublisherClosed, match="closed"):
        publisher.publish("x")
    assert publisher.stats()["closed"] is True


def test_stats_counts(publisher: Publisher) -> None:
    publisher.subscribe(["a", "b"])
    publisher.subscribe("a")
    publisher.publish("x", "a")
    publisher.publish("y", "b")
    stats = publisher.stats()
    assert stats["subscribers"] == {"a": 2, "b": 1}
    assert stats["subscriptions"] == 2
    assert stats["events_published"] == 2
    assert stats["events_delivered"] == 3
    assert stats["history_size"] == 2
    assert (stats["first_id"], stats["last_id"]) == (f"{stats['epoch']}-1", f"{stats['epoch']}-2")
    assert stats["broker"] == "memory"
    json.dumps(stats)  # a plain dict


# -- bad input -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        pytest.param(lambda p: p.subscribe(5), TypeError, "channel", id="int channel"),
        pytest.param(lambda p: p.subscribe([]), ValueError, "at least one channel", id="no channel"),
        pytest.param(lambda p: p.subscribe(""), ValueError, "must not be empty", id="empty channel"),
        pytest.param(lambda p: p.subscribe(["a", 1]), TypeError, "channel names must be str", id="int in list"),
        pytest.param(lambda p: p.subscribe(heartbeat=0), ValueError, "heartbeat", id="zero heartbeat"),
        pytest.param(lambda p: p.subscribe(heartbeat="5"), TypeError, "heartbeat", id="str heartbeat"),
        pytest.param(lambda p: p.subscribe(last_event_id=5), TypeError, "last_event_id", id="int last id"),
        pytest.param(lambda p: p.subscribe(initial_data="abc"), TypeError, "initial_data", id="str initial"),
        pytest.param(lambda p: p.subscribe(max_lifetime=-1), ValueError, "max_lifetime", id="negative lifetime"),
        pytest.param(lambda p: p.publish("x", event="a\nb"), ValueError, "event", id="lf in event"),
        pytest.param(lambda p: p.publish("x", id="1\r"), ValueError, "id", id="cr in id"),
        pytest.param(lambda p: p.publish("x", retry=-5), ValueError, "retry", id="negative retry"),
        pytest.param(lambda p: p.publish(object()), TypeError, "not JSON serializable", id="unserializable"),
        pytest.param(lambda p: p.publish("x", channel=None), TypeError, "channel", id="none channel"),
    ],
)
def test_bad_arguments_raise_clear_errors(publisher: Publisher, call, error, message) -> None:
    with pytest.raises(error, match=message):
        call(publisher)
    assert publisher.subscription_count == 0


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"queue_size": 0}, ValueError, "queue_size"),
        ({"queue_size": "10"}, TypeError, "queue_size"),
        ({"history": -1}, ValueError, "history"),
        ({"history": 1.5}, TypeError, "history"),
        ({"serializer": "json"}, TypeError, "serializer"),
    ],
)
def test_bad_constructor_arguments(kwargs: dict, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        Publisher(**kwargs)


# -- concurrency -----------------------------------------------------------------------------------


def test_threads_publishing_to_many_subscribers_lose_and_repeat_nothing() -> None:
    threads, per_thread, subscribers = 8, 500, 20
    # Queues hold every event, so that a reader starved of CPU is not cut off as slow.
    publisher = Publisher(history=2 * threads * per_thread, queue_size=threads * per_thread)
    subscriptions = [publisher.subscribe() for _ in range(subscribers)]
    received: list[list[str]] = [[] for _ in subscriptions]
    readers = []
    for index, subscription in enumerate(subscriptions):

        def read(subscription: Subscription = subscription, out: list[str] = received[index]) -> None:
            parser = EventStreamParser()
            for chunk in subscription:
                out.extend(e.data for e in parser.feed(chunk))
                if len(out) >= threads * per_thread:
                    break

        readers.append(threading.Thread(target=read, name=f"test-reader-{index}", daemon=True))
    for reader in readers:
        reader.start()

    def produce(thread: int) -> None:
        for n in range(per_thread):
            publisher.publish(f"{thread}:{n}")

    producers = [threading.Thread(target=produce, args=(t,), name=f"test-producer-{t}") for t in range(threads)]
    for producer in producers:
        producer.start()
    for thread in producers + readers:
        thread.join(30)
    for out in received:
        assert len(out) == threads * per_thread
        assert len(set(out)) == len(out)  # nothing duplicated
        for thread in range(threads):
            mine = [int(item.split(":")[1]) for item in out if item.startswith(f"{thread}:")]
            assert mine == list(range(per_thread))  # each thread's events in order
    publisher.close()


def test_cooperative_under_gevent_monkey_patching() -> None:
    """Many greenlets subscribe and publish on one publisher in a monkey-patched process."""
    script = textwrap.dedent(
        """
        from gevent import monkey; monkey.patch_all()
        import gevent, json, os
        from sse_wsgi import Publisher
        from sse_wsgi.testing import EventStreamParser

        publisher = Publisher()
        subscribers, publishers, per_publisher = 50, 10, 100
        subscriptions = [publisher.subscribe(heartbeat=5) for _ in range(subscribers)]
        counts = []

        def read(subscription):
            parser, seen = EventStreamParser(), []
            for chunk in subscription:
                seen.extend(e.data for e in parser.feed(chunk))
                if len(seen) >= publishers * per_publisher:
                    break
            counts.append(len(set(seen)))

        def produce(n):
            for i in range(per_publisher):
                publisher.publish(f"{n}:{i}")
                gevent.sleep(0)

        readers = [gevent.spawn(read, s) for s in subscriptions]
        gevent.joinall([gevent.spawn(produce, n) for n in range(publishers)], timeout=20)
        gevent.joinall(readers, timeout=20)
        heartbeat = next(publisher.subscribe(heartbeat=0.2))  # kept by the ticker, a greenlet here
        os_threads = len(os.listdir("/proc/self/task"))
        print(json.dumps({"counts": counts, "thread_is_patched": monkey.is_module_patched("threading"),
                          "heartbeat": heartbeat.decode(), "os_threads": os_threads}))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
    )
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome["thread_is_patched"] is True
    assert outcome["counts"] == [1000] * 50
    assert outcome["heartbeat"] == ": keep-alive\n\n"
    assert outcome["os_threads"] == 1  # heartbeats and waits are greenlets, not OS threads


def test_parse_events_of_a_subscription_matches_published(publisher: Publisher) -> None:
    subscription = publisher.subscribe()
    publisher.publish("a\nb", event="multi")
    events = parse_events([next(subscription)])
    assert [(e.type, e.data) for e in events] == [("multi", "a\nb")]


def test_each_event_is_serialized_once_whatever_the_number_of_subscribers() -> None:
    calls = []

    def serializer(value: object) -> str:
        calls.append(value)
        return json.dumps(value)

    with Publisher(serializer=serializer) as publisher:
        subscriptions = [publisher.subscribe() for _ in range(10)]
        event_id = publisher.publish({"n": 1})
        assert calls == [{"n": 1}]
        chunks = {next(s) for s in subscriptions}
    assert chunks == {f'id: {event_id}\ndata: {{"n": 1}}\n\n'.encode()}


def test_broker_must_implement_the_protocol() -> None:
    with pytest.raises(TypeError, match="broker must implement"):
        Publisher(broker="redis://localhost")  # type: ignore[arg-type]


def test_drain_ends_streams_but_keeps_publishing() -> None:
    with Publisher() as publisher:
        subscription = publisher.subscribe(heartbeat=30)
        publisher.drain()
        assert list(subscription) == []
        assert publisher.draining and not publisher.closed
        assert publisher.stats()["draining"] is True
        assert publisher.publish("still works").endswith("-1")
        assert publisher.subscription_count == 0
