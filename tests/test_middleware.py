"""SSEMiddleware called in-process, as a server would, through wsgiref's PEP 3333 validator."""

from __future__ import annotations

import json
from typing import Any
from wsgiref.validate import validator

import pytest
from werkzeug.test import EnvironBuilder

from sse_wsgi import HISTORY_LOST_EVENT, Publisher, SSEMiddleware
from sse_wsgi._http import DEFAULT_RETRY_MS, HOP_BY_HOP, OPENING_CHUNK, last_event_id
from sse_wsgi.testing import EventStreamParser, parse_events, read_events


def inner_app(environ, start_response):
    body = json.dumps({"has_publisher": isinstance(environ.get("sse.publisher"), Publisher)}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


class Answer:
    """The status, headers and first body chunk of one request; the body stays open until close()."""

    def __init__(self, app, path: str = "/events", method: str = "GET", headers: dict[str, str] | None = None,
                 raw_path: bytes | None = None) -> None:  # fmt: skip
        environ = EnvironBuilder(path=path, method=method, headers=headers or {}).get_environ()
        if raw_path is not None:
            environ["PATH_INFO"] = raw_path.decode("latin-1")
        captured: dict[str, Any] = {}

        def start_response(status, headers, exc_info=None):
            captured["status"], captured["headers"] = status, headers
            return lambda data: None

        self.body = validator(app)(environ, start_response)
        self.iterator = iter(self.body)
        self.first = next(self.iterator, b"")
        self.status: str = captured["status"]
        self.headers: dict[str, str] = dict(captured["headers"])
        self.code = int(self.status.split()[0])

    def close(self) -> None:
        self.body.close()

    def __enter__(self) -> Answer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@pytest.fixture
def publisher():
    with Publisher() as publisher:
        yield publisher


@pytest.fixture
def app(publisher: Publisher) -> SSEMiddleware:
    return SSEMiddleware(inner_app, publisher, heartbeat=30)


def test_every_request_gets_the_publisher(app: SSEMiddleware) -> None:
    with Answer(app, "/anything") as answer:
        assert answer.code == 200
        assert json.loads(answer.first) == {"has_publisher": True}


def test_stream_headers_and_immediate_first_chunk(app: SSEMiddleware) -> None:
    with Answer(app) as answer:
        assert answer.status == "200 OK"
        assert answer.headers["Content-Type"] == "text/event-stream; charset=utf-8"
        assert answer.headers["Cache-Control"] == "no-cache"
        assert answer.headers["X-Accel-Buffering"] == "no"
        assert not {name.lower() for name in answer.headers} & HOP_BY_HOP
        assert answer.first == OPENING_CHUNK


def test_retry_is_the_first_chunk_when_set(publisher: Publisher) -> None:
    with Answer(SSEMiddleware(inner_app, publisher, retry=2500)) as answer:
        assert answer.first == b": stream open\nretry: 2500\n\n"


def test_every_stream_opens_with_the_default_retry_so_a_shedding_hint_does_not_stick(publisher: Publisher) -> None:
    app = SSEMiddleware(inner_app, publisher)
    with Answer(app) as answer:
        parser = EventStreamParser()
        assert parser.feed(answer.first) == []  # no event, only the stream's settings
    assert parser.retry == DEFAULT_RETRY_MS == 3000


@pytest.mark.parametrize("path", ["/events", "/events/"])
def test_default_channel_without_query(app: SSEMiddleware, publisher: Publisher, path: str) -> None:
    with Answer(app, path) as answer:
        assert answer.code == 200
        assert [s.channels for s in publisher.get_subscribers()] == [("default channel",)]


def test_channel_query_parameters_repeat(app: SSEMiddleware, publisher: Publisher) -> None:
    with Answer(app, "/events?channel=a&channel=b&channel=a"):
        [subscription] = publisher.get_subscribers(["a", "b"])
        assert subscription.channels == ("a", "b")


@pytest.mark.parametrize(
    ("path", "channel"),
    [
        ("/events/chat", "chat"),
        ("/events/room%201", "room 1"),
        ("/events/%C3%BCber", "über"),
        ("/events/a%2Fb", "a/b"),
        ("/events/news/sports", "news/sports"),
    ],
)
def test_channel_in_path_is_url_decoded(app: SSEMiddleware, publisher: Publisher, path: str, channel: str) -> None:
    with Answer(app, path):
        assert [s.channels for s in publisher.get_subscribers(channel)] == [(channel,)]


def test_publish_reaches_the_stream(app: SSEMiddleware) -> None:
    events = read_events(app, "/events/chat", 2, publish=lambda p: [p.publish("hi", "chat"), p.publish("yo", "chat")])
    assert [e.data for e in events] == ["hi", "yo"]


def test_several_prefixes(publisher: Publisher) -> None:
    app = SSEMiddleware(inner_app, publisher, path=["/events", "/api/stream/"])
    with Answer(app, "/api/stream/x") as answer:
        assert answer.headers["Content-Type"].startswith("text/event-stream")
        assert [s.channels for s in publisher.get_subscribers("x")] == [("x",)]
    with Answer(app, "/api/other") as answer:
        assert json.loads(answer.first) == {"has_publisher": True}


@pytest.mark.parametrize(
    ("headers", "path"),
    [
        ({"Last-Event-ID": "FIRST"}, "/events"),
        ({}, "/events?lastEventId=FIRST"),
    ],
    ids=["header", "query parameter"],
)
def test_last_event_id_resumes(app: SSEMiddleware, publisher: Publisher, headers: dict, path: str) -> None:
    first = publisher.publish("e1")
    for n in range(2, 4):
        publisher.publish(f"e{n}")
    path = path.replace("FIRST", first)
    headers = {name: value.replace("FIRST", first) for name, value in headers.items()}
    events = read_events(app, path, 2, headers=headers)
    assert [e.data for e in events] == ["e2", "e3"]


@pytest.mark.parametrize(
    "value",
    ["x" * 10_000, "ünï", "1\x00", "garbage"],
    ids=["huge", "non-ascii", "nul", "not an id"],
)
def test_malformed_last_event_id_is_ignored(app: SSEMiddleware, publisher: Publisher, value: str) -> None:
    publisher.publish("old")
    header = value.encode("utf-8").decode("latin-1")  # as a server hands header bytes over
    events = read_events(app, "/events", 1, headers={"Last-Event-ID": header}, publish=lambda p: p.publish("new"))
    assert [e.data for e in events] == ["new"]


def test_lost_history_notice_over_http(publisher: Publisher) -> None:
    app = SSEMiddleware(inner_app, Publisher(history=2))
    first = app.publisher.publish("e1")
    for n in range(2, 5):
        app.publisher.publish(f"e{n}")
    events = read_events(app, "/events", 3, headers={"Last-Event-ID": first})
    assert [(e.type, e.data if e.type != HISTORY_LOST_EVENT else "") for e in events] == [
        (HISTORY_LOST_EVENT, ""), ("message", "e3"), ("message", "e4"),
    ]  # fmt: skip
    app.publisher.close()


def test_properties_hook_sets_subscriber_properties(publisher: Publisher) -> None:
    app = SSEMiddleware(inner_app, publisher, properties=lambda environ: {"agent": environ.get("HTTP_USER_AGENT")})
    with Answer(app, headers={"User-Agent": "tester"}):
        assert [s.properties for s in publisher.get_subscribers()] == [{"agent": "tester"}]


def test_authorize_false_gives_403_and_sees_channels(publisher: Publisher) -> None:
    seen = []

    def authorize(environ, channels):
        seen.append(channels)
        return "secret" not in channels

    app = SSEMiddleware(inner_app, publisher, authorize=authorize)
    with Answer(app, "/events?channel=public&channel=secret") as answer:
        assert answer.code == 403
        assert answer.first == b"Forbidden\n"
    with Answer(app, "/events/public") as answer:
        assert answer.code == 200
    assert seen == [("public", "secret"), ("public",)]
    assert publisher.subscription_count == 0


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
def test_other_methods_get_405_with_allow(app: SSEMiddleware, method: str) -> None:
    with Answer(app, method=method) as answer:
        assert answer.code == 405
        assert answer.headers["Allow"] == "GET, HEAD, OPTIONS"
        assert answer.first == b"Method not allowed\n"


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/events?" + "&".join(f"channel=c{n}" for n in range(33)), b"at most 32 channels"),
        ("/events?channel=", b"must not be empty"),
        ("/events?channel=" + "x" * 201, b"at most 200 characters"),
        ("/events/" + "x" * 201, b"at most 200 characters"),
        ("/events?channel=%FF", b"not valid UTF-8"),
        ("/events?channel=%C3", b"not valid UTF-8"),
    ],
    ids=["too many channels", "empty query name", "long query name", "long path name",
         "bad escape", "truncated utf-8"],
)  # fmt: skip
def test_bad_requests_get_400_with_a_short_body(app: SSEMiddleware, publisher: Publisher, path, message) -> None:
    with Answer(app, path) as answer:
        assert answer.code == 400
        assert answer.headers["Content-Type"] == "text/plain; charset=utf-8"
        assert message in answer.first
        assert len(answer.first) < 100
    assert publisher.subscription_count == 0


