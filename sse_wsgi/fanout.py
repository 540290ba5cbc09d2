"""This process's side of a publisher: its subscriptions by channel, and what it hands each of them.

:class:`FanOut` registers the subscriptions, queues each record the broker
delivers for every local subscriber of its stream, tells them of losses,
cuts off the slow ones, keeps the counters and the ticker that wakes
streams for their heartbeats.

Lock order: a broker calls :meth:`FanOut.deliver` and :meth:`FanOut.lost`
while it may hold its own lock (the in-memory broker delivers under the lock
that orders publishes; the Redis receiver under its own), and those take
this module's lock inside. So nothing here calls the broker while holding
its lock: the broker's ``unwatch`` is called after it is released. The
lock is a :class:`~sse_wsgi._process.ProcessLock`, made in the process that
uses it (after a fork, and after gevent's monkey-patching).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ._process import ProcessLock
from ._ticker import Ticker
from .broker import Record
from .errors import PublisherClosed
from .subscription import Loss, Subscription

__all__ = ["FanOut"]

logger = logging.getLogger(__name__)

#: Makes a record's chunk for one subscriber (callable data); ``None`` when it gets nothing.
ChunkFor = Callable[[Subscription, Record, str], "bytes | None"]


class FanOut:
    """The subscriptions of this process, by channel, and the counters of what they were handed.

    :param unwatch: the broker's ``unwatch``, called (outside the lock) for
        each subscription that leaves.
    :param chunk_for: makes a record's chunk for one subscriber when the
        record's data is callable.
    """

    def __init__(self, unwatch: Callable[[Sequence[str]], None], chunk_for: ChunkFor) -> None:
        self._unwatch = unwatch
        self._chunk_for = chunk_for
        self._lock = ProcessLock()
        self._channels: dict[str, dict[Subscription, None]] = {}
        self._registered: set[Subscription] = set()  # each also watched by the broker until it leaves
        self.ticker = Ticker()
        self.closed = False
        self.draining = False
        self.published = 0
        self.delivered = 0
        self.cut_off = 0
        self.refused = 0

    @property
    def count(self) -> int:
        """How many subscriptions are registered now."""
        return len(self._registered)

    def register(self, subscription: Subscription, period: float | None) -> None:
        """Register *subscription* (woken every *period* seconds by the ticker); raises once closed."""
        with self._lock:
            if self.closed:
                raise PublisherClosed("this Publisher is closed: create a new one to subscribe")
            for name in subscription.channels:
                self._channels.setdefault(name, {})[subscription] = None
            self._registered.add(subscription)
            if period is not None:  # under the lock, so that a drain or close cannot miss it
                self.ticker.add(subscription, period)

    def unregister(self, subscription: Subscription) -> None:
        """Forget *subscription* and unwatch its channels (once, also after a drain took it)."""
        with self._lock:
            self.ticker.discard(subscription)
            if subscription not in self._registered:
                return
            self._registered.discard(subscription)
            for name in subscription.channels:
                subscribers = self._channels.get(name)
                if subscribers is not None:
                    subscribers.pop(subscription, None)
                    if not subscribers:
                        del self._channels[name]
        self._unwatch(subscription.channels)

    def subscribers(self, channels: Iterable[str]) -> list[Subscription]:
        """The subscriptions of any of *channels*, each once."""
        with self._lock:
            return list(dict.fromkeys(s for name in channels for s in self._channels.get(name, ())))

    def per_channel(self) -> dict[str, int]:
        """How many subscriptions each channel has."""
        with self._lock:
            return {name: len(subscribers) for name, subscribers in self._channels.items()}

    def deliver(self, record: Record) -> None:
        """Queue *record* for every local subscriber of its stream (the broker's callback)."""
        with self._lock:
            if record.stream is not None:
                subscribers = list(self._channels.get(record.stream, ()))
            elif len(record.channels) == 1:
                subscribers = list(self._channels.get(record.channels[0], ()))
            else:
                subscribers = list(dict.fromkeys(s for n in record.channels for s in self._channels.get(n, ())))
        self.published += 1
        callable_data = record.chunk is None
        delivered = 0
        for subscription in subscribers:
            chunk = None
            if callable_data:
                chunk = self._chunk_for(subscription, record, record.id)
                if chunk is None:
                    continue
            if subscription.queue(record, chunk):
                delivered += 1
            else:
                self._cut_off_slow(subscription)
        self.delivered += delivered

    def lost(self, stream: str | None, oldest_id: str | None) -> None:
        """Tell the local subscribers of *stream* (``None``: all) that events were lost here (the broker's callback).

        Each gets the loss event at this point of its stream.
        """
        subscribers = self.subscribers(self._channels if stream is None else (stream,))
        logger.warning("events of %s lost before id %s: telling %d subscribers", stream, oldest_id, len(subscribers))
        for subscription in subscribers:
            if not subscription.queue(Loss(stream, oldest_id)):
                self._cut_off_slow(subscription)

    def _cut_off_slow(self, subscription: Subscription) -> None:
        self.cut_off += 1
        logger.info("subscriber of %s cut off: its queue is full", subscription.channels)
        subscription.end(drop_queued=True)
        self.unregister(subscription)

    def count_refused(self) -> None:
        """Count one stream refused for ``max_subscribers``."""
        with self._lock:
            self.refused += 1

    def end_all(self, *, closing: bool) -> bool:
        """End every stream normally and unregister it (a drain; with *closing*, for good).

        ``False`` when *closing* and it was closed already (nothing done).
        """
        with self._lock:
            if closing and self.closed:
                return False
            if closing:
                self.closed = True
            else:
                self.draining = True
            subscriptions = list(self._registered)
            self._channels.clear()
            self._registered.clear()
            self.ticker.clear()
        watched = [name for subscription in subscriptions for name in subscription.channels]
        if watched:
            self._unwatch(watched)  # one request for all of them: each channel counted as often as named
        for subscription in subscriptions:
            subscription.end()
        if closing:
            self.ticker.close()
        return True

    def figures(self) -> dict[str, Any]:
        """The counters, as ``stats()`` gives them."""
        return {
            "subscribers": self.per_channel(),
            "subscriptions": self.count,
            "events_published": self.published,
            "events_delivered": self.delivered,
            "slow_subscribers_cut": self.cut_off,
            "streams_refused": self.refused,
            "closed": self.closed,
            "draining": self.draining,
        }
