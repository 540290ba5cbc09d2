"""This process's receiving side: one pub/sub connection per Redis server or cluster master, one dispatcher.

Routed delivery: the process subscribes to the live channel of each
channel that has local subscribers (:meth:`Receiver.watch`), on the
connection to the node that owns it, and unsubscribes when the last local
subscriber leaves, so it receives only the events its subscribers want.

Each connection (a :class:`_Link`) has a thread of its own: it connects,
reads, and handles what it reads (confirmations, events) at once, so an
event goes from the socket to the subscribers' queues in the thread that
read it, with no hand-over. A dispatcher thread takes the subscribers'
requests (watch, unwatch) from a bounded inbox and retries what waits for
a connection. Per channel the receiver keeps one record (:class:`_Watched`):
how many local subscribers want it, the position of the last event it
delivered, the link it is subscribed on, and who waits for it. It delivers
each channel's events in order with no gap and no duplicate:

- a subscription, once Redis confirms it, starts at the channel's head (a
  new channel) or catches up from the history after the last position (a
  channel subscribed again after an outage or a failover);
- an event whose number is not the next one makes it read the history in
  between; what the history no longer holds (trimmed, expired, a Redis that
  lost its data, a failover that lost writes) is reported to the channel's
  subscribers through the ``lost`` callback, never skipped silently;
- a link that fails **for any reason** (a reset, an error reply such as
  ``-BUSY`` or ``-MOVED``, a peer that stops answering) hands its channels
  back: they are subscribed again, with a backoff, on whichever node the
  refreshed topology now names, and catch up from their positions.

Liveness: a link that has read nothing for a third of ``health_check``
seconds sends ``PING``; one that has read nothing for ``health_check``
seconds counts as dead (a frozen or vanished host, a partition, a relay
that went silent), so a silent failure is noticed within that bound.

Locks: the receiver's lock guards the records and is held only for work in
memory (and for delivery, which only queues); connecting, refreshing the
topology and reading history happen outside it, so a frozen node stalls
only its own channels. Lock order: the receiver's lock, then the
publisher's (taken inside ``deliver`` and ``lost``).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis

from ..broker import Deliver, Lost
from ..errors import BrokerUnavailable
from .catchup import Catchup
from .history import REDIS_ERRORS, History, parse_live
from .positions import Position
from .topology import Topology

__all__ = ["DEFAULT_HEALTH_CHECK", "Receiver"]

logger = logging.getLogger(__name__)

INBOX_SIZE = 10_000  # subscribers' requests waiting for the dispatcher
POLL = 0.5  # seconds a thread waits at most before it looks at its stop flag
WATCH_TIMEOUT = 5.0  # seconds a subscriber waits for Redis to confirm a new channel
BACKOFF_START = 0.1  # seconds
BACKOFF_MAX = 5.0  # seconds
DEFAULT_HEALTH_CHECK = 15.0  # seconds without a byte from a node before its connection counts as dead
_LINK_FAILURES = (*REDIS_ERRORS, OSError, ValueError)  # what a link's thread ends on (ValueError: a bad reply)


class LinkSilent(redis.ConnectionError):
    """A node sent nothing, not even a reply to ``PING``, for the health-check period."""


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


class _Watched:
    """One watched channel, changed under the receiver's lock only."""

    __slots__ = ("home", "live", "name", "position", "started", "waiters", "watchers")

    def __init__(self, name: str, live: str) -> None:
        self.name = name
        self.live = live  # its pub/sub channel
        self.watchers = 0  # local watch() calls not undone
        self.started = False  # True once positioned: at its head, or at what was delivered
        self.position: Position | None = None  # the last event delivered (None: none yet)
        self.home: _Link | None = None  # the link it is subscribed on (None: waiting for one)
        self.waiters: list[_Waiter] = []


