"""Publish events to channels and hand subscribers their streams: :class:`Publisher`, the public API.

The publisher checks what it is given, serializes data, and ties the other
parts together: the broker (numbering, history, other processes), the
local fan-out (:mod:`.fanout`: this process's subscriptions) and, with
``grip``, the senders to the proxies (:mod:`.grip.sender`).
"""

from __future__ import annotations

import functools
import logging
import warnings
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from ._process import PerProcess
from ._validate import check_count, check_seconds
from .broker import Broker, GripBroker, Hold, Message, Record
from .errors import BrokerUnavailable, PublisherClosed
from .event import Event, Serializer, history_lost_chunk, json_serializer
from .fanout import FanOut
from .grip import ProxySenders, parse_grip
from .memory import MemoryBroker
from .subscription import Subscription

__all__ = ["DEFAULT_CHANNEL", "DEFAULT_QUEUE_SIZE", "Publisher", "drain_all", "normalize_channels"]

logger = logging.getLogger(__name__)

DEFAULT_CHANNEL = "default channel"

#: Events queued for one subscriber at most, unless half the history is less.
DEFAULT_QUEUE_SIZE = 1000

# The open publishers of this process, so that a shutdown hook can end every stream.
_open_publishers: weakref.WeakSet[Publisher] = weakref.WeakSet()


def drain_all() -> None:
    """:meth:`~Publisher.drain` every open :class:`Publisher` of this process (for a shutdown hook)."""
    for publisher in list(_open_publishers):
        publisher.drain()


def _queue_limit(queue_size: int | None, history: int) -> int:
    covered = history // 2  # what a cut-off subscriber missed, and as much again while it reconnects
    if queue_size is None:
        return max(1, min(DEFAULT_QUEUE_SIZE, covered)) if history else DEFAULT_QUEUE_SIZE
    if history and queue_size > covered:
        warnings.warn(
            f"queue_size={queue_size} is more than half of history={history}: a subscriber cut off for being "
            "slow may find the events it missed gone when it resumes (it gets the history-lost event); "
            "raise history or leave queue_size to its default",
            UserWarning,
            stacklevel=3,
        )
    return queue_size


def normalize_channels(channel: str | Iterable[str]) -> tuple[str, ...]:
    """Turn a channel name or an iterable of names into a tuple of unique names."""
    names = (channel,) if isinstance(channel, str) else channel
    try:
        channels = tuple(dict.fromkeys(names))
    except TypeError:
        raise TypeError(f"channel must be a str or a list of str, not {type(channel).__name__}: {channel!r}") from None
    if not channels:
        raise ValueError("channel must name at least one channel")
    for name in channels:
        if not isinstance(name, str):
            raise TypeError(f"channel names must be str, not {type(name).__name__}: {name!r}")
        if not name:
            raise ValueError("channel names must not be empty")
    return channels