def test_undecodable_path_bytes_get_400(app: SSEMiddleware) -> None:
    with Answer(app, raw_path=b"/events/\xff\xfe") as answer:
        assert answer.code == 400
        assert b"UTF-8" in answer.first


def test_exactly_max_channels_is_fine(publisher: Publisher) -> None:
    app = SSEMiddleware(inner_app, publisher, max_channels=3)
    with Answer(app, "/events?channel=a&channel=b&channel=c") as answer:
        assert answer.code == 200


def test_closed_publisher_gives_503(app: SSEMiddleware, publisher: Publisher) -> None:
    publisher.close()
    with Answer(app) as answer:
        assert answer.code == 503
        assert b"closed" in answer.first


def test_head_gives_headers_and_no_subscriber(app: SSEMiddleware, publisher: Publisher) -> None:
    with Answer(app, method="HEAD") as answer:
        assert answer.code == 200
        assert answer.headers["Content-Type"].startswith("text/event-stream")
        assert answer.first == b""
    assert publisher.subscription_count == 0


def test_closing_the_body_unregisters_the_subscriber(app: SSEMiddleware, publisher: Publisher) -> None:
    answer = Answer(app, "/events/x")
    assert publisher.subscription_count == 1
    answer.close()
    assert publisher.subscription_count == 0
    assert list(publisher.get_subscribers("x")) == []


