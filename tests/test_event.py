"""The wire format: Event.encode() against exact bytes, bad fields, and third-party parsers."""

from __future__ import annotations

import json

import pytest
import sseclient
from httpx_sse._decoders import SSEDecoder, SSELineDecoder
from hypothesis import given, settings
from hypothesis import strategies as st

from sse_wsgi import Event
from sse_wsgi.event import json_serializer, split_lines
from sse_wsgi.testing import parse_events


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        pytest.param(Event("hello"), b"data: hello\n\n", id="plain data"),
        pytest.param(Event(""), b"data: \n\n", id="empty data still sends a data line"),
        pytest.param(Event("a\nb"), b"data: a\ndata: b\n\n", id="lf in data"),
        pytest.param(Event("a\r\nb"), b"data: a\ndata: b\n\n", id="crlf in data"),
        pytest.param(Event("a\rb"), b"data: a\ndata: b\n\n", id="bare cr in data"),
        pytest.param(Event("a\n"), b"data: a\ndata: \n\n", id="trailing lf kept as an empty line"),
        pytest.param(Event("a\n\nb"), b"data: a\ndata: \ndata: b\n\n", id="blank line inside data"),
        pytest.param(Event("x\ndata: y\n\nevent: z"), b"data: x\ndata: data: y\ndata: \ndata: event: z\n\n",
                     id="injection attempt stays data"),
        pytest.param(Event("a\u2028b\x0cc\x85d"), "data: a\u2028b\x0cc\x85d\n\n".encode(),
                     id="u2028 ff nel are not line breaks"),
        pytest.param(Event("ünï ✓"), "data: ünï ✓\n\n".encode(), id="utf-8"),
        pytest.param(Event({"a": [1, 2]}), b'data: {"a":[1,2]}\n\n', id="dict as compact json"),
        pytest.param(Event(42), b"data: 42\n\n", id="int as json"),
        pytest.param(Event(None), b"data: null\n\n", id="none as json null"),
        pytest.param(Event("x", event="update"), b"event: update\ndata: x\n\n", id="named event"),
        pytest.param(Event("x", id="0"), b"id: 0\ndata: x\n\n", id="id zero is sent"),
        pytest.param(Event("x", id=""), b"id: \ndata: x\n\n", id="empty id is sent"),
        pytest.param(Event("x", retry=0), b"retry: 0\ndata: x\n\n", id="retry zero is sent"),
        pytest.param(Event(retry=3000), b"retry: 3000\n\n", id="retry alone is a control chunk"),
        pytest.param(Event(comment="keep-alive"), b": keep-alive\n\n", id="comment alone"),
        pytest.param(Event(comment="a\nb"), b": a\n: b\n\n", id="multi-line comment"),
        pytest.param(Event("d", event="e", id="7", retry=10, comment="c"),
                     b": c\nevent: e\nid: 7\nretry: 10\ndata: d\n\n", id="all fields"),
    ],
)  # fmt: skip
def test_encode_gives_exact_bytes(event: Event, expected: bytes) -> None:
    assert event.encode() == expected


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        pytest.param({"event": "a\nb"}, ValueError, "event must not contain CR or LF", id="lf in event"),
        pytest.param({"event": "a\rb"}, ValueError, "event must not contain CR or LF", id="cr in event"),
        pytest.param({"id": "1\n"}, ValueError, "id must not contain CR or LF", id="lf in id"),
        pytest.param({"id": "1\r"}, ValueError, "id must not contain CR or LF", id="cr in id"),
        pytest.param({"id": "1\0"}, ValueError, "id must not contain NUL", id="nul in id"),
        pytest.param({"retry": -1}, ValueError, "non-negative", id="negative retry"),
        pytest.param({"retry": 1.5}, TypeError, "retry must be an int", id="float retry"),
        pytest.param({"retry": "10"}, TypeError, "retry must be an int", id="str retry"),
        pytest.param({"retry": True}, TypeError, "retry must be an int", id="bool retry"),
        pytest.param({"event": 5}, TypeError, "event must be a str", id="int event"),
        pytest.param({"id": 5}, TypeError, "id must be a str", id="int id"),
        pytest.param({"comment": b"x"}, TypeError, "comment must be a str", id="bytes comment"),
    ],
)
def test_bad_fields_are_rejected_not_cleaned(kwargs: dict, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        Event("data", **kwargs)


def test_custom_serializer_is_used_for_non_str_data() -> None:
    assert Event({"b": 1}).encode(serializer=lambda v: "custom") == b"data: custom\n\n"
    assert Event("text").encode(serializer=lambda v: "custom") == b"data: text\n\n"


def test_serializer_returning_non_str_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="serializer must return a str"):
        Event({"b": 1}).encode(serializer=lambda v: b"bytes")  # type: ignore[arg-type,return-value]


