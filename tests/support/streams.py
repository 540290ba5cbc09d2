"""Reading event streams in the tests: a subscription or an HTTP stream, in a named thread, with deadlines."""

from __future__ import annotations

import threading
import time

import httpx

from sse_wsgi import Subscription
from sse_wsgi.testing import EventStreamParser, ReceivedEvent

__all__ = ["Reader", "data_of", "open_stream", "take", "wait_subscribed"]


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


def take(subscription: Subscription, count: int, timeout: float = 5.0) -> list[ReceivedEvent]:
    """Read *count* events from *subscription* in a named thread, with a deadline."""
    parser = EventStreamParser()
    events: list[ReceivedEvent] = []
    done = threading.Event()

    def read() -> None:
        for chunk in subscription:
            events.extend(parser.feed(chunk))
            if len(events) >= count:
                break
        done.set()

    threading.Thread(target=read, name="test-take", daemon=True).start()
    if not done.wait(timeout):
        subscription.close()
        raise AssertionError(f"only {len(events)} of {count} events within {timeout} s: {events}")
    return events


def data_of(events: list[ReceivedEvent]) -> list[str]:
    return [e.data for e in events]
