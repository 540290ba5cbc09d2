"""The Redis broker: every process shares one event stream, one id sequence and one history.

Events live in one Redis Stream under ``{key}:stream``. One Lua script
numbers and adds each event atomically: the entry id is ``<n>-0``, where
*n* counts every event ever published, and the wire id is
``<epoch>-<n>``, where the epoch (in ``{key}:meta``) is made when the
data is: a Redis that lost its data starts a new epoch, so an old id is
never mistaken for a new one. Because *n* has no holes, a process can
tell exactly when it missed events: its reader (one connection, ``XREAD
BLOCK`` from the last *n* it saw, in a thread or greenlet of the process
that serves the subscribers) finds the next *n* missing after a stall or
an outage longer than the history, and its subscribers get the
``history-lost`` event at that point instead of a silent gap. A resume
reads the stream and the counter in one transaction, so trimming cannot
slip between the check and the read.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Iterable
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

import redis

from ._process import fork_generation
from ._validate import check_count
from .broker import Deliver, Lost, Message, Record, Replay
from .errors import BrokerUnavailable
from .memory import new_epoch

__all__ = ["RedisBroker"]

logger = logging.getLogger(__name__)

Entry = tuple[str, dict[str, str]]  # a stream entry as redis-py answers it with decode_responses

_WIRE_ID = re.compile(r"([0-9a-f]{8})-([0-9]{1,19})")
_REDIS_DOWN = (redis.ConnectionError, redis.TimeoutError)
READ_BLOCK_MS = 500  # one XREAD waits this long at most, so close() is prompt
READ_COUNT = 1000  # entries per XREAD
BACKOFF_START = 0.1  # seconds
BACKOFF_MAX = 5.0  # seconds
SOCKET_TIMEOUT = 5.0  # seconds, for commands other than the blocking read

# KEYS: stream, meta, ids. ARGV: history, a new epoch (used if there is none),
# the caller's own id ("" for none), then the entry's field/value pairs.
_PUBLISH = """
local epoch = redis.call('HGET', KEYS[2], 'epoch')
if not epoch then
  epoch = ARGV[2]
  redis.call('HSET', KEYS[2], 'epoch', epoch)
end
local n = redis.call('HINCRBY', KEYS[2], 'n', 1)
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], n .. '-0', unpack(ARGV, 4))
if ARGV[3] ~= '' then
  redis.call('ZADD', KEYS[3], n, ARGV[3])
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', n - 2 * tonumber(ARGV[1]))
end
return {epoch, n}
"""


def _entry_n(stream_id: str) -> int:
    return int(stream_id.partition("-")[0])


def _safe_url(url: str) -> str:
    """*url* with any password replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + netloc))


