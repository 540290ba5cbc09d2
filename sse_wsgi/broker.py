"""What a :class:`~sse_wsgi.Publisher` needs from a broker, and the records it exchanges.

A broker assigns event ids, keeps the history used for ``Last-Event-ID``
resumption and carries published events to every process that shares it.
The publisher does the local fan-out: it hands the broker a
:class:`Message`, tells it which channels have local subscribers
(:meth:`Broker.watch`, :meth:`Broker.unwatch`), and the broker calls the
publisher's ``deliver`` callback with one :class:`Record` per event and
stream, in each stream's order, from whichever thread it receives them on.

A broker orders events either in one stream for all channels (the
in-memory broker: ``Record.stream`` is ``None``) or in one stream per
channel (Redis: an event published to several channels is a record in
each of their streams, and ``Record.stream`` names the one it came on).
Each subscription holds a :class:`Cursor` made by the broker: it says
which records are new to that subscriber, sends an event that reached it
on several streams once, and gives the id that the subscriber resumes from.

When a cross-process broker finds that events reached the shared store
but will never reach this process (its receiver was away longer than the
history covers, the store lost data), it calls the publisher's ``lost``
callback instead of skipping them silently.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from .event import Event, history_lost_chunk

#: Seconds a set of several channels held by a GRIP proxy stays registered after
#: its last hold or recovery request (the proxy asks again at least every minute).
HELD_SET_TTL = 180.0
#: Seconds a broker remembers a publish's idempotency key: publishing again with it within that time
#: stores nothing and gives the first publish's id.
IDEMPOTENCY_TTL = 120.0
#: The most sets of several channels held by GRIP proxies that one channel is part of: a publish to the
#: channel makes one proxy item for each, so this bounds what one publish costs the proxy and the broker.
MAX_HELD_SETS = 100

__all__ = [
    "HELD_SET_TTL",
    "IDEMPOTENCY_TTL",
    "MAX_HELD_SETS",
    "Broker",
    "Cursor",
    "Deliver",
    "GripBroker",
    "Hold",
    "Lost",
    "Message",
    "ProxyItem",
    "Record",
    "Replay",
]


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
    #: The caller's key that makes a repeated publish a no-op (``None``: the broker makes one if it needs one).
    idempotency_key: str | None = None


@dataclass(frozen=True, slots=True)
class Record:
    """A published event with its place in a stream of the broker.

    :param seq: its position in its stream (an ``int`` for the in-memory
        broker, a position object for Redis); the subscription's cursor
        compares them.
    :param id: the event's own id: the caller's id, or the broker's.
    :param chunk: the event encoded with :attr:`id`, computed once and
        shared by every subscriber; ``None`` when ``data`` is callable.
    :param stream: the channel whose stream this record is in, or ``None``
        when the broker orders all channels in one stream.
    :param custom: True when :attr:`id` is the caller's own.
    """

    seq: Any
    id: str
    channels: tuple[str, ...]
    data: Any
    event: str | None = None
    retry: int | None = None
    chunk: bytes | None = field(default=None, compare=False)
    stream: str | None = None
    custom: bool = False

    @classmethod
    def from_message(cls, seq: Any, wire_id: str, message: Message, stream: str | None = None) -> Record:
        """Build the record of *message*, encoding it once unless its data is callable."""
        chunk = None
        if not callable(message.data):
            chunk = Event(message.data, event=message.event, id=wire_id, retry=message.retry).encode()
        return cls(
            seq, wire_id, message.channels, message.data, message.event, message.retry, chunk, stream,
            message.id is not None,
        )  # fmt: skip

    def encode_with_id(self, wire_id: str) -> bytes:
        """The event encoded with *wire_id* (the shared chunk when that is its own id)."""
        if wire_id == self.id and self.chunk is not None:
            return self.chunk
        return Event(self.data, event=self.event, id=wire_id, retry=self.retry).encode()


class Cursor(Protocol):
    """Where one subscriber is in the broker's streams.

    Used by one thread at a time: the one that reads the subscription.
    """

    def admit(self, record: Record) -> str | None:
        """Move past *record*; return the id to send it with, or ``None`` when this subscriber skips it."""

    def reset(self, stream: str | None) -> None:
        """Events of *stream* (``None``: every stream) were lost: accept what comes next on it."""


@dataclass(frozen=True)
class Replay:
    """The answer to a resumption request.

    :param items: the records to send, in order, each with the id to send it with.
    :param cursor: the subscriber's cursor, past the replayed records and
        everything else the history held when it was read.
    :param lost: ``True`` when some events after the given id are no longer
        in the history (evicted, published before a restart, lost by the store).
    :param oldest_id: the id of the oldest record kept for these channels, if any.
    :param resume_id: the id naming where the cursor is once the replay is
        sent: what the subscriber resumes from when nothing follows.
    """

    items: list[tuple[Record, str]]
    cursor: Cursor
    lost: bool = False
    oldest_id: str | None = None
    resume_id: str | None = None

    @property
    def records(self) -> list[Record]:
        """The replayed records, in order."""
        return [record for record, _ in self.items]

    def chunks(
        self, after: str | None, encode: Callable[[Record, str], bytes | None] | None = None
    ) -> tuple[list[bytes], str | None]:
        """The replay as stream chunks, and the id of the last event in them (else *after*).

        The loss event comes first where it applies (with :attr:`resume_id`
        when nothing follows it, so that it is not repeated at the next
        reconnect); each record is encoded by *encode* (per-subscriber data;
        ``None`` from it: that subscriber skips the record), else with its id.
        """
        chunks = []
        if self.lost:
            chunks.append(history_lost_chunk(after, self.oldest_id, None if self.items else self.resume_id))
        last_id = after
        for record, wire_id in self.items:
            chunk = record.encode_with_id(wire_id) if encode is None else encode(record, wire_id)
            if chunk is not None:
                chunks.append(chunk)
                last_id = wire_id
        return chunks, last_id


@dataclass(frozen=True)
class ProxyItem:
    """What a GRIP proxy gets of a published event for the connections it holds on one set of channels.

    :param channels: the set of channels those connections follow (sorted).
    :param id: the id of the event for them: what they resume from.
    :param prev_id: the id of the event before it for them (or the set's
        placeholder when there was none), fixed in the same step as
        :attr:`id`, so that the proxy can see a gap.
    :param record: the event.
    """

    channels: tuple[str, ...]
    id: str
    prev_id: str
    record: Record


@dataclass(frozen=True)
class Hold:
    """What a stream held by a GRIP proxy starts with, from one read of the history.

    :param replay: the replay after the client's id (``None``: no id, or an id that names nothing).
    :param id: the id the held set of channels is at once the body is sent:
        that of the last event it carries, or the set's current one.
    """

    replay: Replay | None
    id: str


Deliver = Callable[[Record], None]
#: Called with the stream whose events were lost (``None``: possibly any) and the
#: id of the oldest event still kept there (``None`` if unknown), when events
#: published since the last delivered record of that stream never reach this process.
Lost = Callable[[str | None, str | None], None]


@runtime_checkable
class Broker(Protocol):
    """The interface a broker offers to :class:`~sse_wsgi.Publisher` (checked with ``isinstance``)."""

    #: True when events cross processes: callable data is refused then.
    cross_process: bool
    #: Events kept per channel (at least): a subscriber is cut off before it
    #: falls further behind than the history covers.
    history: int

    def start(self, deliver: Deliver, lost: Lost) -> None:
        """Make sure every record of a watched channel published from now on reaches *deliver* in this process.

        Called before every subscription registers, so it must be cheap once
        started; a broker starts its threads and connections here or later,
        in the process that serves the subscribers (not in a server's master
        process that forks its workers).
        """

    def watch(self, channels: Sequence[str]) -> None:
        """A local subscriber wants *channels*: deliver their records from now on (counted per call).

        Returns once a record published from now on is sure to arrive;
        raises :class:`~sse_wsgi.errors.BrokerUnavailable` when that cannot
        be made sure (the caller then calls :meth:`unwatch`).
        """

    def unwatch(self, channels: Sequence[str]) -> None:
        """Undo one :meth:`watch` of *channels*; never blocks for long."""

    def cursor(self, channels: Sequence[str]) -> Cursor:
        """A cursor for a new subscriber of *channels* that starts at what this process has delivered."""

    def publish(self, message: Message) -> str:
        """Store and distribute *message*; return its wire id."""

    def replay(self, channels: Sequence[str], last_event_id: str) -> Replay | None:
        """Records on *channels* after *last_event_id*; ``None`` when that id is malformed."""

    def stats(self) -> dict[str, Any]:
        """Plain-dict figures about the history and the connection."""

    def close(self) -> None:
        """Stop delivering and release resources."""


@runtime_checkable
class GripBroker(Broker, Protocol):
    """A broker that can also feed GRIP proxies (``Publisher(grip=...)`` needs one)."""

    def publish_for_proxies(self, message: Message) -> tuple[str, list[ProxyItem]]:
        """Publish *message* as :meth:`publish` does; also what each set of channels held by a proxy gets.

        One item for each of the message's channels, and one for each set of
        several channels registered by :meth:`hold` (within the last
        :data:`HELD_SET_TTL` seconds) that it reaches, so that a connection
        held on several channels gets the event once.
        """

    def hold(self, channels: Sequence[str], last_event_id: str | None) -> Hold | None:
        """Register *channels* as a set held by a proxy; the replay after *last_event_id* and the set's id.

        ``None`` when a set of several channels cannot be registered: one of
        them is already in :data:`MAX_HELD_SETS` other sets (so that a
        publish costs the proxy a bounded number of items); the app then
        serves that stream itself.
        """
