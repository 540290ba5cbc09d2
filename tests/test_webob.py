"""sse_wsgi.webob.EventStreamResponse in-process: headers, first chunk, closing."""

from __future__ import annotations

import pytest
from webob import Request

from sse_wsgi import Publisher
from sse_wsgi._http import OPENING_CHUNK
from sse_wsgi.testing import parse_events
from sse_wsgi.webob import EventStreamResponse


@pytest.fixture
def publisher():
    with Publisher() as publisher:
        yield publisher


def test_headers_first_chunk_and_events(publisher: Publisher) -> None:
    response = Request.blank("/").get_response(EventStreamResponse(publisher.subscribe("x")))
    assert response.status_int == 200
    assert response.headers["Content-Type"] == "text/event-stream; charset=utf-8"
    assert response.headers["Cache-Control"] == "no-cache"
    assert response.headers["X-Accel-Buffering"] == "no"
    assert "Content-Length" not in response.headers
    chunks = iter(response.app_iter)
    assert next(chunks) == OPENING_CHUNK
    publisher.publish("hi", "x")
    assert [e.data for e in parse_events(next(chunks))] == ["hi"]
    response.app_iter.close()
    assert publisher.subscription_count == 0


def test_head_request_frees_the_subscription(publisher: Publisher) -> None:
    response = Request.blank("/", method="HEAD").get_response(EventStreamResponse(publisher.subscribe("x")))
    assert response.body == b""
    assert publisher.subscription_count == 0


def test_keyword_arguments_reach_webob(publisher: Publisher) -> None:
    response = EventStreamResponse(publisher.subscribe("x"), headerlist=[("X-Extra", "1")])
    assert response.headers["X-Extra"] == "1"
    assert response.headers["Content-Type"] == "text/event-stream; charset=utf-8"
    response.app_iter.close()
    assert publisher.subscription_count == 0


def test_refuses_what_is_not_a_subscription() -> None:
    with pytest.raises(TypeError, match=r"sse_wsgi\.Subscription"):
        EventStreamResponse([b"data: x\n\n"])  # type: ignore[arg-type]
