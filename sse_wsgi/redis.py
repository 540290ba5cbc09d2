"""The Redis broker: every process shares one event stream, one id sequence and one history.

Events live in one Redis Stream (``XADD ... MAXLEN ~ history``); its entry
ids are the event ids, global and increasing across processes and restarts
of the web servers. Each process runs one reader on one connection
(``XREAD BLOCK`` from the last id it saw) and fans events out to its own
subscribers, encoding each event once. When Redis goes away the reader
reconnects with bounded backoff and resumes from the last id seen, so
nothing that reached Redis is missed.
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

from ._validate import check_count
from .broker import Deliver, Message, Record, Replay
from .errors import BrokerUnavailable

__all__ = ["RedisBroker"]

logger = logging.getLogger(__name__)

Entry = tuple[str, dict[str, str]]  # a stream entry as redis-py answers it with decode_responses

_STREAM_ID = re.compile(r"([0-9]{1,20})-([0-9]{1,20})")
_REDIS_DOWN = (redis.ConnectionError, redis.TimeoutError)
READ_BLOCK_MS = 500  # one XREAD waits this long at most, so close() is prompt
READ_COUNT = 1000  # entries per XREAD
BACKOFF_START = 0.1  # seconds
BACKOFF_MAX = 5.0  # seconds
SOCKET_TIMEOUT = 5.0  # seconds, for commands other than the blocking read


def _seq(stream_id: str) -> tuple[int, int]:
    ms, _, n = stream_id.partition("-")
    return int(ms), int(n)


def _safe_url(url: str) -> str:
    """*url* with any password replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + netloc))


