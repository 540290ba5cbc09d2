"""The publisher's ticker: one named thread keeps every stream's heartbeat and lifetime."""

from __future__ import annotations

import threading
import time

from sse_wsgi import Publisher
from sse_wsgi._ticker import Ticker

HEARTBEAT = b": keep-alive\n\n"


def ticker_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == "sse-wsgi-ticker" and t.is_alive()}


def test_one_named_thread_serves_every_stream_and_stops_with_the_publisher() -> None:
    before = ticker_threads()  # other tests' publishers may have theirs
    publisher = Publisher()
    assert not ticker_threads() - before  # started by the first stream that needs it, not before
    subscriptions = [publisher.subscribe(heartbeat=0.1) for _ in range(20)]
    [ticker] = ticker_threads() - before
    assert all(next(s) == HEARTBEAT for s in subscriptions)
    publisher.close()
    assert not ticker.is_alive()


def test_streams_without_heartbeat_or_lifetime_start_no_thread() -> None:
    before = ticker_threads()
    with Publisher() as publisher:
        publisher.subscribe("a", heartbeat=None)
        publisher.publish("x", "a")
        assert not ticker_threads() - before


def test_a_shorter_heartbeat_is_kept_at_once_although_the_ticker_was_waiting_longer() -> None:
    with Publisher() as publisher:
        publisher.subscribe(heartbeat=30)  # the ticker now checks every second
        time.sleep(0.05)  # and is inside that wait
        started = time.monotonic()
        fast = publisher.subscribe(heartbeat=0.1)
        assert next(fast) == HEARTBEAT
        assert time.monotonic() - started < 0.6  # not the old one-second wait


def test_the_thread_ends_when_no_stream_needs_it_and_comes_back_with_the_next() -> None:
    with Publisher() as publisher:
        before = ticker_threads()
        subscription = publisher.subscribe(heartbeat=0.05)
        [ticker] = ticker_threads() - before
        subscription.close()
        ticker.join(3)
        assert not ticker.is_alive()
        assert next(publisher.subscribe(heartbeat=0.05)) == HEARTBEAT


class Stream:
    """A stand-in that is always due and counts its wake-ups."""

    def __init__(self) -> None:
        self.woken = threading.Event()

    def is_due(self, now: float) -> bool:
        return True

    def wake_up(self) -> None:
        self.woken.set()


def test_ticker_close_is_bounded_and_final() -> None:
    ticker = Ticker(name="test-ticker")
    stream = Stream()
    ticker.add(stream, 0.1)
    assert stream.woken.wait(2)
    started = time.monotonic()
    ticker.close()
    assert time.monotonic() - started < 1
    assert not any(t.name == "test-ticker" and t.is_alive() for t in threading.enumerate())
    later = Stream()
    ticker.add(later, 0.1)  # ignored once closed
    assert not later.woken.wait(0.3)