def test_eventlet_minimum_write_chunk_size_is_zero(app: SSEMiddleware) -> None:
    environ = EnvironBuilder(path="/events").get_environ()
    body = app(environ, lambda status, headers, exc_info=None: None)
    assert environ["eventlet.minimum_write_chunk_size"] == 0
    body.close()  # type: ignore[attr-defined]


def test_max_subscribers_sheds_with_a_retry_only_stream(publisher: Publisher) -> None:
    app = SSEMiddleware(inner_app, publisher, max_subscribers=2)
    with Answer(app), Answer(app):
        with Answer(app) as refused:
            assert refused.code == 200  # a non-200 would make a browser give up for good
            assert refused.headers["Content-Type"].startswith("text/event-stream")
            rest = b"".join(refused.iterator)
        parsed = parse_events(refused.first + rest)
        assert parsed == []
        assert refused.first.startswith(b"retry: ") and refused.first.endswith(b"\n\n") and rest == b""
        assert 5000 <= int(refused.first.split()[1]) <= 15000
        assert publisher.subscription_count == 2
        assert publisher.stats()["streams_refused"] == 1
    with Answer(app) as accepted:
        assert accepted.first == OPENING_CHUNK


# -- CORS -------------------------------------------------------------------------------------------


def test_allowed_origin_is_echoed_with_credentials(publisher: Publisher) -> None:
    app = SSEMiddleware(inner_app, publisher, cors_origins=["https://app.example"])
    with Answer(app, headers={"Origin": "https://app.example"}) as answer:
        assert answer.code == 200
        assert answer.headers["Access-Control-Allow-Origin"] == "https://app.example"
        assert answer.headers["Access-Control-Allow-Credentials"] == "true"
        assert answer.headers["Vary"] == "Origin"


def test_star_allows_any_origin_without_credentials(publisher: Publisher) -> None:
    app = SSEMiddleware(inner_app, publisher, cors_origins="*")
    with Answer(app, headers={"Origin": "https://other.example"}) as answer:
        assert answer.code == 200
        assert answer.headers["Access-Control-Allow-Origin"] == "*"
        assert "Access-Control-Allow-Credentials" not in answer.headers


@pytest.mark.parametrize("cors_origins", ["*", (), ["https://app.example"]])
def test_the_opaque_null_origin_is_refused_unless_listed(publisher: Publisher, cors_origins) -> None:
    app = SSEMiddleware(inner_app, publisher, cors_origins=cors_origins)
    with Answer(app, headers={"Origin": "null"}) as answer:
        assert answer.code == 403
        assert "Access-Control-Allow-Origin" not in answer.headers
    listed = SSEMiddleware(inner_app, publisher, cors_origins=["null"])
    with Answer(listed, headers={"Origin": "null"}) as answer:
        assert answer.code == 200 and answer.headers["Access-Control-Allow-Origin"] == "null"


def test_other_origins_are_refused_by_default(app: SSEMiddleware, publisher: Publisher) -> None:
    with Answer(app, headers={"Origin": "https://evil.example"}) as answer:
        assert answer.code == 403
        assert "Access-Control-Allow-Origin" not in answer.headers
    assert publisher.subscription_count == 0


