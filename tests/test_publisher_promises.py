"""The promises on the paths production takes, in one process: defaults, failing callables, many channels, forks.

Each test here names a way "nothing lost, nothing leaked" used to break.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import threading
import time
import tracemalloc
import warnings

import pytest

from sse_wsgi import HISTORY_LOST_EVENT, Publisher
from sse_wsgi._ticker import Ticker
from sse_wsgi.publisher import DEFAULT_QUEUE_SIZE
from tests.support.streams import data_of, take


def ticker_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == "sse-wsgi-ticker" and t.is_alive()}


# -- the default sizes -----------------------------------------------------------------------------


def test_default_sizes_cover_what_a_cut_off_subscriber_missed_and_as_much_again() -> None:
    with Publisher() as publisher:
        assert publisher.queue_limit == 500 <= DEFAULT_QUEUE_SIZE  # half the default history of 1000
        slow = publisher.subscribe("feed", heartbeat=None)
        published = [publisher.publish(f"e{n}", "feed") for n in range(3)]
        first_three = take(slow, 3)
        assert [e.last_event_id for e in first_three] == published
        n = 3
        while not slow.closed and n < 5000:  # the reader stops; the publisher does not
            published.append(publisher.publish(f"e{n}", "feed"))
            n += 1
            if publisher.stats()["slow_subscribers_cut"]:
                break
        assert publisher.stats()["slow_subscribers_cut"] == 1
        for m in range(n, n + publisher.queue_limit - 2):  # while the client reconnects
            published.append(publisher.publish(f"e{m}", "feed"))
        resumed = publisher.subscribe("feed", last_event_id=first_three[-1].last_event_id, heartbeat=None)
        events = take(resumed, len(published) - 3)
    assert HISTORY_LOST_EVENT not in {e.type for e in events}
    assert [e.last_event_id for e in events] == published[3:]


def test_a_queue_larger_than_half_the_history_is_warned_about() -> None:
    with pytest.warns(UserWarning, match="queue_size=800 is more than half of history=1000"):
        Publisher(queue_size=800).close()


def test_the_seed_pattern_subscribe_has_a_heartbeat_by_default() -> None:
    """``Response(publisher.subscribe())``: without a heartbeat a departed client is never found."""
    assert inspect.signature(Publisher.subscribe).parameters["heartbeat"].default == 15.0
    before = ticker_threads()
    with Publisher() as publisher:
        publisher.subscribe()
        assert ticker_threads() - before  # the ticker keeps its heartbeat


# -- failing callables -----------------------------------------------------------------------------


class NotJSON:
    """A value the default serializer refuses."""


def test_a_value_the_serializer_refuses_costs_that_subscriber_that_event_only(caplog) -> None:
    def data(properties):
        return NotJSON() if properties == "bad" else {"to": properties}

    with Publisher() as publisher:
        bad = publisher.subscribe("c", properties="bad")
        good = publisher.subscribe("c", properties="good")
        first = publisher.publish("before", "c")
        with caplog.at_level(logging.ERROR, logger="sse_wsgi.publisher"):
            publisher.publish(data, "c")  # does not raise
        publisher.publish("after", "c")
        assert data_of(take(good, 3)) == ["before", '{"to":"good"}', "after"]
        assert data_of(take(bad, 2)) == ["before", "after"]
        assert "callable data failed" in caplog.text
        resumed = publisher.subscribe("c", properties="bad", last_event_id=first)  # a resume over that event
        assert data_of(take(resumed, 1)) == ["after"]
        for subscription in (bad, good, resumed):
            subscription.close()
        assert publisher.subscription_count == 0


def test_a_callable_that_raises_or_returns_a_non_str_from_the_serializer_costs_one_event() -> None:
    def data(properties):
        if properties == "raises":
            raise RuntimeError("boom")
        return properties

    with Publisher(serializer=lambda value: 42) as publisher:  # a serializer that breaks its contract
        raising = publisher.subscribe(properties="raises")
        refused = publisher.subscribe(properties={"not": "str"})
        fine = publisher.subscribe(properties="text")
        publisher.publish(data)
        publisher.publish("after")
        assert data_of(take(fine, 2)) == ["text", "after"]
        assert data_of(take(raising, 1)) == ["after"]
        assert data_of(take(refused, 1)) == ["after"]


def test_an_error_inside_subscribe_leaves_no_subscriber_registered() -> None:
    class FailingReplay(Exception):
        pass

    with Publisher() as publisher:
        first = publisher.publish("x")

        def replay(channels, last_event_id):
            raise FailingReplay("history store broke")

        publisher.broker.replay = replay  # type: ignore[method-assign]
        with pytest.raises(FailingReplay):
            publisher.subscribe(last_event_id=first)
        assert publisher.subscription_count == 0
        assert list(publisher.get_subscribers()) == []


# -- many channels ---------------------------------------------------------------------------------


def _traced_bytes_after_publishing_to(channels: int, history_total: int) -> tuple[int, dict]:
    tracemalloc.start()
    try:
        with Publisher(history_total=history_total) as publisher:
            baseline = tracemalloc.get_traced_memory()[0]
            for n in range(channels):
                publisher.publish("hello", f"user:{n}")
            return tracemalloc.get_traced_memory()[0] - baseline, publisher.stats()
    finally:
        tracemalloc.stop()


def test_quiet_channels_cost_at_most_the_total_history_however_many_there_are() -> None:
    """Per-user channels, one event each: memory stops growing at the total cap (1,000,000: see docs/guide.md)."""
    cap = 5_000
    fewer, _ = _traced_bytes_after_publishing_to(2 * cap, cap)
    more, stats = _traced_bytes_after_publishing_to(8 * cap, cap)
    assert stats["history_size"] == stats["channels_kept"] == cap
    assert more < fewer * 1.1, f"{fewer} bytes for {2 * cap} channels, {more} for {8 * cap}"
    assert more / cap < 1000, f"{more / cap:.0f} bytes per kept event"


def test_history_zero_keeps_no_state_per_channel() -> None:
    with Publisher(history=0) as publisher:
        for n in range(10_000):
            publisher.publish("x", f"user:{n}")
        assert publisher.stats()["channels_kept"] == 0


# -- lifetimes, probes and the ticker --------------------------------------------------------------


def _publish_until(publisher: Publisher, stop: threading.Event) -> None:
    while not stop.is_set():
        publisher.publish("busy")
        time.sleep(0.002)


@pytest.mark.parametrize("end", ["max_lifetime", "client_disconnected"])
def test_a_busy_stream_still_ends_at_its_lifetime_and_when_its_client_is_gone(end: str) -> None:
    kwargs = {"max_lifetime": 0.3} if end == "max_lifetime" else {"heartbeat": 0.3, "client_disconnected": lambda: True}
    with Publisher(history=100_000) as publisher:
        subscription = publisher.subscribe(**kwargs)
        stop = threading.Event()
        producer = threading.Thread(target=_publish_until, args=(publisher, stop), name="test-busy-producer")
        producer.start()
        try:
            started = time.monotonic()
            for _chunk in subscription:  # events keep coming: the stream is never idle
                if time.monotonic() - started > 5:
                    break
            elapsed = time.monotonic() - started
        finally:
            stop.set()
            producer.join(5)
    assert elapsed < 2, f"the stream ran {elapsed:.1f} s"
    assert subscription.closed


class CountingStream:
    """A ticker client that counts how often the ticker asks it."""

    def __init__(self) -> None:
        self.asked = 0

    def is_due(self, now: float) -> bool:
        self.asked += 1
        return False

    def wake_up(self) -> None:
        pass


def test_the_ticker_slows_down_again_when_short_periods_leave() -> None:
    ticker = Ticker(name="test-ticker-pace")
    try:
        short, long = CountingStream(), CountingStream()
        ticker.add(long, 4.0)  # checked every second
        ticker.add(short, 0.08)  # checked every 0.02 s
        time.sleep(0.3)
        assert long.asked > 5
        ticker.discard(short)
        time.sleep(0.1)
        before = long.asked
        time.sleep(1.5)
        assert long.asked - before <= 3  # back to about once a second, not 75 times
    finally:
        ticker.close()


def test_a_drain_racing_subscribe_leaves_no_ended_stream_in_the_ticker() -> None:
    with Publisher() as publisher:
        before = ticker_threads()
        subscriptions = []

        def subscribe_many() -> None:
            for _ in range(300):
                subscriptions.append(publisher.subscribe(heartbeat=0.2))

        subscriber = threading.Thread(target=subscribe_many, name="test-subscriber")
        subscriber.start()
        for _ in range(50):
            publisher.drain()
            time.sleep(0.001)
        subscriber.join(10)
        for subscription in subscriptions:
            subscription.close()
        deadline = time.monotonic() + 3
        while ticker_threads() - before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not ticker_threads() - before  # nothing left to watch: the ticker stopped


# -- restarts and forks ----------------------------------------------------------------------------


def test_an_id_from_before_a_restart_is_never_taken_for_a_new_one() -> None:
    with Publisher() as before:
        old = [before.publish(f"old {n}") for n in range(5)]
    with Publisher() as after:
        new = [after.publish(f"new {n}") for n in range(7)]
        resumed = after.subscribe(last_event_id=old[-1])
        events = take(resumed, 8)
    assert events[0].type == HISTORY_LOST_EVENT
    assert json.loads(events[0].data)["last_event_id"] == old[-1]
    assert [e.last_event_id for e in events[1:]] == new  # from the start, never mid-way


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_publisher_made_before_a_fork_delivers_in_the_child_with_its_own_epoch() -> None:
    publisher = Publisher()
    parent_id = publisher.publish("made in the parent")
    publisher.subscribe("warm", heartbeat=0.1)  # the parent's ticker thread runs
    read, write = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # "multi-threaded, fork may deadlock": the point here
        pid = os.fork()
    if pid == 0:  # the child: threads of the parent do not exist here
        try:
            subscription = publisher.subscribe("c", heartbeat=0.1)
            child_id = publisher.publish("in the child", "c")
            chunks = [next(subscription), next(subscription)]  # the event, then a heartbeat from its own ticker
            os.write(write, json.dumps([child_id, [c.decode() for c in chunks]]).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        answer = pipe.read()
    os.waitpid(pid, 0)
    publisher.close()
    child_id, chunks = json.loads(answer)
    assert chunks == [f"id: {child_id}\ndata: in the child\n\n", ": keep-alive\n\n"]
    assert child_id.partition("-")[0] != parent_id.partition("-")[0]  # two workers never share ids
