"""Tools for testing apps that use sse_wsgi: a WHATWG-exact stream parser and an in-process reader.

>>> from sse_wsgi.testing import read_events
>>> events = read_events(app, "/events?channel=chat", count=2, publish=lambda p: p.publish("hi", "chat"))
"""

from __future__ import annotations

import io
import re
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_to_bytes, urlsplit

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

    from .publisher import Publisher

__all__ = ["EventStreamParser", "ReceivedEvent", "parse_events", "read_events"]

_LINE = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True)
class ReceivedEvent:
    """An event as a browser's ``EventSource`` dispatches it.

    :ivar type: the event type (``"message"`` when none was given).
    :ivar data: the data, lines joined with ``"\\n"``.
    :ivar last_event_id: the ``lastEventId`` the browser reports with it.
    """

    type: str
    data: str
    last_event_id: str


class EventStreamParser:
    """Turn ``text/event-stream`` bytes into events, following WHATWG HTML §9.2.6 to the letter.

    Feed it bytes in chunks of any size with :meth:`feed`; it returns the
    events completed so far. ``retry`` holds the last valid reconnection
    time, ``comments`` every comment line seen.
    """

    def __init__(self) -> None:
        self._decoder = _Utf8StreamDecoder()
        self._buffer = ""
        self._data: list[str] = []
        self._type = ""
        self._id_buffer = ""
        self.last_event_id = ""
        self.retry: int | None = None
        self.comments: list[str] = []

    def feed(self, chunk: bytes) -> list[ReceivedEvent]:
        """Parse *chunk*; return the events it completed."""
        buffer = self._buffer + self._decoder.decode(chunk)
        events: list[ReceivedEvent] = []
        position = 0
        for match in _LINE.finditer(buffer):
            # A CR at the very end may be the first half of a CRLF still in flight.
            if match.group() == "\r" and match.end() == len(buffer):
                break
            event = self._process_line(buffer[position : match.start()])
            position = match.end()
            if event is not None:
                events.append(event)
        self._buffer = buffer[position:]
        return events

    def end(self) -> list[ReceivedEvent]:
        """Mark the end of the stream: a CR held back as a possible CRLF half counts as a line break.

        An event not followed by a blank line is still discarded, as a browser does.
        """
        if not self._buffer.endswith("\r"):
            return []
        return self.feed(b"\n")

    def _process_line(self, line: str) -> ReceivedEvent | None:
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            self.comments.append(line[1:].removeprefix(" "))
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._type = value
        elif name == "data":
            self._data.append(value)
        elif name == "id":
            if "\0" not in value:
                self._id_buffer = value
        elif name == "retry":
            if value and all("0" <= c <= "9" for c in value):
                self.retry = int(value)
        return None

    def _dispatch(self) -> ReceivedEvent | None:
        self.last_event_id = self._id_buffer
        if not self._data:
            self._type = ""
            return None
        event = ReceivedEvent(self._type or "message", "\n".join(self._data), self.last_event_id)
        self._data = []
        self._type = ""
        return event


class _Utf8StreamDecoder:
    """UTF-8 decoding with U+FFFD for bad bytes and a leading BOM dropped, as the spec says."""

    def __init__(self) -> None:
        import codecs

        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._first = True

    def decode(self, chunk: bytes) -> str:
        text = self._decoder.decode(chunk)
        if self._first and text:
            self._first = False
            text = text.removeprefix("\ufeff")
        return text


def parse_events(data: bytes | Iterable[bytes]) -> list[ReceivedEvent]:
    """Parse a whole stream (bytes or an iterable of chunks) into the events a browser would dispatch."""
    parser = EventStreamParser()
    chunks = [data] if isinstance(data, bytes) else data
    return [event for chunk in chunks for event in parser.feed(chunk)] + parser.end()


def read_events(
    app: WSGIApplication,
    url: str = "/events",
    count: int = 1,
    *,
    publish: Callable[[Publisher], Any] | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 5.0,
) -> list[ReceivedEvent]:
    """Open *url* on the WSGI *app* in this process and return its first *count* events.

    No network is used: the app is called as a server would call it.
    *publish*, if given, is called with ``environ["sse.publisher"]`` once the
    stream is open (the subscriber is registered by then), so it can publish
    the events to read. Raises ``AssertionError`` if the answer is not a
    ``200`` event stream, and ``TimeoutError`` when fewer than *count*
    events arrive within *timeout* seconds.
    """
    environ = _environ(url, headers or {})
    status: list[str] = []
    response_headers: list[tuple[str, str]] = []

    def start_response(status_line: str, header_list: list[tuple[str, str]], exc_info: Any = None) -> Any:
        status.append(status_line)
        response_headers.extend(header_list)
        return lambda data: None

    body = app(environ, start_response)
    try:
        chunks = iter(body)
        first = next(chunks, b"")  # the server sends the headers with the first chunk
        content_type = dict((k.lower(), v) for k, v in response_headers).get("content-type", "")
        if not status or not status[0].startswith("200") or not content_type.startswith("text/event-stream"):
            raise AssertionError(f"{url} answered {status[0] if status else 'nothing'} ({content_type}): {first!r}")
        if publish is not None:
            publish(environ["sse.publisher"])
        return _collect(chunks, first, count, timeout)
    finally:
        close = getattr(body, "close", None)
        if close is not None:
            close()


def _collect(chunks: Iterator[bytes], first: bytes, count: int, timeout: float) -> list[ReceivedEvent]:
    parser = EventStreamParser()
    events = parser.feed(first)
    done = threading.Event()

    def pump() -> None:
        for chunk in chunks:
            events.extend(parser.feed(chunk))
            if len(events) >= count:
                break
        done.set()

    if len(events) < count:
        reader = threading.Thread(target=pump, name="sse-wsgi-testing-reader", daemon=True)
        reader.start()
        done.wait(timeout)
        if len(events) < count:
            raise TimeoutError(f"{len(events)} of {count} events arrived within {timeout} s")
    return events[:count]


def _environ(url: str, headers: dict[str, str]) -> dict[str, Any]:
    parts = urlsplit(url)
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": unquote_to_bytes(parts.path).decode("latin-1"),
        "QUERY_STRING": parts.query,
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_HOST": "localhost",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    for name, value in headers.items():
        environ["HTTP_" + name.upper().replace("-", "_")] = value
    return environ