def test_same_origin_request_with_origin_header_is_served(app: SSEMiddleware) -> None:
    with Answer(app, headers={"Origin": "http://localhost", "Host": "localhost"}) as answer:
        assert answer.code == 200
        assert "Access-Control-Allow-Origin" not in answer.headers


def test_preflight_is_answered(publisher: Publisher) -> None:
    app = SSEMiddleware(inner_app, publisher, cors_origins=["https://app.example"])
    headers = {"Origin": "https://app.example", "Access-Control-Request-Method": "GET",
               "Access-Control-Request-Headers": "last-event-id"}  # fmt: skip
    with Answer(app, method="OPTIONS", headers=headers) as answer:
        assert answer.code == 204
        assert answer.headers["Access-Control-Allow-Origin"] == "https://app.example"
        assert answer.headers["Access-Control-Allow-Credentials"] == "true"
        assert "GET" in answer.headers["Access-Control-Allow-Methods"]
        assert "Last-Event-ID" in answer.headers["Access-Control-Allow-Headers"]
        assert answer.headers["Allow"] == "GET, HEAD, OPTIONS"
    assert publisher.subscription_count == 0


def test_preflight_from_a_refused_origin_carries_no_cors_headers(app: SSEMiddleware) -> None:
    headers = {"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"}
    with Answer(app, method="OPTIONS", headers=headers) as answer:
        assert answer.code == 204
        assert not any(name.startswith("Access-Control") for name in answer.headers)


# -- construction -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"path": "events"}, ValueError, "start with '/'"),
        ({"path": "/"}, ValueError, "not be the root"),
        ({"path": []}, ValueError, "at least one"),
        ({"path": [5]}, TypeError, "path"),
        ({"heartbeat": 0}, ValueError, "heartbeat"),
        ({"retry": -1}, ValueError, "retry"),
        ({"max_channels": 0}, ValueError, "max_channels"),
        ({"max_subscribers": "10"}, TypeError, "max_subscribers"),
        ({"max_lifetime": "1"}, TypeError, "max_lifetime"),
        ({"authorize": "yes"}, TypeError, "authorize"),
        ({"properties": {}}, TypeError, "properties"),
        ({"cors_origins": ["example.com"]}, ValueError, "cors_origins"),
        ({"publisher": "redis://"}, TypeError, "publisher"),
    ],
)
def test_bad_middleware_arguments(kwargs: dict, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        SSEMiddleware(inner_app, **kwargs)


def test_app_must_be_callable() -> None:
    with pytest.raises(TypeError, match="WSGI callable"):
        SSEMiddleware("not an app")  # type: ignore[arg-type]


def test_default_publisher_is_created() -> None:
    app = SSEMiddleware(inner_app)
    assert isinstance(app.publisher, Publisher)
    app.publisher.close()


def test_a_draining_publisher_sends_a_short_retry_instead_of_an_error(app: SSEMiddleware, publisher: Publisher) -> None:
    publisher.drain()
    with Answer(app) as answer:
        assert answer.code == 200  # a 503 would make the browser give up for good
        rest = b"".join(answer.iterator)
        assert answer.first.startswith(b"retry: ") and rest == b""
        assert 250 <= int(answer.first.split()[1]) <= 2000
    assert publisher.subscription_count == 0


def test_path_form_with_a_bad_query_string_gets_400(app: SSEMiddleware, publisher: Publisher) -> None:
    with Answer(app, "/events/chat?x=%ff") as answer:
        assert answer.code == 400
        assert b"not valid UTF-8" in answer.first
    assert publisher.subscription_count == 0


def test_a_long_last_event_id_is_taken_up_to_64_characters_per_channel() -> None:
    query = [("lastEventId", "q")]
    assert last_event_id("a" * 256, query) == "a" * 256
    assert last_event_id("a" * 257, query) is None  # one channel: 256 at most
    assert last_event_id("a" * 2048, query, channels=32) == "a" * 2048
    assert last_event_id("a" * 2049, query, channels=32) is None


def test_a_loss_notice_with_nothing_after_it_carries_the_id_to_resume_from(publisher: Publisher) -> None:
    app = SSEMiddleware(inner_app, Publisher(history=0))
    first = app.publisher.publish("e1")
    app.publisher.publish("e2")
    [notice] = read_events(app, "/events", 1, headers={"Last-Event-ID": first})
    assert notice.type == HISTORY_LOST_EVENT and notice.last_event_id
    events = read_events(
        app, "/events", 1, headers={"Last-Event-ID": notice.last_event_id}, publish=lambda p: p.publish("new")
    )
    assert [(e.type, e.data) for e in events] == [("message", "new")]  # no second alarm
    app.publisher.close()
