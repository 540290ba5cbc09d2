"""Flask, Bottle, Pyramid, Django and Falcon apps wrapped in SSEMiddleware, on a real server, publish from views."""

from __future__ import annotations

import time

import httpx
import pytest

from sse_wsgi.testing import EventStreamParser, ReceivedEvent
from tests.support.servers.harness import LiveServer, start_server

pytestmark = pytest.mark.integration

FRAMEWORKS = ["flask_app", "bottle_app", "pyramid_app", "django_app", "falcon_app"]


def read_one_event(server: LiveServer, stream_path: str, channel: str) -> tuple[ReceivedEvent, str]:
    """Open *stream_path*, publish through the framework's view once the stream is open, return what arrives."""
    events: list[ReceivedEvent] = []
    with httpx.Client(timeout=httpx.Timeout(5, read=10)) as client:
        with client.stream("GET", server.url + stream_path) as response:
            assert response.status_code == 200
            assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
            chunks = response.iter_raw()
            parser = EventStreamParser()
            parser.feed(next(chunks))  # the stream is open: the subscriber is registered
            published = client.post(f"{server.url}/publish?channel={channel}", content="from the view ✓".encode())
            assert published.status_code == 200, published.text
            deadline = time.monotonic() + 10
            while not events and time.monotonic() < deadline:
                events.extend(parser.feed(next(chunks)))
    return events[0], published.text


@pytest.mark.parametrize("module", FRAMEWORKS)
def test_view_publishes_to_the_middleware_stream(module: str) -> None:
    with start_server("werkzeug", f"tests.support.servers.apps.{module}:app") as server:
        event, event_id = read_one_event(server, "/events/news", "news")
        assert (event.data, event.last_event_id) == ("from the view ✓", event_id)


@pytest.mark.parametrize("module", ["flask_app", "pyramid_app"])
def test_event_stream_response_in_a_view(module: str) -> None:
    with start_server("waitress", f"tests.support.servers.apps.{module}:app") as server:
        event, event_id = read_one_event(server, "/stream?channel=own", "own")
        assert (event.data, event.last_event_id) == ("from the view ✓", event_id)
        # The client has gone: closing the response unregistered the subscriber.
        deadline = time.monotonic() + 5
        while httpx.get(server.url + "/count", timeout=5).text != "0" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert httpx.get(server.url + "/count", timeout=5).text == "0"
