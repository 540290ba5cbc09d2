"""The WHATWG ``text/event-stream`` wire format: :class:`Event` and its encoder."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

__all__ = [
    "HEARTBEAT",
    "HISTORY_LOST_EVENT",
    "Event",
    "Serializer",
    "history_lost_chunk",
    "json_serializer",
    "split_lines",
]

Serializer = Callable[[Any], str]

# CRLF first, so that it counts as one line break, not two.
_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def split_lines(text: str) -> list[str]:
    """Split *text* on CRLF, CR and LF only, as an event-stream parser does.

    ``str.splitlines()`` would also split on U+2028, form feed and others,
    which would change the payload the browser receives.
    """
    return _LINE_BREAK.split(text)


def json_serializer(value: Any) -> str:
    """The default serializer: compact JSON."""
    return json.dumps(value, separators=(",", ":"))


def _check_field(name: str, value: str | None, *, forbid_nul: bool = False) -> None:
    if value is None:
        return
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str or None, not {type(value).__name__}: {value!r}")
    if "\r" in value or "\n" in value:
        raise ValueError(f"{name} must not contain CR or LF: {value!r}")
    if forbid_nul and "\0" in value:
        raise ValueError(f"{name} must not contain NUL: {value!r}")


def check_retry(retry: int | None) -> None:
    """Raise unless *retry* is ``None`` or a non-negative ``int`` (milliseconds)."""
    if retry is None:
        return
    if isinstance(retry, bool) or not isinstance(retry, int):
        raise TypeError(f"retry must be an int (milliseconds) or None, not {type(retry).__name__}: {retry!r}")
    if retry < 0:
        raise ValueError(f"retry must be a non-negative number of milliseconds: {retry!r}")


class Event:
    """One server-sent event.

    :param data: the payload. A ``str`` is sent as it is; any other value goes
        through the serializer given to :meth:`encode` (compact JSON by
        default). The text is split on CR, LF and CRLF into one ``data:``
        line per line, so no payload can inject a field or end an event early.
    :param event: the event type (``addEventListener`` name); no CR or LF.
    :param id: the event id the browser sends back as ``Last-Event-ID``; no
        CR, LF or NUL.
    :param retry: the reconnection delay in milliseconds (a non-negative int).
    :param comment: text sent as ``: <line>`` comment lines, which the browser
        ignores (heartbeats use them).

    An event whose only fields are ``retry`` and/or ``comment`` (with empty
    ``data``) is a *control* chunk: it carries no ``data:`` line, so the
    browser dispatches nothing. Any other event always carries at least one
    ``data:`` line, because a browser drops an event without one.
    """

    __slots__ = ("comment", "data", "event", "id", "retry")

    def __init__(
        self,
        data: Any = "",
        event: str | None = None,
        id: str | None = None,
        retry: int | None = None,
        comment: str | None = None,
    ) -> None:
        _check_field("event", event)
        _check_field("id", id, forbid_nul=True)
        check_retry(retry)
        if comment is not None and not isinstance(comment, str):
            raise TypeError(f"comment must be a str or None, not {type(comment).__name__}: {comment!r}")
        self.data = data
        self.event = event
        self.id = id
        self.retry = retry
        self.comment = comment

    def __repr__(self) -> str:
        fields = ", ".join(
            f"{name}={getattr(self, name)!r}" for name in self.__slots__ if getattr(self, name) not in (None, "")
        )
        return f"Event({fields})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Event):
            return NotImplemented
        return all(getattr(self, name) == getattr(other, name) for name in self.__slots__)

    __hash__ = None  # type: ignore[assignment]  # mutable data: not hashable

    @property
    def is_control(self) -> bool:
        """True when the event carries only ``retry`` and/or ``comment``."""
        return (
            self.event is None
            and self.id is None
            and (self.retry is not None or self.comment is not None)
            and isinstance(self.data, str)
            and self.data == ""
        )

    def encode(self, serializer: Serializer | None = None) -> bytes:
        """Return the UTF-8 bytes of this event, ending with a blank line."""
        lines: list[str] = []
        if self.comment is not None:
            lines.extend(": " + line for line in split_lines(self.comment))
        if self.event is not None:
            lines.append("event: " + self.event)
        if self.id is not None:
            lines.append("id: " + self.id)
        if self.retry is not None:
            lines.append(f"retry: {self.retry}")
        if not self.is_control:
            text = self.data if isinstance(self.data, str) else (serializer or json_serializer)(self.data)
            if not isinstance(text, str):
                raise TypeError(f"the serializer must return a str, not {type(text).__name__}: {text!r}")
            lines.extend("data: " + line for line in split_lines(text))
        lines.append("\n")
        return "\n".join(lines).encode("utf-8")


#: The comment an idle stream sends every ``heartbeat`` seconds.
HEARTBEAT = Event(comment="keep-alive").encode()

#: The event type a subscriber gets where events it should have had are gone
#: (its ``Last-Event-ID`` is older than the history, or this process could not
#: receive them). Its data is JSON: ``{"last_event_id": "<the id it had>",
#: "oldest_id": "<the oldest kept, or null>"}``.
HISTORY_LOST_EVENT = "history-lost"


def history_lost_chunk(last_event_id: str | None, oldest_id: str | None, resume_id: str | None = None) -> bytes:
    """The encoded :data:`HISTORY_LOST_EVENT`: events after *last_event_id* are gone, *oldest_id* is the oldest kept.

    With *resume_id* (when nothing follows it in a replay), the event carries
    that id: the position the stream goes on from, so that the browser's next
    reconnect resumes there and is not told of the same loss again.
    """
    lost = {"last_event_id": last_event_id, "oldest_id": oldest_id}
    return Event(json.dumps(lost), event=HISTORY_LOST_EVENT, id=resume_id).encode()
