"""Each channel's history on Redis: publish into it, and read what follows a position.

A channel keeps its last ``history`` events in a Redis Stream (trimmed
exactly, so it holds what the in-memory broker would) and expires
``ttl`` after its last event. An event is stored once per channel it was
published to, with the same payload; the stream entry id is
``<n>-<tag>`` (see :mod:`.positions`).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis
import redis.cluster

from ..broker import IDEMPOTENCY_TTL, MAX_HELD_SETS, Message, Record
from ..memory import new_epoch
from .catchup import UNKNOWN, Catchup, catch_up
from .keys import ChannelKeys, channel_keys
from .positions import NO_POSITION, Position, parse_token
from .scripts import HOLD, PUBLISH, READ

__all__ = ["REDIS_ERRORS", "CommandClient", "History", "Written", "parse_live"]

CommandClient = redis.Redis | redis.cluster.RedisCluster

#: What a Redis (or Redis Cluster) that is away, restarting, failing over, full or busy raises: a
#: connection error, a timeout, or an error reply (``-BUSY``, ``-MOVED``, ``-OOM``, ``-NOPERM``, ...).
REDIS_ERRORS = (redis.RedisError, redis.exceptions.RedisClusterException)


TAGS = 1_000_000  # an event's tag is below this: a failover's lost event and its successor differ but once in a million


@dataclass(frozen=True)
class Written:
    """An event as one channel took it.

    :param position: its position there.
    :param prev_id: the id of the channel's event before it (``0``: none), as its subscribers got it.
    :param prev: that event's position (``None``: none).
    :param held: the sets of several channels held by GRIP proxies on this channel.
    :param repeated: True when a publish with the same idempotency key wrote it before (nothing was written now).
    """

    position: Position
    prev_id: str
    prev: Position | None
    held: list[tuple[str, ...]]
    repeated: bool = False


def _payload(message: Message) -> str:
    return json.dumps([message.channels, message.data, message.event, message.id, message.retry], separators=(",", ":"))


def _record(channel: str, position: Position, payload: str) -> Record:
    channels, data, event, custom_id, retry = json.loads(payload)
    message = Message(tuple(channels), data, event, custom_id, retry)
    return Record.from_message(position, custom_id if custom_id is not None else position.token, message, channel)


def parse_live(channel: str, text: str) -> Record:
    """The record a live message of *channel* carries (``"<token> <payload>"``)."""
    token, _, payload = text.partition(" ")
    epoch, _, entry_id = token.partition("-")
    return _record(channel, Position.from_entry(epoch, entry_id), payload)


class History:
    """The channels' histories in one Redis (or Redis Cluster), under one key prefix."""

    def __init__(
        self,
        client: CommandClient,
        *,
        prefix: str,
        history: int,
        ttl: float,
        sharded: bool,
        idempotency_ttl: float = IDEMPOTENCY_TTL,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.history = history
        self._ttl_ms = max(1, round(ttl * 1000))
        self._idempotency_ms = max(1, round(idempotency_ttl * 1000))
        self._publish_command = "SPUBLISH" if sharded else "PUBLISH"
        self._atomic_reads = not sharded  # one server reads several channels in one transaction
        self._publish_script = client.register_script(PUBLISH)

    def keys(self, channel: str) -> ChannelKeys:
        """The Redis names of *channel*."""
        return channel_keys(self.prefix, channel)

    def publish(
        self, message: Message, idempotency_key: str, *, held_sets: bool = False, into: list[Written] | None = None
    ) -> list[Written]:
        """Add *message* to each of its channels in turn; what it became in each (appended to *into* as it goes).

        A channel that took a publish with the same *idempotency_key*
        within :data:`IDEMPOTENCY_TTL` seconds writes nothing again and
        answers as it did then (so a retry, redis-py's own or the caller's,
        never stores an event twice). With *held_sets*, each answer also
        lists the sets of several channels that GRIP proxies hold on that
        channel (at most :data:`MAX_HELD_SETS`).
        """
        payload = _payload(message)
        written = [] if into is None else into
        for channel in message.channels:
            keys = self.keys(channel)
            tag = secrets.randbelow(TAGS)
            args: list[str | int] = [self.history, self._ttl_ms, new_epoch(), tag, payload, message.id or ""]
            args += [self._publish_command, keys.live, channel, "1" if held_sets else "0", self._idempotency_ms]
            args += [self._ttl_ms, MAX_HELD_SETS]
            epoch, n, took_tag, prev_id, prev_token, repeated, *held = self._publish_script(
                keys=[keys.meta, keys.stream, keys.ids, keys.held, keys.done + idempotency_key], args=args
            )
            sets = [tuple(json.loads(names)) for names in held]
            position = Position(str(epoch), int(n), int(took_tag))
            written.append(Written(position, str(prev_id), parse_token(str(prev_token)), sets, repeated == "1"))
        return written

    def hold(self, channels: Sequence[str], ttl: float) -> bool:
        """Register the set *channels* (several) as held by a GRIP proxy on each of them, for *ttl* seconds.

        ``False``, registering nothing, when one of them already keeps
        :data:`MAX_HELD_SETS` other sets.
        """
        names = json.dumps(list(channels), separators=(",", ":"))
        ttl_ms = max(1, round(ttl * 1000))
        pipe = self.client.pipeline(transaction=False)
        for channel in channels:
            pipe.execute_command("EVAL", HOLD, 1, self.keys(channel).held, names, ttl_ms, MAX_HELD_SETS)
        taken = pipe.execute()
        if all(taken):
            return True
        pipe = self.client.pipeline(transaction=False)
        for channel, took in zip(channels, taken, strict=True):
            if took:
                pipe.zrem(self.keys(channel).held, names)
        pipe.execute()
        return False

    def heads(self, channels: Sequence[str]) -> list[tuple[str, Position | None]]:
        """Each channel's epoch (``""``: none) and the position of its last event (``None``: none)."""
        pipe = self.client.pipeline(transaction=False)
        for channel in channels:
            pipe.hmget(self.keys(channel).meta, "e", "p")
        return [(epoch or "", parse_token(last or NO_POSITION)) for epoch, last in pipe.execute()]

    def span(self, channels: Sequence[str]) -> tuple[int, str | None, str | None]:
        """Events kept on *channels* in all, and the ids of the oldest and the newest of them (for ``stats()``)."""
        pipe = self.client.pipeline(transaction=False)
        for channel in channels:
            keys = self.keys(channel)
            pipe.hget(keys.meta, "e")
            pipe.xlen(keys.stream)
            pipe.xrange(keys.stream, count=1)
            pipe.xrevrange(keys.stream, count=1)
        answers = pipe.execute()
        size, ends = 0, []
        for index, channel in enumerate(channels):
            epoch, length, first, last = answers[4 * index : 4 * index + 4]
            size += int(length)
            for entry_id, fields in (first or []) + (last or []):
                if epoch is not None:
                    record = _record(channel, Position.from_entry(str(epoch), entry_id), fields["p"])
                    ends.append((int(fields["t"]), record.id))
        ends.sort()
        return size, ends[0][1] if ends else None, ends[-1][1] if ends else None

    def find(self, channels: Sequence[str], custom_id: str) -> list[Position | None]:
        """Where the caller's id *custom_id* is on each channel; ``UNKNOWN`` where it is not kept."""
        pipe = self.client.pipeline(transaction=False)
        for channel in channels:
            keys = self.keys(channel)
            pipe.zscore(keys.ids, custom_id)
            pipe.hget(keys.meta, "e")
        answers = pipe.execute()
        found: list[Position | None] = []
        for score, epoch in zip(answers[::2], answers[1::2], strict=True):
            found.append(UNKNOWN if score is None or epoch is None else Position(str(epoch), int(score), -1))
        return found

    def read(
        self, after: Sequence[tuple[str, Position | None]], *, entries: bool = True, rewind: bool = False
    ) -> list[Catchup]:
        """For each ``(channel, position)``, what the channel holds after it (``None``: from its start).

        One consistent read per channel, all in one pipeline; at most
        ``history + 1`` entries each. A position of another epoch is lost,
        and the whole history follows. So does one past the channel's last
        event when *rewind* is true (a client's id from a life the channel
        lost); otherwise (this process's own position, whose events it has
        delivered) nothing follows it.
        """
        pipe = self.client.pipeline(transaction=self._atomic_reads)
        for channel, position in after:
            keys = self.keys(channel)
            start = "-" if position is None else f"{max(position.n, 1)}-0"
            count = self.history + 1 if entries and position is not UNKNOWN else 0
            pipe.execute_command("EVAL", READ, 2, keys.meta, keys.stream, start, count)
        answers = pipe.execute()
        catchups: list[Catchup | None] = []
        again = []  # an id of another epoch: the whole history, read a second time from its start
        for (channel, position), (epoch, kept, last_token, last_id) in zip(after, answers, strict=True):
            records = [self._entry(channel, str(epoch), entry) for entry in kept] if epoch else []
            head = parse_token(str(last_token)) if epoch else None
            catchup = catch_up(position, str(epoch), records, head, str(last_id), rewind=rewind)
            if catchup is None:
                again.append(len(catchups))
            catchups.append(catchup)
        if again:
            for index, redone in zip(again, self.read([(after[i][0], None) for i in again]), strict=True):
                catchups[index] = Catchup(redone.records, True, redone.head, redone.head_id)
        return catchups  # type: ignore[return-value]

    def _entry(self, channel: str, epoch: str, entry: list[Any]) -> tuple[int, Record]:
        entry_id, fields = entry
        values = dict(zip(fields[::2], fields[1::2], strict=True))
        return int(values["t"]), _record(channel, Position.from_entry(epoch, entry_id), values["p"])