def test_default_serializer_is_compact_json() -> None:
    assert json_serializer({"a": [1, {"b": None}]}) == '{"a":[1,{"b":null}]}'


def test_split_lines_only_splits_on_cr_lf_crlf() -> None:
    assert split_lines("a\r\nb\rc\nd\u2028e\x0bf") == ["a", "b", "c", "d\u2028e\x0bf"]


def test_events_compare_by_fields() -> None:
    assert Event("a", event="b") == Event("a", event="b")
    assert Event("a") != Event("a", id="1")


# -- round trips through independent parsers -----------------------------------------------------

# Any text: including CR, LF, U+2028, NUL, form feed, emoji. Lone surrogates cannot be UTF-8.
payloads = st.text(st.characters(exclude_categories=("Cs",)), max_size=200)
field_text = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\r\n\0"), max_size=40)


def _httpx_sse_events(raw: bytes) -> list:
    lines = SSELineDecoder().decode(raw.decode("utf-8"))
    decoder = SSEDecoder()
    return [sse for line in lines if (sse := decoder.decode(line)) is not None]


def _sseclient_events(raw: bytes) -> list:
    return list(sseclient.SSEClient(iter([raw])).events())


@settings(max_examples=300, deadline=None)
@given(data=payloads, event=st.none() | field_text.filter(bool), event_id=st.none() | field_text)
def test_httpx_sse_reads_back_what_was_encoded(data: str, event: str | None, event_id: str | None) -> None:
    [decoded] = _httpx_sse_events(Event(data, event=event, id=event_id).encode())
    assert decoded.data == "\n".join(split_lines(data))
    assert decoded.event == (event or "message")
    if event_id is not None:
        assert decoded.id == event_id


@settings(max_examples=300, deadline=None)
@given(data=payloads.filter(lambda s: "\0" not in s), event=st.none() | field_text.filter(bool))
def test_sseclient_reads_back_what_was_encoded(data: str, event: str | None) -> None:
    [decoded] = _sseclient_events(Event(data, event=event).encode())
    assert decoded.data == "\n".join(split_lines(data))
    assert decoded.event == (event or "message")


@settings(max_examples=300, deadline=None)
@given(items=st.lists(st.tuples(payloads, st.none() | field_text.filter(bool)), min_size=1, max_size=5))
def test_testing_parser_matches_httpx_sse_on_streams(items: list[tuple[str, str | None]]) -> None:
    raw = b"".join(Event(data, event=event).encode() for data, event in items)
    ours = [(e.type, e.data) for e in parse_events(raw)]
    theirs = [(e.event, e.data) for e in _httpx_sse_events(raw)]
    assert ours == theirs == [(event or "message", "\n".join(split_lines(data))) for data, event in items]


json_values = st.recursive(
    st.none() | st.integers() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=10,
)


@settings(max_examples=200, deadline=None)
@given(value=json_values)
def test_json_data_round_trips(value: object) -> None:
    [decoded] = _httpx_sse_events(Event(value).encode())
    if isinstance(value, str):
        assert decoded.data == "\n".join(split_lines(value))  # a str is sent as it is
    else:
        assert json.loads(decoded.data) == value