class RedisBroker:
    """A broker on a Redis server (5.0 or later; 7.0 or later for exact lost-history detection).

    :param client: a ``redis.Redis`` client for commands (publish, replay).
    :param reader: a second, dedicated ``redis.Redis`` client for the blocking reader.
    :param history: events kept in the stream (all channels together;
        trimmed approximately, so a little more may be kept).
    :param key: the stream's key.
    :param url: shown in logs and ``stats()`` (without password).

    Use :meth:`from_url` rather than building the clients yourself.
    """

    cross_process = True

    def __init__(
        self,
        client: redis.Redis,
        reader: redis.Redis,
        *,
        history: int = 1000,
        key: str = "sse_wsgi:events",
        url: str = "redis",
    ) -> None:
        check_count("history", history)
        if not isinstance(key, str) or not key:
            raise TypeError(f"key must be a non-empty str: {key!r}")
        self._client = client
        self._reader_client = reader
        self._history = history
        self._key = key
        self._url = _safe_url(url)
        self._deliver: Deliver | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_id = "0-0"
        self._connected = False
        self._reconnects = 0
        try:
            self._client.ping()
        except _REDIS_DOWN as error:
            self._close_clients()
            raise BrokerUnavailable(f"cannot reach Redis at {self._url}: {error}") from error

    @classmethod
    def from_url(cls, url: str, *, history: int = 1000, key: str = "sse_wsgi:events") -> RedisBroker:
        """Connect to the Redis server at *url* (``redis://[:password@]host:6379/0``)."""
        if not isinstance(url, str):
            raise TypeError(f"url must be a str like 'redis://localhost:6379/0', not {type(url).__name__}")
        options = {"decode_responses": True, "socket_connect_timeout": SOCKET_TIMEOUT}
        client = redis.Redis.from_url(url, socket_timeout=SOCKET_TIMEOUT, **options)
        reader = redis.Redis.from_url(url, socket_timeout=SOCKET_TIMEOUT + READ_BLOCK_MS / 1000, **options)
        return cls(client, reader, history=history, key=key, url=url)

    # -- the reader ----------------------------------------------------------

    def start(self, deliver: Deliver) -> None:
        """Start the reader: from now on every event added to the stream is passed to *deliver*."""
        self._deliver = deliver
        try:
            self._last_id = self._head_id()
        except _REDIS_DOWN as error:
            raise BrokerUnavailable(f"cannot reach Redis at {self._url}: {error}") from error
        self._connected = True
        self._thread = threading.Thread(target=self._read_forever, name="sse-wsgi-redis-reader", daemon=True)
        self._thread.start()

    def _head_id(self) -> str:
        """The id of the newest entry ever added to the stream (``0-0`` when there is none)."""
        info = self._stream_info()
        return "0-0" if info is None else str(info["last-generated-id"])

    def _read_forever(self) -> None:
        backoff = BACKOFF_START
        while not self._stop.is_set():
            try:
                answer = cast(
                    "list[tuple[str, list[Entry]]] | None",
                    self._reader_client.xread({self._key: self._last_id}, count=READ_COUNT, block=READ_BLOCK_MS),
                )
            except _REDIS_DOWN as error:
                if self._connected:
                    logger.warning("lost Redis at %s (%s); reconnecting from id %s", self._url, error, self._last_id)
                self._connected = False
                self._stop.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            if not self._connected:
                self._reconnects += 1
                logger.warning("Redis at %s is back; resuming after id %s", self._url, self._last_id)
            self._connected = True
            backoff = BACKOFF_START
            for _key, entries in answer or ():
                for stream_id, fields in entries:
                    self._dispatch(stream_id, fields)

    def _dispatch(self, stream_id: str, fields: dict[str, str]) -> None:
        self._last_id = stream_id
        deliver = self._deliver
        if deliver is None or self._stop.is_set():
            return
        try:
            deliver(self._record(stream_id, fields))
        except Exception:  # the reader must survive any one event
            logger.exception("could not deliver Redis stream entry %s", stream_id)

    def _record(self, stream_id: str, fields: dict[str, str]) -> Record:
        message = Message(
            channels=tuple(json.loads(fields["c"])),
            data=fields.get("d", ""),
            event=fields.get("e"),
            id=fields.get("i"),
            retry=int(fields["r"]) if "r" in fields else None,
        )
        wire_id = message.id if message.id is not None else stream_id
        return Record.from_message(_seq(stream_id), wire_id, message)

    # -- publishing and history ----------------------------------------------

    def publish(self, message: Message) -> str:
        """Add *message* to the stream; return its id (the caller's own id when given)."""
        fields: dict[str, str | int] = {"c": json.dumps(message.channels), "d": message.data}
        if message.event is not None:
            fields["e"] = message.event
        if message.id is not None:
            fields["i"] = message.id
        if message.retry is not None:
            fields["r"] = message.retry
        try:
            stream_id = self._client.xadd(self._key, fields, maxlen=self._history, approximate=True)  # type: ignore[arg-type]
        except _REDIS_DOWN as error:
            raise BrokerUnavailable(f"event not published: Redis at {self._url} is unreachable ({error})") from error
        return message.id if message.id is not None else str(stream_id)

    def replay(self, channels: Iterable[str], last_event_id: str) -> Replay | None:
        """The stream's entries on *channels* after *last_event_id*, in order; ``None`` for an unknown id."""
        wanted = set(channels)
        try:
            after = last_event_id if _STREAM_ID.fullmatch(last_event_id) else self._find_custom_id(last_event_id)
            if after is None:
                return None
            info = self._stream_info()
            lost = False
            if info is not None and _seq(after) > _seq(info["last-generated-id"]):
                lost, after = True, "0-0"  # an id from another Redis, or from before its data was lost
            entries = cast("list[Entry]", self._client.xrange(self._key, min=f"({after}", max="+"))
        except _REDIS_DOWN as error:
            raise BrokerUnavailable(f"history unavailable: Redis at {self._url} is unreachable ({error})") from error
        if info is not None and not lost:
            lost = self._trimmed_past(info, after)
        records = [self._record(i, f) for i, f in entries if wanted.intersection(json.loads(f["c"]))]
        oldest = info["first-entry"][0] if info is not None and info.get("first-entry") else None
        return Replay(records, lost=lost, oldest_id=oldest, after_seq=_seq(after))

    def _stream_info(self) -> dict[str, Any] | None:
        try:
            return dict(self._client.xinfo_stream(self._key))
        except redis.ResponseError:  # no such key yet
            return None

    def _trimmed_past(self, info: dict[str, Any], after: str) -> bool:
        """True when entries newer than *after* may have been trimmed away.

        Trimmed entries are the oldest ones, so that is when the oldest entry
        kept is newer than *after* and some entries were removed (Redis 7
        counts the entries ever added; before 7, a full stream counts as
        trimmed).
        """
        first = info.get("first-entry")
        if first is None or _seq(first[0]) <= _seq(after):
            return False
        added = info.get("entries-added")
        if added is not None:
            return int(added) > int(info["length"])
        return int(info["length"]) >= self._history

    def _find_custom_id(self, wanted: str) -> str | None:
        """The stream id of the newest entry published with the caller's id *wanted*."""
        newest_first = cast("list[Entry]", self._client.xrevrange(self._key, max="+", min="-", count=self._history))
        for stream_id, fields in newest_first:
            if fields.get("i") == wanted:
                return str(stream_id)
        return None

    def stats(self) -> dict[str, Any]:
        """History and connection figures."""
        figures: dict[str, Any] = {
            "broker": "redis",
            "url": self._url,
            "key": self._key,
            "connected": self._connected,
            "last_seen_id": self._last_id,
            "reconnects": self._reconnects,
            "history_size": None,
            "first_id": None,
            "last_id": None,
        }
        try:
            info = self._stream_info()
        except _REDIS_DOWN:
            return figures
        if info is not None:
            figures["history_size"] = int(info["length"])
            figures["first_id"] = info["first-entry"][0] if info.get("first-entry") else None
            figures["last_id"] = info["last-entry"][0] if info.get("last-entry") else None
        return figures

    def close(self) -> None:
        """Stop the reader (within about a second) and close the connections."""
        self._stop.set()
        self._deliver = None
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(READ_BLOCK_MS / 1000 + SOCKET_TIMEOUT)
        self._close_clients()

    def _close_clients(self) -> None:
        for client in (self._client, self._reader_client):
            client.close()
