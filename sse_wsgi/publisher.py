"""Publish events to channels and stream them to subscribers: :class:`Publisher`, :class:`Subscription`."""

from __future__ import annotations

import json
import logging
import threading
import time
import warnings
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from ._grip_publish import ProxySenders
from ._process import ProcessLock, fork_generation
from ._ticker import Ticker
from ._validate import check_count, check_seconds
from .broker import Broker, Cursor, Hold, Message, Record
from .errors import BrokerUnavailable, PublisherClosed
from .event import HEARTBEAT, Event, Serializer, json_serializer
from .grip import parse_grip
from .memory import MemoryBroker

__all__ = ["DEFAULT_CHANNEL", "HISTORY_LOST_EVENT", "Publisher", "Subscription", "drain_all", "history_lost_chunk"]

logger = logging.getLogger(__name__)

DEFAULT_CHANNEL = "default channel"

#: The event type a resuming subscriber gets first when events after its
#: ``Last-Event-ID`` are no longer in the history. Its data is JSON:
#: ``{"last_event_id": "<the id asked for>", "oldest_id": "<oldest kept>"}``.
HISTORY_LOST_EVENT = "history-lost"

#: Events queued for one subscriber at most, unless half the history is less.
DEFAULT_QUEUE_SIZE = 1000

# The most bytes one chunk of a stream joins (one event larger than this goes
# alone). A resuming client may be owed the whole history: in one chunk, that
# would be one large copy per client, held until a slow client has read it.
MAX_CHUNK_BYTES = 64 * 1024

_BROKER_METHODS = ("start", "watch", "unwatch", "cursor", "publish", "replay", "stats", "close")
_GRIP_METHODS = ("publish_for_proxies", "hold")

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


