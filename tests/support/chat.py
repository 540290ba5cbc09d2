"""Chat once through a running demo or example: open the stream, send a message, read it back."""

from __future__ import annotations

import time

import httpx

from sse_wsgi.testing import EventStreamParser, ReceivedEvent


def chat_once(base: str, message: dict[str, str], timeout: float = 10) -> tuple[ReceivedEvent, str]:
    """POST *message* to ``base/send`` while streaming channel "chat"; return the first event and the id sent."""
    with httpx.Client(timeout=5) as client, client.stream("GET", base + "/events?channel=chat") as stream:
        chunks = stream.iter_raw()
        parser = EventStreamParser()
        parser.feed(next(chunks))  # the opening comment: the subscription is registered
        sent = client.post(base + "/send", json=message)
        assert sent.status_code == 200, sent.text
        events: list[ReceivedEvent] = []
        deadline = time.monotonic() + timeout
        while not events and time.monotonic() < deadline:
            events = parser.feed(next(chunks))
    assert events, f"no event within {timeout} s"
    return events[0], sent.text
