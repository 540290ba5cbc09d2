"""The Redis broker: per-channel history, routed delivery, one Redis server or a Redis Cluster."""

from __future__ import annotations

import heapq
import logging
import secrets
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis

from .._process import PerProcess
from .._validate import check_count, check_seconds
from ..broker import HELD_SET_TTL, IDEMPOTENCY_TTL, Deliver, Hold, Lost, Message, ProxyItem, Record, Replay
from ..errors import BrokerUnavailable, PublishOutcomeUnknown
from .catchup import UNKNOWN
from .history import REDIS_ERRORS, History, Written
from .keys import check_prefix
from .positions import ChannelCursor, Position, ids_of, parse_id, parse_tokens, token, wire_id
from .receiver import DEFAULT_HEALTH_CHECK, Receiver
from .topology import Topology, connect

__all__ = ["DEFAULT_TTL", "RedisBroker"]

logger = logging.getLogger(__name__)

SOCKET_TIMEOUT = 5.0  # seconds, for every command and connection
DEFAULT_TTL = 24 * 3600.0  # seconds a channel keeps its history after its last event


def _safe_url(url: str) -> str:
    """*url* with any password replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + netloc))


def _check_options(history: int, ttl: float, health_check: float, idempotency_ttl: float) -> None:
    check_count("history", history)
    check_seconds("ttl", ttl)
    check_seconds("health_check", health_check)
    check_seconds("idempotency_ttl", idempotency_ttl)


class RedisBroker:
    """A broker on a Redis server (6.2 or later) or a Redis Cluster (7.0 or later).

    Every channel has a history of its own (its last *history* events,
    kept *ttl* seconds after its last event), and each process receives
    only the events of the channels its subscribers want, over one
    connection per server or cluster master. See docs/redis.md for the layout.

    :param topology: the server or cluster (see :func:`~sse_wsgi.redis.topology.connect`).
    :param history: events kept per channel.
    :param ttl: seconds a channel keeps its history after its last event.
    :param key: the prefix of this broker's keys: apps sharing one Redis
        with different keys never see each other's events.
    :param url: shown in logs and ``stats()`` (without password).
    :param health_check: seconds without a byte from a node before a
        receiving connection counts as dead and is replaced (it sends
        ``PING`` after a third of that); the bound on noticing a frozen
        host, a partition or a relay that went silent.
    :param idempotency_ttl: seconds a publish's idempotency key is kept.

    Use :meth:`from_url`. The receiver starts in the process that serves
    subscribers (see :meth:`start`), so a broker made before a fork works
    in every child.
    """

    cross_process = True

    def __init__(
        self,
        topology: Topology,
        *,
        history: int = 1000,
        ttl: float = DEFAULT_TTL,
        key: str = "sse_wsgi",
        url: str = "redis",
        health_check: float = DEFAULT_HEALTH_CHECK,
        idempotency_ttl: float = IDEMPOTENCY_TTL,
    ) -> None:
        _check_options(history, ttl, health_check, idempotency_ttl)
        self._topology = topology
        self.history = history
        self.ttl = ttl
        self.health_check = health_check
        self._key = check_prefix(key)
        self._url = _safe_url(url)
        self._history = History(
            topology.client,
            prefix=key,
            history=history,
            ttl=ttl,
            sharded=topology.sharded,
            idempotency_ttl=idempotency_ttl,
        )
        self._receiver: PerProcess[Receiver] | None = None
        self._closed = False

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        history: int = 1000,
        ttl: float = DEFAULT_TTL,
        key: str = "sse_wsgi",
        health_check: float = DEFAULT_HEALTH_CHECK,
        idempotency_ttl: float = IDEMPOTENCY_TTL,
    ) -> RedisBroker:
        """Connect to the Redis server at *url* (``redis://[:password@]host:6379/0``).

        When that server is a node of a Redis Cluster (``cluster-enabled
        yes``), the broker uses the whole cluster: any node serves as *url*.
        """
        if not isinstance(url, str):
            raise TypeError(f"url must be a str like 'redis://localhost:6379/0', not {type(url).__name__}")
        _check_options(history, ttl, health_check, idempotency_ttl)  # before connecting
        check_prefix(key)
        try:
            topology = connect(url, socket_timeout=SOCKET_TIMEOUT)
        except REDIS_ERRORS as error:
            raise BrokerUnavailable(f"cannot reach Redis at {_safe_url(url)}: {error}") from error
        options = {"health_check": health_check, "idempotency_ttl": idempotency_ttl}
        return cls(topology, history=history, ttl=ttl, key=key, url=url, **options)

    # -- receiving -----------------------------------------------------------------------

    def _receiving_here(self) -> Receiver | None:
        receiver = None if self._receiver is None else self._receiver.here()
        return receiver if receiver is not None and receiver.running else None

    def start(self, deliver: Deliver, lost: Lost) -> None:
        """Start this process's receiver, if it has none; it connects when a channel is first watched."""
        if self._receiving_here() is not None:
            return
        self._receiver = PerProcess(
            lambda: Receiver(self._topology, self._history, deliver, lost, health_check=self.health_check)
        )
        self._receiver.get()

    def watch(self, channels: Sequence[str]) -> None:
        """Subscribe this process to *channels* (counted); return once their events are sure to arrive."""
        receiver = self._receiving_here()
        if receiver is None:
            raise BrokerUnavailable("the Redis broker is not started in this process")
        receiver.watch(channels)

    def unwatch(self, channels: Sequence[str]) -> None:
        """Undo one :meth:`watch`; the last one unsubscribes this process from a channel."""
        receiver = self._receiving_here()
        if receiver is not None:
            receiver.unwatch(channels)

    def cursor(self, channels: Sequence[str]) -> ChannelCursor:
        """A cursor at what this process has delivered on each of *channels*."""
        receiver = self._receiving_here()
        ordered = ids_of(channels)
        return ChannelCursor(ordered, [receiver.position(c) if receiver else None for c in ordered])

    # -- publishing and history ----------------------------------------------------------

    def publish(self, message: Message) -> str:
        """Add *message* to each of its channels' history and send it live; return its id.

        The id is the caller's own, or the event's position on each of its
        channels (what a subscriber of exactly these channels resumes from).
        On a cluster the channels are written one after the other: when a
        master is unreachable, this raises, and the event may have reached
        the channels written before.
        """
        return self._event_id(message, self._write(message, held_sets=False))

    def _write(self, message: Message, *, held_sets: bool) -> dict[str, Written]:
        """Write *message* on each of its channels, at most once per idempotency key.

        An error reply before anything was written (``-OOM``, ``-BUSY``)
        means not published; any other failure leaves the outcome unknown.
        """
        key = message.idempotency_key or secrets.token_urlsafe(16)
        written: list[Written] = []
        try:
            self._history.publish(message, key, held_sets=held_sets, into=written)
        except REDIS_ERRORS as error:
            if isinstance(error, redis.ResponseError) and not written:
                raise BrokerUnavailable(f"event not published: Redis at {self._url} refused it ({error})") from error
            raise PublishOutcomeUnknown(
                f"event not confirmed by Redis at {self._url} ({type(error).__name__}: {error}): it may have been "
                f"published; publish it again with idempotency_key={key!r} to publish it once",
                key,
            ) from error
        return dict(zip(message.channels, written, strict=True))

    @staticmethod
    def _event_id(message: Message, written: dict[str, Written]) -> str:
        """The caller's id, or the event's position on each of its channels."""
        if message.id is not None:
            return message.id
        return wire_id([written[c].position for c in ids_of(message.channels)])

    def publish_for_proxies(self, message: Message) -> tuple[str, list[ProxyItem]]:
        """Publish *message*; one proxy item per channel, and one per held set of several channels it reaches.

        A channel's item chains from the id of the channel's event before,
        which the same script call read. A set's ids name its position on
        each of its channels: those the event was published to come from
        the same script calls, the others from a read just after (a publish
        in between makes the proxy ask for what it missed, never skip it).
        """
        written = self._write(message, held_sets=True)
        items = []
        for channel, took in written.items():
            record = Record.from_message(took.position, message.id or took.position.token, message, channel)
            items.append(ProxyItem((channel,), record.id, took.prev_id, record))
        primaries: dict[tuple[str, ...], str] = {}  # each set gets the event once, from its first channel
        for channel, took in written.items():
            for names in took.held:
                primaries.setdefault(names, channel)
        others = sorted({name for names in primaries for name in names if name not in written})
        try:
            heads = {name: head for name, (_, head) in zip(others, self._history.heads(others), strict=True)}
        except REDIS_ERRORS as error:
            logger.warning("cannot read the heads of held sets (%s): the proxy will ask for what it missed", error)
            heads = {}
        for names, primary in primaries.items():
            before = [written[n].prev if n in written else heads.get(n) for n in names]
            after = [written[n].position if n in written else heads.get(n) for n in names]
            set_id = message.id or wire_id(after)
            record = Record.from_message(written[primary].position, set_id, message, primary)
            items.append(ProxyItem(names, set_id, wire_id(before), record))
        return self._event_id(message, written), items

    def hold(self, channels: Sequence[str], last_event_id: str | None) -> Hold | None:
        """Register a held set of several *channels*; the replay after *last_event_id* and the set's id (one read).

        ``None`` when one of the channels is part of too many held sets already.
        """
        names = ids_of(set(channels))
        try:
            if len(names) > 1 and not self._history.hold(names, HELD_SET_TTL):
                return None
            replay = None if last_event_id is None else self._replay(names, last_event_id)
            if replay is None:
                heads = self._history.read([(name, None) for name in names], entries=False)
                set_id = heads[0].head_id if len(names) == 1 else wire_id([c.head for c in heads])
                return Hold(None, set_id)
        except REDIS_ERRORS as error:
            raise BrokerUnavailable(f"history unavailable: Redis at {self._url} is unreachable ({error})") from error
        answer, cursor = replay
        if len(names) == 1 and answer.items:
            return Hold(answer, answer.items[-1][1])
        return Hold(answer, cursor.wire_id())

    def replay(self, channels: Sequence[str], last_event_id: str) -> Replay | None:
        """The events on *channels* after *last_event_id*, each once; ``None`` for an id that names nothing.

        Reads only these channels, at most ``history + 1`` entries each, in
        one pipeline; a caller's own id costs one index lookup per channel
        first. The channels' events are merged in the order Redis wrote them.
        """
        try:
            replay = self._replay(ids_of(channels), last_event_id)
        except REDIS_ERRORS as error:
            raise BrokerUnavailable(f"history unavailable: Redis at {self._url} is unreachable ({error})") from error
        return None if replay is None else replay[0]

    def _replay(self, ordered: tuple[str, ...], last_event_id: str) -> tuple[Replay, ChannelCursor] | None:
        positions: list[Position | None] | None = parse_id(last_event_id, len(ordered))
        if positions is None:
            positions = self._positions_by_epoch(ordered, last_event_id)
        if positions is None:
            positions = self._history.find(ordered, last_event_id)
            if all(p is UNKNOWN for p in positions):
                return None
        catchups = self._history.read(list(zip(ordered, positions, strict=True)), rewind=True)
        # A lost channel whose history holds nothing starts at its head, so that the ids sent name it there.
        starts = [(c.head if not c.records else None) if c.lost else c.after for c in catchups]
        cursor = ChannelCursor(ordered, starts)
        items = []
        for _, record in heapq.merge(*(c.records for c in catchups), key=lambda pair: pair[0]):
            sent_as = cursor.admit(record)
            if sent_as is not None:
                items.append((record, sent_as))
        cursor.advance({channel: c.head for channel, c in zip(ordered, catchups, strict=True)})
        lost = any(c.lost for c in catchups)
        oldest_id = items[0][0].id if items else None
        return Replay(items, cursor, lost=lost, oldest_id=oldest_id, resume_id=cursor.wire_id()), cursor

    def _positions_by_epoch(self, ordered: tuple[str, ...], last_event_id: str) -> list[Position | None] | None:
        """The positions an id of another set of channels names on *ordered* (the stream's channels changed).

        Each channel's epoch is random, so a token names its channel: a
        channel named by a token resumes from it. Any other channel was not
        followed: it starts at its head, unless the id names a channel that
        had no event (a ``0`` token, which names no channel), when it starts
        from its first event, so that nothing is skipped. ``None`` when
        *last_event_id* is no such id.
        """
        tokens = parse_tokens(last_event_id)
        if tokens is None:
            return None
        by_epoch = {position.epoch: position for position in tokens if position is not None}
        from_start = None in tokens
        positions: list[Position | None] = []
        for epoch, head in self._history.heads(ordered):
            positions.append(by_epoch.get(epoch, None if from_start else head))
        return positions

    def stats(self) -> dict[str, Any]:
        """Connection figures of this process's receiver, per node, and the last id seen per followed channel.

        ``history_size``, ``first_id`` and ``last_id`` cover the channels this
        process follows (history is per channel on Redis): the events they
        keep in all, and the oldest and newest of them.
        """
        receiver = self._receiving_here()
        positions = receiver.positions() if receiver else {}
        try:
            history_size, first_id, last_id = self._history.span(list(positions)) if positions else (0, None, None)
        except REDIS_ERRORS:
            history_size, first_id, last_id = None, None, None
        return {
            "broker": "redis",
            "url": self._url,
            "key": self._key,
            "cluster": self._topology.sharded,
            "history_per_channel": self.history,
            "history_ttl": self.ttl,
            "reader_running": receiver is not None,
            "connected": receiver is not None and receiver.connected,
            "health_check": self.health_check,
            "nodes": receiver.nodes() if receiver else {},
            "channels_watched": len(positions),
            "last_seen_ids": {c: token(p) for c, p in positions.items()},
            "reconnects": receiver.reconnects if receiver else 0,
            "gaps_reported": receiver.gaps if receiver else 0,
            "history_size": history_size,
            "first_id": first_id,
            "last_id": last_id,
        }

    def close(self) -> None:
        """Stop the receiver (within about a second) and close the connections."""
        if self._closed:
            return
        self._closed = True
        receiver = self._receiving_here()
        if receiver is not None:
            receiver.close()
        self._topology.client.close()