class RedisBroker:
    """A broker on a Redis server (6.2 or later).

    :param client: a ``redis.Redis`` client for commands (publish, replay).
    :param reader: a second, dedicated ``redis.Redis`` client for the blocking reader.
    :param history: events kept in the stream (all channels together;
        trimmed approximately, so a little more may be kept).
    :param key: the prefix of this broker's keys (``{key}:stream``,
        ``{key}:meta``, ``{key}:ids``): apps sharing one Redis database with
        different keys never see each other's events.
    :param url: shown in logs and ``stats()`` (without password).

    Use :meth:`from_url` rather than building the clients yourself. The
    reader starts in the process that serves subscribers (see
    :meth:`start`), so a broker made before a fork works in every child.
    """

    cross_process = True

    def __init__(
        self,
        client: redis.Redis,
        reader: redis.Redis,
        *,
        history: int = 1000,
        key: str = "sse_wsgi",
        url: str = "redis",
    ) -> None:
        check_count("history", history)
        if not isinstance(key, str) or not key:
            raise TypeError(f"key must be a non-empty str: {key!r}")
        self._client = client
        self._reader_client = reader
        self.history = history
        self._key = key
        self._stream, self._meta, self._ids = f"{key}:stream", f"{key}:meta", f"{key}:ids"
        self._url = _safe_url(url)
        self._publish_script = client.register_script(_PUBLISH)
        self._deliver: Deliver | None = None
        self._lost: Lost | None = None
        self._stop: threading.Event | None = None  # made with the reader, in its own process
        self._thread: threading.Thread | None = None
        self._generation = -1
        self._epoch: str | None = None
        self._last_n = 0
        self._connected = False
        self._reconnects = 0
        self._gaps = 0
        try:
            self._client.ping()
        except _REDIS_DOWN as error:
            self._close_clients()
            raise BrokerUnavailable(f"cannot reach Redis at {self._url}: {error}") from error

    @classmethod
    def from_url(cls, url: str, *, history: int = 1000, key: str = "sse_wsgi") -> RedisBroker:
        """Connect to the Redis server at *url* (``redis://[:password@]host:6379/0``)."""
        if not isinstance(url, str):
            raise TypeError(f"url must be a str like 'redis://localhost:6379/0', not {type(url).__name__}")
        options = {"decode_responses": True, "socket_connect_timeout": SOCKET_TIMEOUT}
        client = redis.Redis.from_url(url, socket_timeout=SOCKET_TIMEOUT, **options)
        reader = redis.Redis.from_url(url, socket_timeout=SOCKET_TIMEOUT + READ_BLOCK_MS / 1000, **options)
        return cls(client, reader, history=history, key=key, url=url)

    # -- the reader ----------------------------------------------------------

    def _reading_here(self) -> bool:
        thread = self._thread
        return self._generation == fork_generation() and thread is not None and thread.is_alive()

    def start(self, deliver: Deliver, lost: Lost) -> None:
        """Start this process's reader, if it has none: every event published from now on reaches *deliver*."""
        if self._reading_here():
            return
        self._deliver, self._lost = deliver, lost
        try:
            self._epoch, self._last_n = self._current_epoch()
        except _REDIS_DOWN as error:
            raise BrokerUnavailable(f"cannot reach Redis at {self._url}: {error}") from error
        self._generation = fork_generation()
        self._connected = True
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._read_forever, args=(self._stop,), name="sse-wsgi-redis-reader", daemon=True
        )
        self._thread.start()

    def _current_epoch(self) -> tuple[str, int]:
        """The data's epoch (made now if there is none) and the number of the newest event."""
        pipe = self._client.pipeline(transaction=True)
        pipe.hsetnx(self._meta, "epoch", new_epoch())
        pipe.hmget(self._meta, ["epoch", "n"])
        _, (epoch, n) = pipe.execute()
        return str(epoch), int(n or 0)

    def _read_forever(self, stop: threading.Event) -> None:
        backoff = BACKOFF_START
        while not stop.is_set():
            try:
                if not self._connected:
                    self._check_epoch()
                answer = cast(
                    "list[tuple[str, list[Entry]]] | None",
                    self._reader_client.xread(
                        {self._stream: f"{self._last_n}-0"}, count=READ_COUNT, block=READ_BLOCK_MS
                    ),
                )
            except _REDIS_DOWN as error:
                if self._connected:
                    logger.warning("lost Redis at %s (%s); reconnecting after event %d", self._url, error, self._last_n)
                self._connected = False
                stop.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            if not self._connected:
                self._reconnects += 1
                logger.warning("Redis at %s is back; resuming after event %d", self._url, self._last_n)
            self._connected = True
            backoff = BACKOFF_START
            for _key, entries in answer or ():
                for stream_id, fields in entries:
                    if stop.is_set():
                        return
                    self._dispatch(stream_id, fields)

    def _check_epoch(self) -> None:
        """After an outage: if Redis lost its data (a new epoch), say so and read the new data from its start."""
        epoch, _ = self._current_epoch()
        if epoch != self._epoch:
            logger.warning("Redis at %s lost its data (epoch %s, was %s)", self._url, epoch, self._epoch)
            self._epoch, self._last_n = epoch, 0
            self._report_loss(None)

    def _dispatch(self, stream_id: str, fields: dict[str, str]) -> None:
        n = _entry_n(stream_id)
        record = self._record(self._epoch, n, fields)
        if n != self._last_n + 1:  # trimmed before this process read them
            self._report_loss(record.id)
        self._last_n = n
        deliver = self._deliver
        if deliver is None:
            return
        try:
            deliver(record)
        except Exception:  # the reader must survive any one event
            logger.exception("could not deliver Redis stream entry %s", stream_id)

    def _report_loss(self, oldest_id: str | None) -> None:
        self._gaps += 1
        lost = self._lost
        if lost is None:
            return
        try:
            lost(oldest_id)
        except Exception:  # the reader must survive it
            logger.exception("could not report lost events")

    @staticmethod
    def _record(epoch: str | None, n: int, fields: dict[str, str]) -> Record:
        message = Message(
            channels=tuple(json.loads(fields["c"])),
            data=fields.get("d", ""),
            event=fields.get("e"),
            id=fields.get("i"),
            retry=int(fields["r"]) if "r" in fields else None,
        )
        wire_id = message.id if message.id is not None else f"{epoch}-{n}"
        return Record.from_message(n, wire_id, message)

    # -- publishing and history ----------------------------------------------

    def publish(self, message: Message) -> str:
        """Number and add *message* to the stream in one step; return its wire id (the caller's own when given)."""
        fields: list[str | int] = ["c", json.dumps(message.channels), "d", message.data]
        if message.event is not None:
            fields += ["e", message.event]
        if message.id is not None:
            fields += ["i", message.id]
        if message.retry is not None:
            fields += ["r", message.retry]
        keys = [self._stream, self._meta, self._ids]
        try:
            epoch, n = self._publish_script(keys, [self.history, new_epoch(), message.id or "", *fields])
        except _REDIS_DOWN as error:
            raise BrokerUnavailable(f"event not published: Redis at {self._url} is unreachable ({error})") from error
        return message.id if message.id is not None else f"{epoch}-{n}"

    def replay(self, channels: Iterable[str], last_event_id: str) -> Replay | None:
        """The stream's entries on *channels* after *last_event_id*, in order; ``None`` for an unknown id.

        The work is bounded by the history: an id of this epoch reads the
        entries after it, an id of another epoch (or of the future) counts
        as lost and reads what the stream keeps, and any other id is looked
        up among the caller's own ids (one sorted-set lookup).
        """
        wanted = set(channels)
        try:
            match = _WIRE_ID.fullmatch(last_event_id)
            custom_n = None if match else self._client.zscore(self._ids, last_event_id)
            if match is None and custom_n is None:
                return None
            pipe = self._client.pipeline(transaction=True)
            pipe.hmget(self._meta, ["epoch", "n"])
            after = int(custom_n) if custom_n is not None else int(match.group(2))  # type: ignore[union-attr]
            pipe.xrange(self._stream, min=f"{after + 1}-0", max="+")
            (epoch, head), entries = pipe.execute()
            if (match is not None and match.group(1) != epoch) or after > int(head or 0):
                after = 0  # another life's id, or one never given out: what is kept, after the loss event
                entries = cast("list[Entry]", self._client.xrange(self._stream, min="-", max="+"))
                lost = True
            else:
                first = _entry_n(entries[0][0]) if entries else int(head or 0) + 1
                lost = first != after + 1
        except _REDIS_DOWN as error:
            raise BrokerUnavailable(f"history unavailable: Redis at {self._url} is unreachable ({error})") from error
        records = [self._record(epoch, _entry_n(i), f) for i, f in entries]
        oldest_id = records[0].id if records else None
        matching = [r for r in records if wanted.intersection(r.channels)]
        return Replay(matching, lost=lost, oldest_id=oldest_id, after_seq=after)

    def stats(self) -> dict[str, Any]:
        """History and connection figures (``connected`` is this process's reader)."""
        reading = self._reading_here()
        figures: dict[str, Any] = {
            "broker": "redis",
            "url": self._url,
            "key": self._key,
            "reader_running": reading,
            "connected": reading and self._connected,
            "epoch": self._epoch,
            "last_seen_id": f"{self._epoch}-{self._last_n}" if reading else None,
            "reconnects": self._reconnects,
            "gaps_reported": self._gaps,
            "history_size": None,
            "first_id": None,
            "last_id": None,
        }
        try:
            pipe = self._client.pipeline(transaction=True)
            pipe.hget(self._meta, "epoch")
            pipe.xlen(self._stream)
            pipe.xrange(self._stream, count=1)
            pipe.xrevrange(self._stream, count=1)
            epoch, length, first, last = pipe.execute()
        except _REDIS_DOWN:
            return figures
        figures["history_size"] = int(length)
        if first and last and epoch:
            figures["first_id"] = self._record(epoch, _entry_n(first[0][0]), first[0][1]).id
            figures["last_id"] = self._record(epoch, _entry_n(last[0][0]), last[0][1]).id
        return figures

    def close(self) -> None:
        """Stop the reader (within about a second) and close the connections."""
        if self._stop is not None:
            self._stop.set()
        self._deliver = self._lost = None
        thread = self._thread
        if self._reading_here() and thread is not None and thread is not threading.current_thread():
            thread.join(READ_BLOCK_MS / 1000 + SOCKET_TIMEOUT)
        self._close_clients()

    def _close_clients(self) -> None:
        for client in (self._client, self._reader_client):
            client.close()
