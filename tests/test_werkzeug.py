"""sse_wsgi.werkzeug.EventStreamResponse in-process: headers, first chunk, closing."""

from __future__ import annotations

import pytest
from werkzeug.test import Client

from sse_wsgi import Publisher
from sse_wsgi._http import HOP_BY_HOP, OPENING_CHUNK
from sse_wsgi.testing import parse_events
from sse_wsgi.werkzeug import EventStreamResponse


@pytest.fixture
def publisher():
    with Publisher() as publisher:
        yield publisher


def stream_app(publisher: Publisher):
    def app(environ, start_response):
        return EventStreamResponse(publisher.subscribe("x"), headers={"X-Extra": "1"})(environ, start_response)

    return app


def test_headers_first_chunk_and_events(publisher: Publisher) -> None:
    response = Client(stream_app(publisher)).get("/", buffered=False)
    chunks = iter(response.response)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/event-stream; charset=utf-8"
    assert response.headers["Cache-Control"] == "no-cache"
    assert response.headers["X-Accel-Buffering"] == "no"
    assert response.headers["X-Extra"] == "1"
    assert not {name.lower() for name in response.headers.keys()} & HOP_BY_HOP
    assert next(chunks) == OPENING_CHUNK
    publisher.publish("hi", "x")
    assert [e.data for e in parse_events(next(chunks))] == ["hi"]
    response.close()
    assert publisher.subscription_count == 0


def test_closing_the_response_closes_an_unread_subscription(publisher: Publisher) -> None:
    response = EventStreamResponse(publisher.subscribe("x"))
    assert publisher.subscription_count == 1
    response.close()
    assert publisher.subscription_count == 0


def test_head_request_frees_the_subscription(publisher: Publisher) -> None:
    response = Client(stream_app(publisher)).head("/")
    assert response.status_code == 200
    assert response.data == b""
    assert publisher.subscription_count == 0


def test_refuses_what_is_not_a_subscription() -> None:
    with pytest.raises(TypeError, match=r"sse_wsgi\.Subscription"):
        EventStreamResponse(iter([b"data: x\n\n"]))  # type: ignore[arg-type]
