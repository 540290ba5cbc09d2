"""HTTP details shared by the middleware and the response classes."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl

from .event import Event

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse

__all__ = [
    "DEFAULT_RETRY_MS",
    "HOP_BY_HOP",
    "OPENING_CHUNK",
    "STREAM_HEADERS",
    "UNAVAILABLE_RETRY_MS",
    "BadRequest",
    "check_channel_name",
    "decode_wsgi_text",
    "last_event_id",
    "opening_event",
    "query_params",
    "retry_hint",
    "text_answer",
]

#: Headers of every event stream (no hop-by-hop header: WSGI forbids them).
STREAM_HEADERS: list[tuple[str, str]] = [
    ("Content-Type", "text/event-stream; charset=utf-8"),
    ("Cache-Control", "no-cache"),
    ("X-Accel-Buffering", "no"),  # nginx: do not buffer this response
]

#: Header names a WSGI application must never send (PEP 3333).
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)

MAX_CHANNEL_NAME = 200  # characters
# Characters of a Last-Event-ID per channel of the request, and at least, beyond which it is ignored as
# malformed: the ids the brokers give out name a position per channel (on Redis up to 36 characters each,
# 570 at 16 channels), and a caller's own id may be up to 256 characters.
MAX_LAST_EVENT_ID_PER_CHANNEL = 64
MAX_LAST_EVENT_ID = 256
MAX_QUERY_FIELDS = 1000


#: The reconnection delay (ms) every stream starts with unless one is configured.
#: A browser keeps the last ``retry:`` it saw for the life of its EventSource,
#: so each stream sets it again: a long hint sent by load shedding or a
#: draining process does not stick to later streams.
DEFAULT_RETRY_MS = 3000


def opening_event(retry: int | None = None) -> Event:
    """The first chunk of a stream: the client sees the stream open at once, with its ``retry:``."""
    return Event(comment="stream open", retry=DEFAULT_RETRY_MS if retry is None else retry)


OPENING_CHUNK = opening_event().encode()


#: A stream that the broker cannot set up now (Redis unreachable for a channel
#: this process does not follow yet) is told to come back in a few seconds (ms).
UNAVAILABLE_RETRY_MS = (1_000, 5_000)


def retry_hint(start_response: StartResponse, headers: list[tuple[str, str]], span: tuple[int, int]) -> list[bytes]:
    """A stream that carries only a ``retry:`` hint, random within *span* milliseconds, then ends.

    The browser comes back after it, where a non-200 answer would stop it for good.
    """
    start_response("200 OK", headers)
    return [Event(retry=random.randint(*span)).encode()]


def text_answer(
    start_response: StartResponse, status: str, body: str, extra: Sequence[tuple[str, str]] = ()
) -> list[bytes]:
    """Answer with a short ``text/plain`` *body*; *extra* headers are added."""
    data = body.encode("utf-8")
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(data))), *extra])
    return [data]


class OpenedStream:
    """A WSGI body that sends :data:`OPENING_CHUNK` first, then *chunks*; closing it closes *chunks*.

    A WSGI server sends the headers only with the first body chunk, so this
    makes the client see the stream open at once.
    """

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._opened = False

    def __iter__(self) -> OpenedStream:
        return self

    def __next__(self) -> bytes:
        if not self._opened:
            self._opened = True
            return OPENING_CHUNK
        return next(self._chunks)

    def close(self) -> None:
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()


class BadRequest(ValueError):
    """A request the client must fix; the message is the short body of the 400."""


def decode_wsgi_text(value: str) -> str:
    """Decode a WSGI native string (bytes as latin-1) as UTF-8; raise :class:`BadRequest` if not UTF-8."""
    try:
        return value.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        raise BadRequest("the request is not valid UTF-8") from None


def query_params(query_string: str) -> list[tuple[str, str]]:
    """Parse a raw ``QUERY_STRING`` strictly: its bytes and its %-escapes must be UTF-8."""
    text = decode_wsgi_text(query_string)
    try:
        return parse_qsl(
            text, keep_blank_values=True, encoding="utf-8", errors="strict", max_num_fields=MAX_QUERY_FIELDS
        )
    except UnicodeDecodeError:
        raise BadRequest("the query string is not valid UTF-8") from None
    except ValueError:
        raise BadRequest("too many query parameters") from None


def check_channel_name(name: str) -> str:
    """Return *name* if it is a valid channel name; raise :class:`BadRequest` otherwise.

    U+FFFD is refused too: some servers (werkzeug's) put it in place of
    bytes that are not UTF-8.
    """
    if not name:
        raise BadRequest("a channel name must not be empty")
    if len(name) > MAX_CHANNEL_NAME:
        raise BadRequest(f"a channel name must be at most {MAX_CHANNEL_NAME} characters")
    if "\ufffd" in name:
        raise BadRequest("a channel name must be valid UTF-8")
    return name


def last_event_id(header: str | None, query: list[tuple[str, str]], channels: int = 1) -> str | None:
    """The id to resume after: the ``Last-Event-ID`` header, else a ``lastEventId`` query parameter.

    A value that is not UTF-8, longer than 64 characters per channel of the
    request (and 256 at least), or holds CR, LF or NUL is ignored.
    """
    value: str | None = None
    if header:
        try:
            value = decode_wsgi_text(header)
        except BadRequest:
            value = None
    if value is None:
        value = next((v for k, v in query if k == "lastEventId" and v), None)
    longest = max(MAX_LAST_EVENT_ID, MAX_LAST_EVENT_ID_PER_CHANNEL * channels)
    if value is None or len(value) > longest or any(c in value for c in "\r\n\0"):
        return None
    return value