class Publisher:
    """Publish events to named channels; hand subscribers an iterator of encoded events.

    :param broker: where events are numbered, kept and carried; ``None``
        uses a :class:`~sse_wsgi.memory.MemoryBroker` (this process only).
    :param history: events kept per channel for ``Last-Event-ID``
        resumption, for the default in-memory broker (a broker passed in
        keeps its own history).
    :param history_total: events the default in-memory broker keeps in all
        channels together (the oldest go first), so that many quiet
        channels cannot grow memory without bound.
    :param queue_size: events queued for one subscriber before it counts as
        too slow and is disconnected (it then resumes from history). By
        default :data:`DEFAULT_QUEUE_SIZE`, or half the broker's per-channel
        history if that is less, so that a subscriber cut off finds what it
        missed, and as much again published while it reconnects, still in
        history. A larger size is honoured with a warning.
    :param serializer: turns non-``str`` data into text; compact JSON by
        default.
    :param grip: a GRIP URL (``"http://127.0.0.1:5561?key=SECRET"``: the
        proxy's control endpoint and its signing key, Pushpin's
        ``sig_key``; ``key=base64:...`` for a binary key), or a list of them:
        every ``publish`` also reaches each proxy, and
        :class:`~sse_wsgi.SSEMiddleware` lets a proxy hold the streams it
        forwards. A URL without a key raises ``ValueError``.

    A publisher is thread-safe and cooperative under gevent and eventlet
    monkey-patching.
    """

    def __init__(
        self,
        broker: Broker | None = None,
        *,
        history: int = 1000,
        history_total: int = 100_000,
        queue_size: int | None = None,
        serializer: Serializer | None = None,
        grip: str | Sequence[str] | None = None,
    ) -> None:
        proxies = parse_grip(grip)
        if queue_size is not None:
            check_count("queue_size", queue_size)
        if serializer is not None and not callable(serializer):
            raise TypeError(f"serializer must be a callable returning str, not {serializer!r}")
        if broker is not None and not isinstance(broker, Broker):
            raise TypeError(f"broker must implement sse_wsgi.broker.Broker: {broker!r}")
        if broker is not None and not isinstance(broker.history, int):
            raise TypeError(f"broker must have an int history (events kept per channel): {broker!r}")
        if proxies and broker is not None and not isinstance(broker, GripBroker):
            raise TypeError(f"grip needs a broker that implements sse_wsgi.broker.GripBroker: {broker!r}")
        self._broker: Broker = MemoryBroker(history, history_total=history_total) if broker is None else broker
        self._proxies = ProxySenders(proxies) if proxies else None
        self._serializer: Serializer = serializer or json_serializer
        #: Events queued for one subscriber at most; one more cuts it off.
        self.queue_limit = _queue_limit(queue_size, self._broker.history)
        self._fanout = FanOut(self._broker.unwatch, self._chunk_for)
        self._started = PerProcess(self._start_broker)
        _open_publishers.add(self)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        history: int = 1000,
        history_ttl: float | None = None,
        key: str = "sse_wsgi",
        health_check: float | None = None,
        **kwargs: Any,
    ) -> Publisher:
        """A publisher on the Redis server at *url* (``redis://host:6379/0``), or on its Redis Cluster.

        :param history: events kept per channel.
        :param history_ttl: seconds a channel keeps its history after its
            last event (a day by default).
        :param key: the prefix of every Redis key this publisher uses: apps
            that share one Redis database with different keys never see each
            other's events.
        :param health_check: seconds without a byte from a Redis node before
            this process's receiving connection to it counts as dead and is
            replaced (15 by default): the bound on noticing a frozen host, a
            partition or a relay that went silent.

        When the server at *url* is a node of a Redis Cluster, the publisher
        uses the whole cluster. Needs the ``sse-wsgi[redis]`` extra. Other
        keyword arguments go to :class:`Publisher`.
        """
        from .redis import DEFAULT_TTL, RedisBroker
        from .redis.receiver import DEFAULT_HEALTH_CHECK

        ttl = DEFAULT_TTL if history_ttl is None else history_ttl
        check = DEFAULT_HEALTH_CHECK if health_check is None else health_check
        return cls(RedisBroker.from_url(url, history=history, ttl=ttl, key=key, health_check=check), **kwargs)

    @property
    def grip_keys(self) -> list[bytes]:
        """The signing keys of the GRIP proxies this publisher feeds (empty without ``grip``)."""
        return [] if self._proxies is None else list(self._proxies.keys)

    @property
    def broker(self) -> Broker:
        """The broker this publisher runs on."""
        return self._broker

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._fanout.closed

    @property
    def draining(self) -> bool:
        """True once :meth:`drain` was called: this process is going away."""
        return self._fanout.draining

    @property
    def subscription_count(self) -> int:
        """How many subscriptions are registered now."""
        return self._fanout.count

    # -- subscribing ---------------------------------------------------------

    def subscribe(
        self,
        channel: str | Iterable[str] = DEFAULT_CHANNEL,
        properties: Any = None,
        initial_data: Iterable[Any] = (),
        last_event_id: str | None = None,
        heartbeat: float | None = 15.0,
        *,
        max_lifetime: float | None = None,
        client_disconnected: Callable[[], bool] | None = None,
    ) -> Subscription:
        """Subscribe to *channel* (a name or a list of names); the subscriber is registered on return.

        :param properties: this subscriber's properties, passed to callable data.
        :param initial_data: items sent first: an :class:`Event` as it is,
            anything else as the data of an event.
        :param last_event_id: resume after this id: the events since then
            still in history come first, in order, with no gap and no
            duplicate before the live ones. When some are no longer kept, a
            :data:`HISTORY_LOST_EVENT` event comes first. A malformed id is
            ignored.
        :param heartbeat: seconds without events after which a comment chunk
            is sent (it is what reveals a vanished client, so that a view that
            returns ``publisher.subscribe()`` frees it); ``None`` for none.
        :param max_lifetime: seconds after which the stream ends normally (the
            browser reconnects and resumes by id); ``None`` for no limit.
            Both are kept by one ticker thread per publisher, which checks
            every quarter of the shortest period asked for (at most every
            second), so either may come up to that much late.
        :param client_disconnected: a callable the stream asks, about once a
            heartbeat period even while events flow, whether the client has
            gone (a server's own signal, as waitress offers); the stream then
            ends at once.
        """
        channels = normalize_channels(channel)
        check_seconds("heartbeat", heartbeat)
        check_seconds("max_lifetime", max_lifetime)
        if last_event_id is not None and not isinstance(last_event_id, str):
            raise TypeError(f"last_event_id must be a str or None, not {type(last_event_id).__name__}")
        if client_disconnected is not None and not callable(client_disconnected):
            raise TypeError(f"client_disconnected must be callable or None, not {client_disconnected!r}")
        if isinstance(initial_data, (str, bytes)):
            raise TypeError("initial_data must be a list of items, not a single str or bytes")
        initial = [self._encode_initial(item) for item in initial_data]
        subscription = Subscription(
            channels,
            properties,
            initial=initial,
            heartbeat=heartbeat,
            max_lifetime=max_lifetime,
            client_disconnected=client_disconnected,
            queue_size=self.queue_limit,
            on_close=self._fanout.unregister,
        )
        if self.closed:
            raise PublisherClosed("this Publisher is closed: create a new one to subscribe")
        self._started.get()
        periods = [p for p in (heartbeat, max_lifetime) if p is not None]
        self._fanout.register(subscription, min(periods) if periods else None)  # the broker watches from now on
        try:
            self._broker.watch(channels)  # outside any lock: it may wait for the broker
            if last_event_id is None:
                subscription.start(self._broker.cursor(channels))
            else:
                self._prime(subscription, last_event_id)
        except BaseException:
            subscription.close()
            raise
        return subscription

    def _start_broker(self) -> bool:
        """Start the broker in this process (once per process: again in a process forked from it)."""
        self._broker.start(self._fanout.deliver, self._fanout.lost)
        return True

    def _encode_initial(self, item: Any) -> bytes:
        if isinstance(item, Event):
            return item.encode(self._serializer)
        return Event(item).encode(self._serializer)

    def _prime(self, subscription: Subscription, last_event_id: str) -> None:
        try:
            replay = self._broker.replay(subscription.channels, last_event_id)
        except BrokerUnavailable:
            logger.warning("history unavailable, cannot resume after id %r", last_event_id)
            notice = history_lost_chunk(last_event_id, None)
            subscription.start(self._broker.cursor(subscription.channels), [notice], last_event_id)
            return
        if replay is None:  # a malformed id: live events only
            subscription.start(self._broker.cursor(subscription.channels))
            return
        chunks, last_id = replay.chunks(last_event_id, functools.partial(self._chunk_for, subscription))
        subscription.start(replay.cursor, chunks, last_id)

    def get_subscribers(self, channel: str | Iterable[str] = DEFAULT_CHANNEL) -> Iterator[Subscription]:
        """Iterate over the subscribers of *channel* (each once), with ``.properties`` and ``.channels``."""
        return iter(self._fanout.subscribers(normalize_channels(channel)))

    # -- publishing ----------------------------------------------------------

    def publish(
        self,
        data: Any,
        channel: str | Iterable[str] = DEFAULT_CHANNEL,
        *,
        event: str | None = None,
        id: str | None = None,
        retry: int | None = None,
        idempotency_key: str | None = None,
    ) -> str:
        """Publish *data* to *channel* (a name or a list of names); return the event's id.

        A ``str`` is sent as it is, other values through the serializer. If
        *data* is callable, each subscriber gets ``data(properties)``, and
        none when that returns ``None`` (in-memory broker only). Without
        *id*, the broker assigns increasing ids. A subscriber of several of
        the channels gets the event once.

        :param idempotency_key: a key (up to 200 characters) that makes the
            publish happen once: a publish with the same key within the
            broker's window (two minutes) stores nothing and returns the
            first one's id. Use it to retry after
            :class:`~sse_wsgi.errors.PublishOutcomeUnknown` (whose
            ``idempotency_key`` is the one to retry with).
        """
        channels = normalize_channels(channel)
        Event(event=event, id=id, retry=retry)  # validates the fields, raising on bad ones
        if idempotency_key is not None and (
            not isinstance(idempotency_key, str) or not 0 < len(idempotency_key) <= 200
        ):
            raise TypeError(f"idempotency_key must be a str of 1 to 200 characters or None, not {idempotency_key!r}")
        if self.closed:
            raise PublisherClosed("this Publisher is closed: create a new one to publish")
        if callable(data):
            if self._broker.cross_process or self._proxies is not None:
                where = "to a GRIP proxy (it sends one payload to all)" if self._proxies else "with this broker"
                raise TypeError(
                    f"callable data cannot cross processes {where}: publish the data itself, "
                    "to a per-subscriber channel (e.g. channel=f'user:{user_id}') when it differs"
                )
            payload = data
        elif isinstance(data, str):
            payload = data
        else:
            try:
                payload = self._serializer(data)
            except (TypeError, ValueError) as error:
                raise TypeError(f"data must be a str or a value the serializer accepts: {error}") from error
            if not isinstance(payload, str):
                raise TypeError(f"the serializer must return a str, not {type(payload).__name__}")
        message = Message(channels, payload, event, id, retry, idempotency_key)
        if not isinstance(self._broker, GripBroker) or self._proxies is None:
            return self._broker.publish(message)
        event_id, items = self._broker.publish_for_proxies(message)
        self._proxies.send(items)
        return event_id

    def hold(self, channels: Sequence[str], last_event_id: str | None) -> Hold | None:
        """What a stream held by a GRIP proxy starts with (see :meth:`~sse_wsgi.broker.Broker.hold`).

        ``None`` when the set of channels cannot be held (one of them is part
        of :data:`~sse_wsgi.broker.MAX_HELD_SETS` held sets already): the
        middleware then serves the stream itself.
        """
        if self.closed:
            raise PublisherClosed("this Publisher is closed")
        if not isinstance(self._broker, GripBroker) or self._proxies is None:
            raise RuntimeError("this Publisher feeds no GRIP proxy: give it grip=")
        return self._broker.hold(channels, last_event_id)

    def _chunk_for(self, subscription: Subscription, record: Record, wire_id: str) -> bytes | None:
        """The encoded record for *subscription*, with *wire_id*; ``None`` when it gets nothing."""
        if record.chunk is not None:
            return record.encode_with_id(wire_id)
        try:
            value = record.data(subscription.properties)
            if value is None:
                return None
            text = value if isinstance(value, str) else self._serializer(value)
            if not isinstance(text, str):
                raise TypeError(f"the serializer returned {type(text).__name__}, not str")
            return Event(text, event=record.event, id=wire_id, retry=record.retry).encode()
        except Exception:  # a user callable or its value: it costs this subscriber this event, nothing more
            logger.exception("callable data failed for subscriber properties %r", subscription.properties)
            return None

    # -- operations ----------------------------------------------------------

    def count_refused_stream(self) -> None:
        """Count one stream refused for ``max_subscribers`` (``stats()["streams_refused"]``)."""
        self._fanout.count_refused()

    def stats(self) -> dict[str, Any]:
        """Figures about this publisher, as a plain dict.

        ``subscribers`` (per channel), ``subscriptions``, ``events_published``
        (records received from the broker: on Redis, once per watched
        channel an event was published to), ``events_delivered`` (queued to
        subscribers), ``slow_subscribers_cut``, ``streams_refused``,
        ``closed``, plus the broker's figures (``broker``; in memory
        ``history_size``, ``first_id``, ``last_id``; on Redis the connection
        state per server or master and the last id seen per followed
        channel), and with ``grip`` what each proxy took and refused.
        """
        figures = self._fanout.figures()
        figures["queue_limit"] = self.queue_limit
        figures.update(self._broker.stats())
        if self._proxies is not None:
            figures["grip"] = self._proxies.stats()
        return figures

    def drain(self) -> None:
        """End every current stream normally, and mark this publisher :attr:`draining`.

        For a process that is about to stop (a server's graceful shutdown):
        browsers reconnect, with ``Last-Event-ID``, to the processes that go
        on; :class:`SSEMiddleware` answers new streams here with a short
        ``retry:`` hint rather than an error. Publishing still works.
        """
        self._fanout.end_all(closing=False)

    def close(self) -> None:
        """End every subscription's stream and refuse later ``subscribe``/``publish``."""
        if not self._fanout.end_all(closing=True):
            return
        _open_publishers.discard(self)
        if self._proxies is not None:
            self._proxies.close()
        self._broker.close()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
