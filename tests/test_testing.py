"""sse_wsgi.testing: the WHATWG parser and the in-process reader users test their apps with."""

from __future__ import annotations

import pytest

from sse_wsgi import SSEMiddleware
from sse_wsgi.testing import EventStreamParser, ReceivedEvent, parse_events, read_events


@pytest.mark.parametrize(
    ("stream", "expected"),
    [
        pytest.param(b"data: a\n\n", [("message", "a", "")], id="simple"),
        pytest.param(b"data:a\n\n", [("message", "a", "")], id="no space after colon"),
        pytest.param(b"data:  a\n\n", [("message", " a", "")], id="only one space stripped"),
        pytest.param(b"data: a\r\ndata: b\r\r", [("message", "a\nb", "")], id="crlf and cr line ends"),
        pytest.param(b"event: e\n\n", [], id="no data, no dispatch"),
        pytest.param(b"data\n\n", [("message", "", "")], id="field without colon"),
        pytest.param(b": comment\ndata: a\n\n", [("message", "a", "")], id="comment ignored"),
        pytest.param(b"id: 1\ndata: a\n\ndata: b\n\n", [("message", "a", "1"), ("message", "b", "1")],
                     id="id persists"),
        pytest.param(b"id: 1\ndata: a\n\nid\ndata: b\n\n", [("message", "a", "1"), ("message", "b", "")],
                     id="empty id clears"),
        pytest.param(b"id: 1\ndata: a\n\nid: 2\x00\ndata: b\n\n", [("message", "a", "1"), ("message", "b", "1")],
                     id="id with nul ignored"),
        pytest.param(b"\xef\xbb\xbfdata: bom\n\n", [("message", "bom", "")], id="leading bom dropped"),
        pytest.param(b"data: \xff\n\n", [("message", "\ufffd", "")], id="bad utf-8 replaced"),
        pytest.param(b"data: a\n", [], id="truncated event discarded"),
        pytest.param(b"event: x\ndata: a\n\ndata: b\n\n", [("x", "a", ""), ("message", "b", "")],
                     id="type resets after dispatch"),
        pytest.param(b"unknown: z\ndata: a\n\n", [("message", "a", "")], id="unknown field ignored"),
    ],
)  # fmt: skip
def test_parser_follows_whatwg(stream: bytes, expected: list[tuple[str, str, str]]) -> None:
    assert [(e.type, e.data, e.last_event_id) for e in parse_events(stream)] == expected


def test_parser_is_incremental_byte_by_byte() -> None:
    stream = "event: e\r\ndata: ünï\r\nid: 9\r\n\r\n".encode()
    parser = EventStreamParser()
    events = [event for byte in stream for event in parser.feed(bytes([byte]))]
    assert events == [ReceivedEvent("e", "ünï", "9")]


def test_parser_retry_only_all_digits() -> None:
    parser = EventStreamParser()
    parser.feed(b"retry: 1500\n\nretry: 15x\n\nretry: -1\n\n")
    assert parser.retry == 1500


def test_parser_collects_comments() -> None:
    parser = EventStreamParser()
    parser.feed(b": keep-alive\n\n:x\n\n")
    assert parser.comments == ["keep-alive", "x"]


def test_read_events_reads_from_an_app_without_network() -> None:
    app = SSEMiddleware(lambda environ, start_response: [])
    events = read_events(app, "/events/room", 2, publish=lambda p: [p.publish("a", "room"), p.publish("b", "room")])
    assert [e.data for e in events] == ["a", "b"]
    assert app.publisher.subscription_count == 0  # the body was closed
    app.publisher.close()


def test_read_events_times_out_when_too_few_arrive() -> None:
    app = SSEMiddleware(lambda environ, start_response: [])
    with pytest.raises(TimeoutError, match="0 of 1 events"):
        read_events(app, "/events", 1, timeout=0.3)
    assert app.publisher.subscription_count == 0
    app.publisher.close()


def test_read_events_fails_on_a_non_stream_answer() -> None:
    app = SSEMiddleware(lambda environ, start_response: [])
    with pytest.raises(AssertionError, match="400"):
        read_events(app, "/events?channel=", 1)
    app.publisher.close()