def history_lost_chunk(last_event_id: str | None, oldest_id: str | None, resume_id: str | None = None) -> bytes:
    """The encoded :data:`HISTORY_LOST_EVENT`: events after *last_event_id* are gone, *oldest_id* is the oldest kept.

    With *resume_id* (when nothing follows it in a replay), the event carries
    that id: the position the stream goes on from, so that the browser's next
    reconnect resumes there and is not told of the same loss again.
    """
    lost = {"last_event_id": last_event_id, "oldest_id": oldest_id}
    return Event(json.dumps(lost), event=HISTORY_LOST_EVENT, id=resume_id).encode()


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
        if broker is not None and not all(callable(getattr(broker, name, None)) for name in _BROKER_METHODS):
            raise TypeError(f"broker must implement sse_wsgi.broker.Broker ({', '.join(_BROKER_METHODS)}): {broker!r}")
        if broker is not None and not isinstance(getattr(broker, "history", None), int):
            raise TypeError(f"broker must have an int history (events kept per channel): {broker!r}")
        if proxies and broker is not None and not all(callable(getattr(broker, n, None)) for n in _GRIP_METHODS):
            raise TypeError(f"grip needs a broker that implements {', '.join(_GRIP_METHODS)}: {broker!r}")
        self._broker: Broker = MemoryBroker(history, history_total=history_total) if broker is None else broker
        self._proxies = ProxySenders(proxies) if proxies else None
        self._serializer: Serializer = serializer or json_serializer
        #: Events queued for one subscriber at most; one more cuts it off.
        self.queue_limit = _queue_limit(queue_size, self._broker.history)
        self._lock = ProcessLock()
        self._started_in = -1  # the fork generation in which the broker was last started
        self._channels: dict[str, dict[Subscription, None]] = {}
        self._closed = False
        self._draining = False
        self._subscription_count = 0
        self._published = 0
        self._delivered = 0
        self._cut_off = 0
        self._refused = 0
        self._ticker = Ticker()
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
        return self._closed

    @property
    def draining(self) -> bool:
        """True once :meth:`drain` was called: this process is going away."""
        return self._draining

    @property
    def subscription_count(self) -> int:
        """How many subscriptions are registered now."""
        return self._subscription_count

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
            self, channels, properties, initial, heartbeat, max_lifetime, client_disconnected, self.queue_limit
        )
        if self._closed:
            raise PublisherClosed("this Publisher is closed: create a new one to subscribe")
        self._start_broker()
        periods = [p for p in (heartbeat, max_lifetime) if p is not None]
        with self._lock:
            if self._closed:
                raise PublisherClosed("this Publisher is closed: create a new one to subscribe")
            for name in channels:
                self._channels.setdefault(name, {})[subscription] = None
            subscription._registered = True
            subscription._watching = True
            self._subscription_count += 1
            if periods:  # under the lock, so that a drain or close cannot miss it
                self._ticker.add(subscription, min(periods))
        try:
            self._broker.watch(channels)  # outside the lock: it may wait for the broker
            if last_event_id is None:
                subscription._cursor = self._broker.cursor(channels)
            else:
                self._prime(subscription, last_event_id)
        except BaseException:
            subscription.close()
            raise
        return subscription

    def _start_broker(self) -> None:
        """Start the broker in this process: once, and again in a process forked from it."""
        generation = fork_generation()
        if self._started_in != generation:
            with self._lock:
                if self._started_in != generation:
                    self._broker.start(self._deliver, self._lost)
                    self._started_in = generation

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
            subscription._replayed([notice], self._broker.cursor(subscription.channels), last_event_id)
            return
        if replay is None:  # a malformed id: live events only
            subscription._cursor = self._broker.cursor(subscription.channels)
            return
        chunks = []
        if replay.lost:
            chunks.append(history_lost_chunk(last_event_id, replay.oldest_id, replay.resume_id))
        last_id = last_event_id
        for record, wire_id in replay.items:
            chunk = self._chunk_for(subscription, record, wire_id)
            if chunk is not None:
                chunks.append(chunk)
                last_id = wire_id
        subscription._replayed(chunks, replay.cursor, last_id)

    def _unregister(self, subscription: Subscription) -> None:
        with self._lock:
            self._ticker.discard(subscription)  # also when a drain unregistered it first
            if not subscription._registered:
                return
            subscription._registered = False
            self._subscription_count -= 1
            for name in subscription.channels:
                subscribers = self._channels.get(name)
                if subscribers is not None:
                    subscribers.pop(subscription, None)
                    if not subscribers:
                        del self._channels[name]
        self._unwatch(subscription)

    def _unwatch(self, subscription: Subscription) -> None:
        """Tell the broker that *subscription* no longer needs its channels (once, outside the lock)."""
        if subscription._watching:
            subscription._watching = False
            self._broker.unwatch(subscription.channels)

    def get_subscribers(self, channel: str | Iterable[str] = DEFAULT_CHANNEL) -> Iterator[Subscription]:
        """Iterate over the subscribers of *channel* (each once), with ``.properties`` and ``.channels``."""
        channels = normalize_channels(channel)
        with self._lock:
            found = dict.fromkeys(s for name in channels for s in self._channels.get(name, ()))
        return iter(list(found))

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
        if self._closed:
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
        if self._proxies is None:
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
        if self._closed:
            raise PublisherClosed("this Publisher is closed")
        if self._proxies is None:
            raise RuntimeError("this Publisher feeds no GRIP proxy: give it grip=")
        return self._broker.hold(channels, last_event_id)

    def _deliver(self, record: Record) -> None:
        """Queue *record* for every local subscriber of its stream (the broker's callback)."""
        with self._lock:
            if record.stream is not None:
                subscribers = list(self._channels.get(record.stream, ()))
            elif len(record.channels) == 1:
                subscribers = list(self._channels.get(record.channels[0], ()))
            else:
                subscribers = list(dict.fromkeys(s for n in record.channels for s in self._channels.get(n, ())))
        self._published += 1
        callable_data = record.chunk is None
        delivered = 0
        for subscription in subscribers:
            chunk = None
            if callable_data:
                chunk = self._chunk_for(subscription, record, record.id)
                if chunk is None:
                    continue
            if subscription._put(record, chunk):
                delivered += 1
            else:
                self._cut_off_slow(subscription)
        self._delivered += delivered

    def _cut_off_slow(self, subscription: Subscription) -> None:
        self._cut_off += 1
        logger.info("subscriber of %s cut off: %d events queued", subscription.channels, self.queue_limit)
        subscription._end(drop_queued=True)
        self._unregister(subscription)

    def _lost(self, stream: str | None, oldest_id: str | None) -> None:
        """Tell the local subscribers of *stream* (``None``: all) that events were lost here (the broker's callback).

        Each gets the loss event at this point of its stream.
        """
        with self._lock:
            if stream is not None:
                subscribers = list(self._channels.get(stream, ()))
            else:
                subscribers = list(dict.fromkeys(s for subscribers in self._channels.values() for s in subscribers))
        logger.warning("events of %s lost before id %s: telling %d subscribers", stream, oldest_id, len(subscribers))
        for subscription in subscribers:
            if not subscription._put(_Loss(stream, oldest_id)):
                self._cut_off_slow(subscription)

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
        with self._lock:
            self._refused += 1

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
        with self._lock:
            per_channel = {name: len(subscribers) for name, subscribers in self._channels.items()}
            unique = self._subscription_count
        figures: dict[str, Any] = {
            "subscribers": per_channel,
            "subscriptions": unique,
            "events_published": self._published,
            "queue_limit": self.queue_limit,
            "events_delivered": self._delivered,
            "slow_subscribers_cut": self._cut_off,
            "streams_refused": self._refused,
            "closed": self._closed,
            "draining": self._draining,
        }
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
        with self._lock:
            self._draining = True
        for subscription in self._take_all():
            subscription._end()

    def _take_all(self) -> set[Subscription]:
        """Unregister every subscription at once; return them."""
        with self._lock:
            subscriptions = {s for subscribers in self._channels.values() for s in subscribers}
            self._channels.clear()
            for subscription in subscriptions:
                subscription._registered = False
            self._subscription_count = 0
            self._ticker.clear()
        watched = [c for s in subscriptions if s._watching for c in s.channels]
        for subscription in subscriptions:
            subscription._watching = False
        if watched:
            self._broker.unwatch(watched)  # one request for all of them: each channel counted as often as named
        return subscriptions

    def close(self) -> None:
        """End every subscription's stream and refuse later ``subscribe``/``publish``."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            _open_publishers.discard(self)
        for subscription in self._take_all():
            subscription._end()
        self._ticker.close()
        if self._proxies is not None:
            self._proxies.close()
        self._broker.close()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class _Loss:
    """A queued notice: events of *stream* (``None``: any) were lost before this point."""

    __slots__ = ("oldest_id", "stream")

    def __init__(self, stream: str | None, oldest_id: str | None) -> None:
        self.stream = stream
        self.oldest_id = oldest_id


class Subscription:
    """One subscriber's stream: an iterator of ``bytes`` chunks, each one or more whole events.

    Use it directly as a WSGI body or a framework's streaming response. It
    is registered from creation; :meth:`close` unregisters it (the WSGI
    server calls it when the client goes away), also when it was never
    iterated. It is a context manager. One thread (or greenlet) iterates it.

    :ivar channels: the channels subscribed to.
    :ivar properties: the properties given to ``subscribe``.
    """

    def __init__(
        self,
        publisher: Publisher,
        channels: tuple[str, ...],
        properties: Any,
        initial: list[bytes],
        heartbeat: float | None,
        max_lifetime: float | None,
        client_disconnected: Callable[[], bool] | None,
        queue_size: int,
    ) -> None:
        self.channels = channels
        self.properties = properties
        self._publisher = publisher
        self._pending = initial  # a list, not a deque: one per idle stream, and usually short
        self._queue: deque[tuple[Record | _Loss, bytes | None]] = deque()
        self._queue_size = queue_size
        self.last_id: str | None = None  # the id of the last event handed to this stream
        self._wake = threading.Event()
        self._cursor: Cursor | None = None  # set by subscribe before it returns
        self._watching = False  # the broker was asked to watch its channels
        self._heartbeat = heartbeat
        self._deadline = None if max_lifetime is None else time.monotonic() + max_lifetime
        self._client_disconnected = client_disconnected
        self._last_sent = self._last_probe = time.monotonic()
        self._registered = False
        self._ended = False
        self._closed = False

    def __repr__(self) -> str:
        return f"<Subscription channels={self.channels!r} closed={self._closed}>"

    @property
    def closed(self) -> bool:
        """True once the subscription is closed (unregistered)."""
        return self._closed

    def _put(self, item: Record | _Loss, chunk: bytes | None = None) -> bool:
        """Queue a record (with its chunk when computed for this subscriber) or a loss; ``False`` when full."""
        if len(self._queue) >= self._queue_size:
            return False
        self._queue.append((item, chunk))
        self.wake_up()
        return True

    def _replayed(self, chunks: list[bytes], cursor: Cursor, last_id: str) -> None:
        self._pending.extend(chunks)
        self._cursor = cursor
        self.last_id = last_id

    def _end(self, *, drop_queued: bool = False) -> None:
        """End the stream normally after what is queued (or at once, dropping it)."""
        self._ended = True
        if drop_queued:
            self._queue.clear()
        self._wake.set()

    def _take(self) -> list[bytes]:
        """What goes out next, in order: replayed chunks, then queued ones, up to :data:`MAX_CHUNK_BYTES`."""
        pending = self._pending
        taken = size = 0
        while taken < len(pending) and size < MAX_CHUNK_BYTES:
            size += len(pending[taken])
            taken += 1
        chunks = pending[:taken]
        del pending[:taken]
        queue = self._queue
        cursor = self._cursor
        while queue and size < MAX_CHUNK_BYTES and cursor is not None:
            item, chunk = queue.popleft()
            if isinstance(item, _Loss):
                cursor.reset(item.stream)
                chunk = history_lost_chunk(self.last_id, item.oldest_id)
            else:
                wire_id = cursor.admit(item)
                if wire_id is None:
                    continue  # already sent, or sent from another of its streams
                if chunk is None:
                    chunk = item.encode_with_id(wire_id)  # the shared chunk when it is the record's own id
                self.last_id = wire_id
            chunks.append(chunk)
            size += len(chunk)
        return chunks

    def is_due(self, now: float) -> bool:
        """True when a heartbeat or the end of the stream's life is due (the publisher's ticker asks)."""
        heartbeat_due = self._heartbeat is not None and now - self._last_sent >= self._heartbeat
        return heartbeat_due or (self._deadline is not None and now >= self._deadline)

    def wake_up(self) -> None:
        """Make a waiting ``next()`` look again now (the ticker's call when a heartbeat is due)."""
        if not self._wake.is_set():
            self._wake.set()

    def __iter__(self) -> Subscription:
        return self

    def _client_gone(self, now: float) -> bool:
        """Ask the server's disconnect signal, at most once a heartbeat period."""
        if self._client_disconnected is None or self._heartbeat is None or now - self._last_probe < self._heartbeat:
            return False
        self._last_probe = now
        return self._client_disconnected()

    def __next__(self) -> bytes:
        while not self._closed:
            now = time.monotonic()
            if self._deadline is not None and now >= self._deadline:
                break  # also on a busy stream: the browser resumes by id
            if self._client_gone(now):
                break
            chunks = self._take()
            if chunks:
                self._last_sent = now
                return b"".join(chunks)
            if self._ended:
                break
            if self._heartbeat is not None and now - self._last_sent >= self._heartbeat:
                self._last_sent = now
                return HEARTBEAT
            self._wake.clear()
            if self._queue or self._ended or self._closed:
                continue
            # No timeout: the publisher's ticker wakes this stream when a heartbeat or its end is due.
            self._wake.wait()
        self.close()
        raise StopIteration

    def close(self) -> None:
        """Unregister and end the stream; safe to call more than once, from any thread."""
        if self._closed:
            return
        self._closed = True
        self._publisher._unregister(self)
        self._queue.clear()
        self._pending.clear()
        self._wake.set()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
