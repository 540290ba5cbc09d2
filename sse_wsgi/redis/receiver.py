"""This process's receiving side: one pub/sub connection per Redis server or cluster master, one dispatcher.

Routed delivery: the process subscribes to the live channel of each
channel that has local subscribers (:meth:`Receiver.watch`), on the
connection to the node that owns it, and unsubscribes when the last local
subscriber leaves, so it receives only the events its subscribers want.

Each connection (a :class:`_Link`) is read by a thread of its own, which
handles what it reads (confirmations, events, its own end) at once, under
the receiver's lock; a dispatcher thread takes the subscribers' requests
(watch, unwatch) from a bounded inbox and retries what waits for a
connection, under the same lock. An event thus goes from the socket to the
subscribers' queues in the thread that read it, with no hand-over (under
gevent, a hand-over costs a turn of the hub behind every stream's write).
Per channel the receiver keeps the position of the last event it
delivered, and it delivers each channel's events in order with no gap and
no duplicate:

- a subscription, once Redis confirms it, starts at the channel's head (a
  new channel) or catches up from the history after the last position (a
  channel subscribed again after an outage or a failover);
- an event whose number is not the next one makes it read the history in
  between; what the history no longer holds (trimmed, expired, a Redis that
  lost its data, a failover that lost writes) is reported to the channel's
  subscribers through the ``lost`` callback, never skipped silently;
- a connection that goes down leaves its channels waiting, with their
  positions; they are subscribed again, on whichever master now owns them,
  with a backoff, and catch up from there.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis

from ..broker import Deliver, Lost, Record
from ..errors import BrokerUnavailable
from .history import REDIS_DOWN, History, parse_live
from .positions import Position
from .topology import Topology

__all__ = ["Receiver"]

logger = logging.getLogger(__name__)

INBOX_SIZE = 10_000  # subscribers' requests waiting for the dispatcher
POLL = 0.5  # seconds a thread waits at most before it looks at its stop flag
WATCH_TIMEOUT = 5.0  # seconds a subscriber waits for Redis to confirm a new channel
BACKOFF_START = 0.1  # seconds
BACKOFF_MAX = 5.0  # seconds
_CONNECTION_DOWN = (*REDIS_DOWN, OSError)


class _Waiter:
    """A subscriber waiting until its new channels are subscribed."""

    __slots__ = ("done", "error", "remaining")

    def __init__(self) -> None:
        self.remaining: set[str] = set()
        self.error: Exception | None = None
        self.done = threading.Event()

    def settle(self, channel: str, error: Exception | None = None) -> None:
        self.remaining.discard(channel)
        if error is not None:
            self.error = error
        if error is not None or not self.remaining:
            self.done.set()


class _Link:
    """One pub/sub connection to one node, read by a thread that hands each reply to *on_reply*.

    When the connection fails, the thread calls *on_down* and ends.
    """

    def __init__(
        self,
        address: str,
        connection: redis.Connection,
        on_reply: Callable[[_Link, list[Any]], None],
        on_down: Callable[[_Link, Exception], None],
    ) -> None:
        self.address = address
        self.channels = 0  # channels subscribed here (for stats)
        self._connection = connection
        self._on_reply = on_reply
        self._on_down = on_down
        self._stop = threading.Event()
        connection.connect()
        self._thread = threading.Thread(target=self._read, name=f"sse-wsgi-redis-link-{address}", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return not self._stop.is_set()

    def send(self, *command: str) -> None:
        """Send a (un)subscribe command, under the receiver's lock (the reply comes to *on_reply*)."""
        self._connection.send_command(*command)

    def _read(self) -> None:
        try:
            while not self._stop.is_set():
                if self._connection.can_read(timeout=POLL):
                    reply = self._connection.read_response()
                    if not self._stop.is_set():
                        self._on_reply(self, reply)
        except _CONNECTION_DOWN as error:
            if not self._stop.is_set():
                self._on_down(self, error)
        finally:
            self._connection.disconnect()

    def close(self, wait: float = 0) -> None:
        self._stop.set()
        if wait and self._thread is not threading.current_thread():
            self._thread.join(wait)