class _Link:
    """One pub/sub connection to one node, connected and read by a thread of its own.

    The thread hands each reply but ``pong`` to *on_reply*; when the link
    fails for any reason (it cannot connect, the connection breaks, an error
    reply, silence for *health_check* seconds), it calls *on_down* once and ends.
    """

    def __init__(
        self,
        address: str,
        connection: redis.Connection,
        on_reply: Callable[[_Link, list[Any]], None],
        on_down: Callable[[_Link, Exception], None],
        health_check: float,
    ) -> None:
        self.address = address
        self.channels = 0  # channels subscribed here (for stats)
        self._connection = connection
        self._on_reply = on_reply
        self._on_down = on_down
        self._health_check = health_check
        self._send_lock = threading.Lock()
        self._outbox: list[tuple[str, ...]] = []  # commands sent before the connection is up
        self._connected = False
        self._stop = threading.Event()
        self.last_read = time.monotonic()
        self._thread = threading.Thread(target=self._run, name=f"sse-wsgi-redis-link-{address}", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        """True until the link fails or is closed."""
        return not self._stop.is_set() and self._thread.is_alive()

    @property
    def healthy(self) -> bool:
        """True when connected and heard from within the health-check period."""
        return self.alive and self._connected and time.monotonic() - self.last_read < self._health_check

    def send(self, *command: str) -> None:
        """Send a (un)subscribe command (the reply comes to *on_reply*); queued until connected."""
        with self._send_lock:
            if not self._connected:
                self._outbox.append(command)
                return
        try:
            with self._send_lock:
                self._connection.send_command(*command, check_health=False)
        except _LINK_FAILURES as error:
            logger.debug("cannot send to %s (%s): the link's thread reports it down", self.address, error)

    def _run(self) -> None:
        try:
            self._connection.connect()
            with self._send_lock:
                for command in self._outbox:
                    self._connection.send_command(*command, check_health=False)
                self._outbox.clear()
                self._connected = True
            self.last_read = time.monotonic()
            self._read()
        except Exception as error:  # any failure hands the channels back (a broad catch: nothing may end it silently)
            if not isinstance(error, _LINK_FAILURES):
                logger.exception("the Redis link to %s failed", self.address)
            if not self._stop.is_set():
                self._stop.set()
                self._on_down(self, error)
        finally:
            self._stop.set()
            self._connection.disconnect()

    def _read(self) -> None:
        pinged = 0.0
        while not self._stop.is_set():
            if self._connection.can_read(timeout=POLL):
                reply = self._connection.read_response()
                self.last_read = time.monotonic()
                if not self._stop.is_set() and not (isinstance(reply, list) and reply and reply[0] == "pong"):
                    self._on_reply(self, reply)
                    self.last_read = time.monotonic()  # the time spent handling it (a history read) is no silence
                continue
            now = time.monotonic()
            silent = now - self.last_read
            if silent >= self._health_check:
                raise LinkSilent(f"nothing from {self.address} for {silent:.1f} s, not even a reply to PING")
            if silent >= self._health_check / 3 and pinged <= self.last_read:
                with self._send_lock:
                    self._connection.send_command("PING", check_health=False)
                pinged = now

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
    :param health_check: seconds without a byte from a node before its connection counts as dead.
    """

    def __init__(
        self,
        topology: Topology,
        history: History,
        deliver: Deliver,
        lost: Lost,
        *,
        health_check: float = DEFAULT_HEALTH_CHECK,
    ) -> None:
        self._topology = topology
        self._history = history
        self._deliver = deliver
        self._lost = lost
        self._health_check = health_check
        commands = ("SSUBSCRIBE", "SUNSUBSCRIBE") if topology.sharded else ("SUBSCRIBE", "UNSUBSCRIBE")
        self._subscribe_command, self._unsubscribe_command = commands
        self._inbox: queue.Queue[tuple[Any, ...]] = queue.Queue(INBOX_SIZE)
        self._lock = threading.Lock()  # made here, in the process (and after the monkey-patching) that uses it
        # Changed under the lock only (other threads read single entries):
        self._watched: dict[str, _Watched] = {}  # channel -> its record
        self._by_live: dict[str, _Watched] = {}  # live channel name -> the record of a watched channel
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
        """True when every watched channel is subscribed on a link heard from within the health check."""
        if not self.running:
            return False
        homes = [record.home for record in list(self._watched.values())]
        return all(home is not None and home.healthy for home in homes)

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
            error = waiter.error
            raise BrokerUnavailable(f"cannot subscribe on Redis: {type(error).__name__}: {error}") from error

    def unwatch(self, channels: Sequence[str]) -> None:
        """Undo one :meth:`watch` of *channels*."""
        try:
            self._inbox.put(("unwatch", tuple(channels)), timeout=WATCH_TIMEOUT)
        except queue.Full:
            logger.warning("the Redis receiver is stuck: %d channels stay subscribed", len(channels))

    def position(self, channel: str) -> Position | None:
        """The position of the last event of *channel* delivered here."""
        record = self._watched.get(channel)
        return None if record is None else record.position

    def positions(self) -> dict[str, Position | None]:
        """The last position delivered for each watched channel that has started."""
        return {name: record.position for name, record in list(self._watched.items()) if record.started}

    def nodes(self) -> dict[str, dict[str, Any]]:
        """Per node with a connection: whether it is up and heard from, and how many channels it carries."""
        links = list(self._links.items())
        return {address: {"connected": link.healthy, "channels": link.channels} for address, link in links}

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
                if item is not None and item[0] == "watch":
                    with self._lock:
                        wanted = self._on_watch(item[1], item[2])
                    self._subscribe(wanted)
                elif item is not None and item[0] == "unwatch":
                    with self._lock:
                        sends = self._on_unwatch(item[1])
                    for link, live in sends:
                        link.send(self._unsubscribe_command, live)
                if self._retry_at is not None and time.monotonic() >= self._retry_at:
                    self._resubscribe_homeless()
            except Exception:  # the dispatcher must survive any one item
                logger.exception("the Redis receiver failed on %r", item[0] if item else "a retry")

    def _on_watch(self, channels: tuple[str, ...], waiter: _Waiter) -> list[_Watched]:
        """Count the watch; the records that need a subscription now."""
        wanted = []
        for channel in channels:
            record = self._watched.get(channel)
            if record is None:
                live = self._history.keys(channel).live
                record = self._watched[channel] = self._by_live[live] = _Watched(channel, live)
            record.watchers += 1
            if record.started:
                continue  # subscribed, or waiting to be again with its position: nothing is missed
            waiter.remaining.add(channel)
            record.waiters.append(waiter)
            if record.watchers == 1:
                wanted.append(record)
        if not waiter.remaining:
            waiter.done.set()
        return wanted

    def _on_unwatch(self, channels: tuple[str, ...]) -> list[tuple[_Link, str]]:
        """Count the unwatch; the unsubscribe commands to send."""
        sends = []
        for channel in channels:
            record = self._watched.get(channel)
            if record is None:
                continue
            record.watchers -= 1
            if record.watchers > 0:
                continue
            del self._watched[channel]
            del self._by_live[record.live]
            link, record.home = record.home, None
            if link is not None and link.alive:
                link.channels -= 1
                self._unsubscribing[record.live] = self._unsubscribing.get(record.live, 0) + 1
                sends.append((link, record.live))
        return sends

    def _subscribe(self, records: list[_Watched]) -> None:
        """Subscribe *records* on the links to their nodes (links connect in their own threads)."""
        if not records:
            return
        homes = {record.name: self._topology.node_of(record.live) for record in records}
        sends = []
        with self._lock:
            for record in records:
                if self._watched.get(record.name) is not record or record.home is not None:
                    continue  # unwatched meanwhile, or already placed
                link = self._link_to(homes[record.name])
                record.home = link
                link.channels += 1
                sends.append((link, record.live))
        for link, live in sends:
            link.send(self._subscribe_command, live)

    def _link_to(self, address: str) -> _Link:
        """The link to *address*, made (not yet connected) if there is none alive; under the lock."""
        link = self._links.get(address)
        if link is None or not link.alive:
            connection = self._topology.receiving_connection(address)
            link = _Link(address, connection, self._link_read, self._link_down, self._health_check)
            self._links[address] = link
        return link

    def _resubscribe_homeless(self) -> None:
        self._retry_at = None
        try:
            self._topology.refresh()  # outside the lock: it may wait for a node
        except REDIS_ERRORS as error:
            logger.debug("Redis topology not available yet: %s", error)
        with self._lock:
            waiting = [record for record in self._watched.values() if record.home is None]
        self._subscribe(waiting)
        if waiting:
            self.reconnects += 1
            logger.warning("subscribing %d channels again on Redis, to catch up from history", len(waiting))

    def _lose_home(self, record: _Watched, error: Exception) -> None:
        """*record* has no subscription now: subscribers still waiting for it fail; it is retried. Under the lock."""
        if record.home is not None:
            record.home.channels -= 1
            record.home = None
        for waiter in record.waiters:
            waiter.settle(record.name, error)
        record.waiters.clear()
        if self._retry_at is None:
            self._retry_at = time.monotonic() + self._backoff
            self._backoff = min(self._backoff * 2, BACKOFF_MAX)

    # -- what the links' threads call ------------------------------------------------------

    def _link_down(self, link: _Link, error: Exception) -> None:
        with self._lock:
            if self._links.get(link.address) is link:
                del self._links[link.address]
            orphans = [record for record in self._watched.values() if record.home is link]
            if orphans:
                logger.warning(
                    "lost Redis at %s (%s): %d channels wait to resubscribe", link.address, error, len(orphans)
                )
            for record in orphans:
                self._lose_home(record, error)
            for live in [live for live in self._unsubscribing if live not in self._by_live]:
                del self._unsubscribing[live]  # never confirmed now, and not needed

    def _link_read(self, link: _Link, reply: list[Any]) -> None:
        """What a link read, handled in its thread: in memory under the lock, history reads outside it."""
        kind, live = reply[0], reply[1]
        if kind in ("message", "smessage"):
            self._on_message(link, live, reply[2])
        elif kind in ("subscribe", "ssubscribe"):
            self._on_subscribed(link, live)
        elif kind in ("unsubscribe", "sunsubscribe"):
            with self._lock:
                self._on_unsubscribed(link, live)

    def _on_message(self, link: _Link, live: str, text: str) -> None:
        with self._lock:
            record = self._by_live.get(live)
            if record is None or record.home is not link or not record.started:
                return
            event = parse_live(record.name, text)
            known = record.position
            if self._is_next(known, event.seq):
                record.position = event.seq
                self._deliver(event)
                return
            if known is not None and event.seq.epoch == known.epoch and event.seq.n <= known.n:
                return  # read from history already
        self._catch_up(link, record, known)

    @staticmethod
    def _is_next(known: Position | None, position: Position) -> bool:
        if known is None or position.epoch != known.epoch:
            return position.n == 1  # a new channel, or a new life of it (it expired), seen from its start
        return position.n == known.n + 1

    def _on_subscribed(self, link: _Link, live: str) -> None:
        """A confirmed subscription: start at the head, or catch up from the channel's last position."""
        with self._lock:
            record = self._by_live.get(live)
            if record is None or record.home is not link:
                return
            started, known = record.started, record.position
        self._catch_up(link, record, known, start=not started)

    def _catch_up(self, link: _Link, record: _Watched, after: Position | None, *, start: bool = False) -> None:
        """Read *record*'s history after *after* (outside the lock), then deliver it; *start*: take its head."""
        try:
            [catchup] = self._history.read([(record.name, after)], entries=not start)
        except REDIS_ERRORS as error:
            logger.warning("cannot read the history of %r (%s): subscribing again", record.name, error)
            with self._lock:
                if record.home is link:
                    self._lose_home(record, error)
            return
        with self._lock:
            current = self._watched.get(record.name) is record and record.home is link
            if not current or record.started != (not start) or record.position != after:
                return  # moved, unwatched or caught up meanwhile: whoever did it delivers
            if start:
                record.position, record.started = catchup.head, True
            else:
                self._apply(record, after, catchup)
            for waiter in record.waiters:
                waiter.settle(record.name)
            record.waiters.clear()
            self._backoff = BACKOFF_START

    def _apply(self, record: _Watched, after: Position | None, catchup: Catchup) -> None:
        """Deliver what the history held after *after*; report what it no longer holds. Under the lock."""
        if catchup.lost:
            self.gaps += 1
            oldest = catchup.records[0][1].id if catchup.records else None
            logger.warning("events of %r after %s are lost to this process", record.name, after)
            self._lost(record.name, oldest)
            record.position = catchup.head
        for _, event in catchup.records:
            record.position = event.seq
            self._deliver(event)

    def _on_unsubscribed(self, link: _Link, live: str) -> None:
        pending = self._unsubscribing.get(live, 0)
        if pending > 1:
            self._unsubscribing[live] = pending - 1
        elif pending == 1:
            del self._unsubscribing[live]
        else:
            record = self._by_live.get(live)
            if record is not None and record.home is link:  # Redis moved its slot elsewhere
                self._lose_home(
                    record, redis.ConnectionError(f"slot of {record.name!r} moved away from {link.address}")
                )
