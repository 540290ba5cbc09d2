"""SSEMiddleware on a real werkzeug threaded server on 127.0.0.1, with httpx and httpx-sse as the client."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from httpx_sse import connect_sse
from werkzeug.serving import make_server

from sse_wsgi import Publisher, SSEMiddleware

HEARTBEAT = 0.5  # seconds

pytestmark = pytest.mark.integration


def inner_app(environ, start_response):
    if environ["PATH_INFO"] == "/publish":
        size = int(environ.get("CONTENT_LENGTH") or 0)
        event_id = environ["sse.publisher"].publish(environ["wsgi.input"].read(size).decode(), "chat")
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [event_id.encode()]
    start_response("404 Not Found", [("Content-Type", "text/plain")])
    return [b"not found\n"]


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, Publisher]]:
    publisher = Publisher()
    app = SSEMiddleware(inner_app, publisher, heartbeat=HEARTBEAT, retry=1000)
    httpd = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, name="test-werkzeug-server", daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}", publisher
    publisher.close()
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


def wait_for(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def test_events_reach_an_httpx_sse_client(server) -> None:
    url, publisher = server
    with httpx.Client(timeout=5) as client, connect_sse(client, "GET", url + "/events/chat") as source:
        assert source.response.headers["content-type"] == "text/event-stream; charset=utf-8"
        events = source.iter_sse()
        opening = next(events)  # httpx-sse reports the retry-only chunk; a browser dispatches nothing for it
        assert (opening.retry, opening.data) == (1000, "")
        assert wait_for(lambda: publisher.subscription_count == 1, 5)
        ids = [client.post(url + "/publish", content=text).text for text in ("one", "two\nlines", "ünï ✓")]
        received = [next(events) for _ in range(3)]
    assert [(e.data, e.id) for e in received] == list(zip(["one", "two\nlines", "ünï ✓"], ids, strict=True))


def test_resume_with_last_event_id_over_http(server) -> None:
    url, _ = server
    with httpx.Client(timeout=5) as client:
        first = client.post(url + "/publish", content="before").text
        client.post(url + "/publish", content="missed 1")
        client.post(url + "/publish", content="missed 2")
        with connect_sse(client, "GET", url + "/events/chat", headers={"Last-Event-ID": first}) as source:
            events = (event for event in source.iter_sse() if event.data)
            assert [next(events).data for _ in range(2)] == ["missed 1", "missed 2"]


@pytest.mark.parametrize(
    ("method", "path", "status", "body"),
    [
        ("POST", "/events", 405, "Method not allowed"),
        ("GET", "/events?" + "&".join(f"channel=c{n}" for n in range(40)), 400, "at most 32 channels"),
        ("GET", "/events?channel=", 400, "must not be empty"),
        ("GET", "/events/" + "n" * 300, 400, "at most 200 characters"),
        ("GET", "/events?channel=%ff", 400, "not valid UTF-8"),
    ],
    ids=["405", "too many channels", "empty name", "long name", "bad utf-8"],
)
def test_bad_requests_over_http(server, method: str, path: str, status: int, body: str) -> None:
    url, _ = server
    response = httpx.request(method, url + path, timeout=5)
    assert response.status_code == status
    assert body in response.text
    if status == 405:
        assert response.headers["allow"] == "GET, HEAD, OPTIONS"


def test_disconnected_client_is_unregistered_within_heartbeat(server) -> None:
    url, publisher = server
    with httpx.Client(timeout=5) as client, client.stream("GET", url + "/events/gone") as response:
        next(response.iter_raw())  # the stream is open
        assert len(list(publisher.get_subscribers("gone"))) == 1
    # The client has gone; the next heartbeat write fails and the server closes the body.
    assert wait_for(lambda: not list(publisher.get_subscribers("gone")), HEARTBEAT + 3)
    assert wait_for(lambda: publisher.subscription_count == 0, HEARTBEAT + 3)  # earlier tests' streams too