class Receiver:
    """Delivers the events of the watched channels, from their nodes, in each channel's order.

    :param topology: where each channel lives.
    :param history: the channels' histories (to read what a gap or an outage missed).
    :param deliver: called with each record, from the thread of the link that read it.
    :param lost: called with a channel whose events could not be recovered.
    """

    def __init__(self, topology: Topology, history: History, deliver: Deliver, lost: Lost) -> None:
        self._topology = topology
        self._history = history
        self._deliver = deliver
        self._lost = lost
        commands = ("SSUBSCRIBE", "SUNSUBSCRIBE") if topology.sharded else ("SUBSCRIBE", "UNSUBSCRIBE")
        self._subscribe_command, self._unsubscribe_command = commands
        self._inbox: queue.Queue[tuple[Any, ...]] = queue.Queue(INBOX_SIZE)
        self._lock = threading.Lock()  # made here, in the process (and after the monkey-patching) that uses it
        # Changed under the lock only (other threads read single entries):
        self._watchers: dict[str, int] = {}  # channel -> local watch() calls not undone
        self._positions: dict[str, Position | None] = {}  # channel -> last delivered (None: nothing yet)
        self._homes: dict[str, _Link] = {}  # channel -> the link it is subscribed on
        self._homeless: set[str] = set()  # watched channels with no subscription now
        self._waiters: dict[str, list[_Waiter]] = {}
        self._channel_of: dict[str, str] = {}  # live channel name -> channel, for watched channels
        self._unsubscribing: dict[str, int] = {}  # live channel name -> our unsubscribes not confirmed yet
        self._links: dict[str, _Link] = {}
        self._retry_at: float | None = None
        self._backoff = BACKOFF_START
        self.reconnects = 0
        self.gaps = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sse-wsgi-redis-receiver", daemon=True)
        self._thread.start()

    # -- what other threads call ---------------------------------------------------------

    @property
    def running(self) -> bool:
        """True until :meth:`close`, while the dispatcher runs."""
        return self._thread.is_alive() and not self._stop.is_set()

    @property
    def connected(self) -> bool:
        """True when every watched channel is subscribed."""
        return self.running and not self._homeless

    def watch(self, channels: Sequence[str]) -> None:
        """Count a local subscriber of *channels*; return once each is subscribed, or raise BrokerUnavailable."""
        waiter = _Waiter()
        try:
            self._inbox.put(("watch", tuple(channels), waiter), timeout=WATCH_TIMEOUT)
        except queue.Full:
            raise BrokerUnavailable("the Redis receiver is overloaded: try again") from None
        if not waiter.done.wait(WATCH_TIMEOUT):
            raise BrokerUnavailable(f"Redis did not confirm the subscription to {list(waiter.remaining)} in time")
        if waiter.error is not None:
            raise BrokerUnavailable(f"cannot subscribe on Redis: {waiter.error}") from waiter.error

    def unwatch(self, channels: Sequence[str]) -> None:
        """Undo one :meth:`watch` of *channels*."""
        try:
            self._inbox.put(("unwatch", tuple(channels)), timeout=WATCH_TIMEOUT)
        except queue.Full:
            logger.warning("the Redis receiver is stuck: %d channels stay subscribed", len(channels))

    def position(self, channel: str) -> Position | None:
        """The position of the last event of *channel* delivered here."""
        return self._positions.get(channel)

    def positions(self) -> dict[str, Position | None]:
        """The last position delivered for each watched channel."""
        return dict(self._positions)

    def nodes(self) -> dict[str, dict[str, Any]]:
        """Per node with a connection: whether it is up and how many channels it carries."""
        links = list(self._links.items())
        return {address: {"connected": link.alive, "channels": link.channels} for address, link in links}

    def close(self) -> None:
        """Stop the dispatcher and the links (within about a second)."""
        self._stop.set()
        try:
            self._inbox.put_nowait(("stop",))
        except queue.Full:
            pass
        if self._thread is not threading.current_thread():
            self._thread.join(POLL * 2)
        for link in list(self._links.values()):
            link.close(wait=POLL * 2)

    # -- the dispatcher ------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            timeout = POLL if self._retry_at is None else min(POLL, max(0.0, self._retry_at - time.monotonic()))
            try:
                item = self._inbox.get(timeout=timeout)
            except queue.Empty:
                item = None
            try:
                with self._lock:
                    if item is not None and item[0] == "watch":
                        self._on_watch(item[1], item[2])
                    elif item is not None and item[0] == "unwatch":
                        self._on_unwatch(item[1])
                    if self._retry_at is not None and time.monotonic() >= self._retry_at:
                        self._resubscribe_homeless()
            except Exception:  # the dispatcher must survive any one item
                logger.exception("the Redis receiver failed on %r", item[0] if item else "a retry")

    def _link_read(self, link: _Link, reply: list[Any]) -> None:
        """What a link read: handled in its thread, under the lock."""
        try:
            with self._lock:
                if self._links.get(link.address) is link:
                    self._on_reply(link, reply)
        except Exception:  # the link must survive any one reply
            logger.exception("the Redis receiver failed on a %r from %s", reply[0] if reply else reply, link.address)

    def _link_down(self, link: _Link, error: Exception) -> None:
        with self._lock:
            self._on_down(link, error)

    def _on_watch(self, channels: tuple[str, ...], waiter: _Waiter) -> None:
        for channel in channels:
            count = self._watchers.get(channel, 0)
            self._watchers[channel] = count + 1
            if channel in self._positions:
                continue  # subscribed, or waiting to be again with its position: nothing is missed
            waiter.remaining.add(channel)
            self._waiters.setdefault(channel, []).append(waiter)
            if count == 0:
                self._subscribe(channel)
        if not waiter.remaining:
            waiter.done.set()

    def _on_unwatch(self, channels: tuple[str, ...]) -> None:
        for channel in channels:
            count = self._watchers.get(channel, 0) - 1
            if count > 0:
                self._watchers[channel] = count
                continue
            self._watchers.pop(channel, None)
            self._positions.pop(channel, None)
            self._homeless.discard(channel)
            self._waiters.pop(channel, None)
            live = self._history.keys(channel).live
            self._channel_of.pop(live, None)
            link = self._homes.pop(channel, None)
            if link is not None and link.alive:
                link.channels -= 1
                self._unsubscribing[live] = self._unsubscribing.get(live, 0) + 1
                try:
                    link.send(self._unsubscribe_command, live)
                except _CONNECTION_DOWN:
                    pass  # the link reports itself down

    def _subscribe(self, channel: str) -> None:
        live = self._history.keys(channel).live
        self._channel_of[live] = channel
        try:
            link = self._link_to(self._topology.node_of(live))
            link.send(self._subscribe_command, live)
        except _CONNECTION_DOWN as error:
            self._lose_home(channel, error)
            return
        link.channels += 1
        self._homes[channel] = link

    def _link_to(self, address: str) -> _Link:
        link = self._links.get(address)
        if link is None or not link.alive:
            connection = self._topology.receiving_connection(address)
            link = self._links[address] = _Link(address, connection, self._link_read, self._link_down)
        return link

    def _lose_home(self, channel: str, error: Exception) -> None:
        """*channel* has no subscription now: subscribers still waiting for it fail; it is retried."""
        for waiter in self._waiters.pop(channel, ()):
            waiter.settle(channel, error)
        self._homeless.add(channel)
        if self._retry_at is None:
            self._retry_at = time.monotonic() + self._backoff
            self._backoff = min(self._backoff * 2, BACKOFF_MAX)

    def _on_down(self, link: _Link, error: Exception) -> None:
        if self._links.get(link.address) is not link:
            return
        del self._links[link.address]
        link.close()
        orphans = [channel for channel, home in self._homes.items() if home is link]
        if orphans:
            logger.warning("lost Redis at %s (%s): %d channels wait to resubscribe", link.address, error, len(orphans))
        for channel in orphans:
            del self._homes[channel]
            self._lose_home(channel, error)
        for live in [live for live in self._unsubscribing if self._channel_of.get(live) is None]:
            del self._unsubscribing[live]  # never confirmed now, and not needed

    def _resubscribe_homeless(self) -> None:
        self._retry_at = None
        try:
            self._topology.refresh()
        except REDIS_DOWN as error:
            logger.debug("Redis topology not available yet: %s", error)
        waiting = list(self._homeless)
        self._homeless.clear()
        for channel in waiting:
            self._subscribe(channel)
        if waiting and not self._homeless:
            self.reconnects += 1
            self._backoff = BACKOFF_START
            logger.warning("Redis is back: %d channels subscribed again, catching up from history", len(waiting))

    def _on_reply(self, link: _Link, reply: list[Any]) -> None:
        kind, live = reply[0], reply[1]
        channel = self._channel_of.get(live)
        if kind in ("message", "smessage"):
            if channel is not None and channel in self._positions and self._homes.get(channel) is link:
                self._receive(channel, parse_live(channel, reply[2]))
        elif kind in ("subscribe", "ssubscribe"):
            if channel is not None and self._homes.get(channel) is link:
                self._sync(channel, link)
        elif kind in ("unsubscribe", "sunsubscribe"):
            pending = self._unsubscribing.get(live, 0)
            if pending > 1:
                self._unsubscribing[live] = pending - 1
            elif pending == 1:
                del self._unsubscribing[live]
            elif channel is not None and self._homes.get(channel) is link:
                del self._homes[channel]  # Redis moved its slot elsewhere
                link.channels -= 1
                self._lose_home(channel, ConnectionError(f"slot of {channel!r} moved away from {link.address}"))

    def _sync(self, channel: str, link: _Link) -> None:
        """A confirmed subscription: start at the head, or catch up from the channel's last position."""
        try:
            if channel in self._positions:
                self._catch_up(channel, self._positions[channel])
            else:
                self._positions[channel] = self._history.head(channel)
        except REDIS_DOWN as error:
            self._homes.pop(channel, None)
            link.channels -= 1
            self._lose_home(channel, error)
            return
        except Exception as error:  # nobody waits for this channel in vain; the caller logs it
            for waiter in self._waiters.pop(channel, ()):
                waiter.settle(channel, error)
            raise
        for waiter in self._waiters.pop(channel, ()):
            waiter.settle(channel)

    def _receive(self, channel: str, record: Record) -> None:
        known = self._positions[channel]
        position: Position = record.seq
        if known is None:
            in_order = position.n == 1
        elif position.epoch == known.epoch:
            if position.n <= known.n:
                return  # read from history already
            in_order = position.n == known.n + 1
        else:
            in_order = position.n == 1  # a new life of the channel (it expired), seen from its start
        if not in_order:
            try:
                self._catch_up(channel, known)
            except REDIS_DOWN as error:
                logger.warning("cannot read the history of %r to fill a gap (%s): retrying", channel, error)
                link = self._homes.pop(channel)
                link.channels -= 1
                self._lose_home(channel, error)
            return
        self._positions[channel] = position
        self._deliver(record)

    def _catch_up(self, channel: str, after: Position | None) -> None:
        """Deliver what *channel*'s history holds after *after*; report what it no longer holds."""
        [catchup] = self._history.read([(channel, after)])
        if catchup.lost:
            self.gaps += 1
            oldest = catchup.records[0][1].id if catchup.records else None
            logger.warning("events of %r after %s are lost to this process", channel, after)
            self._lost(channel, oldest)
            self._positions[channel] = catchup.head
        for _, record in catchup.records:
            self._positions[channel] = record.seq
            self._deliver(record)
