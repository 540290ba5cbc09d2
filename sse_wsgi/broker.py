"""What a :class:`~sse_wsgi.Publisher` needs from a broker, and the records it exchanges.

A broker assigns event ids, keeps the history used for ``Last-Event-ID``
resumption and carries published events to every process that shares it.
The publisher does the local fan-out: it hands the broker a
:class:`Message`, and the broker calls the publisher's ``deliver`` callback
with one :class:`Record` per event, in id order, from whichever thread it
receives them on. When a cross-process broker finds that events reached
the shared store but will never reach this process (its reader was away
longer than the history covers, the store lost data), it calls the
publisher's ``lost`` callback instead of skipping them silently.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from .event import Event

__all__ = ["Broker", "Deliver", "Lost", "Message", "Record", "Replay"]


@dataclass(frozen=True)
class Message:
    """An event as published, before the broker gives it an id.

    ``data`` is a ``str`` (already serialized) or, for a broker that is not
    cross-process, a callable of the subscriber's properties.
    """

    channels: tuple[str, ...]
    data: Any
    event: str | None = None
    id: str | None = None
    retry: int | None = None


@dataclass(frozen=True, slots=True)
class Record:
    """A published event with its place in the broker's order.

    :param seq: a key that orders records as the broker does (an ``int`` for
        the in-memory broker, a ``(ms, n)`` tuple for Redis streams); the
        publisher uses it to skip records it already sent.
    :param id: the id sent on the wire (the caller's own id, or ``str`` of
        the broker's sequence).
    :param chunk: the encoded event, computed once and shared by every
        subscriber; ``None`` when ``data`` is callable.
    """

    seq: Any
    id: str
    channels: tuple[str, ...]
    data: Any
    event: str | None = None
    retry: int | None = None
    chunk: bytes | None = field(default=None, compare=False)

    @classmethod
    def from_message(cls, seq: Any, wire_id: str, message: Message) -> Record:
        """Build the record of *message*, encoding it once unless its data is callable."""
        chunk = None
        if not callable(message.data):
            chunk = Event(message.data, event=message.event, id=wire_id, retry=message.retry).encode()
        return cls(seq, wire_id, message.channels, message.data, message.event, message.retry, chunk)


@dataclass(frozen=True)
class Replay:
    """The answer to a resumption request.

    :param records: the records after the given id on the requested
        channels, in order.
    :param lost: ``True`` when some events after the given id are no longer
        in the history (evicted, or published before a restart).
    :param oldest_id: the wire id of the oldest record kept for these
        channels, if any.
    :param after_seq: the ``seq`` of the given id: the client has every
        record up to it, so a live record that arrives late with a ``seq``
        up to it must not be sent again (a cross-process broker delivers
        asynchronously).
    """

    records: list[Record]
    lost: bool = False
    oldest_id: str | None = None
    after_seq: Any = None


Deliver = Callable[[Record], None]
#: Called with the wire id of the oldest event still kept (``None`` if unknown)
#: when events published since the last delivered record never reach this process.
Lost = Callable[[str | None], None]


class Broker(Protocol):
    """The interface a broker offers to :class:`~sse_wsgi.Publisher`."""

    #: True when events cross processes: callable data is refused then.
    cross_process: bool
    #: Events kept per channel (at least): a subscriber is cut off before it
    #: falls further behind than the history covers.
    history: int

    def start(self, deliver: Deliver, lost: Lost) -> None:
        """Make sure every record published from now on reaches *deliver* in this process.

        Called before every subscription registers, so it must be cheap once
        started; a broker starts its threads and connections here, in the
        process that serves the subscribers (not in a server's master
        process that forks its workers).
        """

    def publish(self, message: Message) -> str:
        """Store and distribute *message*; return its wire id."""

    def replay(self, channels: Iterable[str], last_event_id: str) -> Replay | None:
        """Records on *channels* after *last_event_id*; ``None`` when that id is malformed."""

    def stats(self) -> dict[str, Any]:
        """Plain-dict figures about the history and the connection."""

    def close(self) -> None:
        """Stop delivering and release resources."""
