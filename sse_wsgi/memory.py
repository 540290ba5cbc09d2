"""The in-memory broker: one process, ids from a counter with an epoch, a bounded history per channel and in all."""

from __future__ import annotations

import bisect
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from ._process import PerProcess, ProcessLock
from ._validate import check_count
from .broker import (
    HELD_SET_TTL,
    IDEMPOTENCY_TTL,
    MAX_HELD_SETS,
    Deliver,
    Hold,
    Lost,
    Message,
    ProxyItem,
    Record,
    Replay,
)

__all__ = ["MemoryBroker"]

#: An id this broker (in this life or another) gives out: ``<epoch>-<number>``.
_OWN_ID = re.compile(r"([0-9a-f]{8})-([0-9]{1,19})")


def new_epoch() -> str:
    """A fresh epoch: 8 random hex digits, so that ids from two lives of a publisher never match."""
    return secrets.token_hex(4)


class SeqCursor:
    """A subscriber's place in one stream of all channels: it skips what it was already sent.

    :param skip_through: records up to this seq were replayed to it, or are
        older than what it resumed from.
    """

    __slots__ = ("skip_through",)

    def __init__(self, skip_through: int | None = None) -> None:
        self.skip_through = skip_through

    def admit(self, record: Record) -> str | None:
        """The record's own id, or ``None`` for one already sent."""
        if self.skip_through is not None:
            if record.seq <= self.skip_through:
                return None
            self.skip_through = None
        return record.id

    def reset(self, stream: str | None) -> None:
        """Accept whatever comes next."""
        self.skip_through = None


class _Kept:
    """A record in the history, and how many channels still keep it."""

    __slots__ = ("holders", "record")

    def __init__(self, record: Record, holders: int) -> None:
        self.record = record
        self.holders = holders


class _Channel:
    """One channel's history: its kept records (oldest first) and the last seq it no longer keeps."""

    __slots__ = ("evicted_through", "kept")

    def __init__(self) -> None:
        self.kept: list[_Kept] = []
        self.evicted_through = 0


class MemoryBroker:
    """Keep events in this process; the default broker of :class:`~sse_wsgi.Publisher`.

    Ids are ``"<epoch>-1"``, ``"<epoch>-2"``, ... in publish order, where the
    epoch is new for each life of the broker (and in each process forked
    from it), so an id given out before a restart is never mistaken for one
    given out after: resuming from it gives the loss event, then the whole
    history.

    History is bounded twice: each channel keeps its last *history* events,
    and the broker keeps at most *history_total* events in all (the oldest
    go first). A channel that keeps no event keeps no state, so a million
    quiet per-user channels cost at most *history_total* events. Once a
    channel's state is gone, a resume on it counts as lost when any channel
    forgot events after the id asked for (it cannot tell, so it says so).

    :param history: events kept per channel (0 keeps none).
    :param history_total: events kept in all channels together.
    """

    cross_process = False

    def __init__(self, history: int = 1000, *, history_total: int = 100_000) -> None:
        check_count("history", history, minimum=0)
        check_count("history_total", history_total)
        self.history = history
        self.history_total = history_total
        self._lock = ProcessLock()
        self._deliver: Deliver | None = None
        self._life = PerProcess(self._renew)
        self._life.get()

    def _renew(self) -> bool:
        """Start a new life: a new epoch, nothing kept (at creation, and in a forked child)."""
        self._epoch = new_epoch()
        self._seq = 0
        self._channels: dict[str, _Channel] = {}
        self._order: OrderedDict[int, _Kept] = OrderedDict()
        self._custom_ids: dict[str, int] = {}  # a caller's own id -> the seq of its newest kept record
        self._last: OrderedDict[str, tuple[int, str]] = OrderedDict()  # channel -> (seq, id) of its last event
        self._held: dict[tuple[str, ...], float] = {}  # a set held by a GRIP proxy -> when it expires
        self._held_by_channel: dict[str, set[tuple[str, ...]]] = {}
        self._forgotten_through = 0  # the highest seq evicted from a channel whose state is gone
        self._published_keys: OrderedDict[str, tuple[float, str]] = OrderedDict()  # idempotency key -> (until, id)
        return True

    def _check_fork(self) -> None:
        self._life.get()

    @property
    def epoch(self) -> str:
        """This life's epoch: ``f"{epoch}-0"`` is the id before the first event."""
        self._check_fork()
        return self._epoch

    def start(self, deliver: Deliver, lost: Lost) -> None:
        """Call *deliver* with each record, under the lock that orders publishes (nothing is ever lost in transit)."""
        self._deliver = deliver

    def watch(self, channels: Sequence[str]) -> None:
        """Nothing to do: every record reaches ``deliver``."""

    def unwatch(self, channels: Sequence[str]) -> None:
        """Nothing to do."""

    def cursor(self, channels: Sequence[str]) -> SeqCursor:
        """A cursor that takes every record from now on."""
        return SeqCursor()

    def publish(self, message: Message) -> str:
        """Number, keep and deliver *message*; return its wire id (the first one's, for a repeated idempotency key)."""
        with self._lock:
            self._check_fork()
            repeated = self._repeated(message)
            return repeated if repeated is not None else self._publish(message).id

    def _repeated(self, message: Message) -> str | None:
        """The id of the publish with *message*'s idempotency key within :data:`IDEMPOTENCY_TTL`, if any."""
        now = time.monotonic()
        keys = self._published_keys
        while keys and (next(iter(keys.values()))[0] <= now or len(keys) > self.history_total):
            keys.popitem(last=False)
        found = keys.get(message.idempotency_key) if message.idempotency_key is not None else None
        return None if found is None else found[1]

    def _publish(self, message: Message) -> Record:
        self._seq += 1
        seq = self._seq
        wire_id = message.id if message.id is not None else f"{self._epoch}-{seq}"
        record = Record.from_message(seq, wire_id, message)
        if message.idempotency_key is not None:
            self._published_keys[message.idempotency_key] = (time.monotonic() + IDEMPOTENCY_TTL, wire_id)
        self._keep(record)
        for name in message.channels:
            self._last[name] = (seq, wire_id)
            self._last.move_to_end(name)
        while len(self._last) > self.history_total:
            self._last.popitem(last=False)
        if self._deliver is not None:
            self._deliver(record)
        return record

    def publish_for_proxies(self, message: Message) -> tuple[str, list[ProxyItem]]:
        """Publish *message*; one proxy item per channel and per held set it reaches, ids fixed under one lock."""
        with self._lock:
            self._check_fork()
            repeated = self._repeated(message)
            if repeated is not None:  # the proxies have it, or drop it again by its id
                return repeated, []
            reached = self._held_sets_of(message.channels)
            before = {names: self._set_id(names) for names in [(name,) for name in message.channels] + reached}
            record = self._publish(message)
        return record.id, [ProxyItem(names, record.id, prev_id, record) for names, prev_id in before.items()]

    def hold(self, channels: Sequence[str], last_event_id: str | None) -> Hold | None:
        """Register a held set of several *channels*; the replay after *last_event_id* and the set's id.

        ``None`` when one of the channels is part of :data:`MAX_HELD_SETS` other held sets.
        """
        names = tuple(sorted(set(channels)))
        with self._lock:
            self._check_fork()
            if len(names) > 1:
                if names not in self._held and any(self._held_set_count(name) >= MAX_HELD_SETS for name in names):
                    return None
                self._held[names] = time.monotonic() + HELD_SET_TTL
                for name in names:
                    self._held_by_channel.setdefault(name, set()).add(names)
            replay = None if last_event_id is None else self._replay(names, last_event_id)
            return Hold(replay, self._set_id(names))

    def _set_id(self, names: tuple[str, ...]) -> str:
        """The id of the last event on any of *names* (``<epoch>-0`` when none is known)."""
        known = [self._last[name] for name in names if name in self._last]
        return max(known)[1] if known else f"{self._epoch}-0"

    def _held_set_count(self, name: str) -> int:
        """How many live held sets *name* is part of (expired ones are forgotten)."""
        return len(self._held_sets_of([name]))

    def _held_sets_of(self, channels: Sequence[str]) -> list[tuple[str, ...]]:
        """The held sets of several channels that include one of *channels*; expired ones are forgotten."""
        now = time.monotonic()
        found: dict[tuple[str, ...], None] = {}
        for name in channels:
            for names in list(self._held_by_channel.get(name, ())):
                if self._held.get(names, 0) > now:
                    found[names] = None
                else:
                    self._forget_held(names)
        return list(found)

    def _forget_held(self, names: tuple[str, ...]) -> None:
        self._held.pop(names, None)
        for name in names:
            sets = self._held_by_channel.get(name)
            if sets is not None:
                sets.discard(names)
                if not sets:
                    del self._held_by_channel[name]

    def _keep(self, record: Record) -> None:
        if self.history == 0:
            self._forgotten_through = record.seq
            return
        kept = _Kept(record, len(record.channels))
        self._order[record.seq] = kept
        if record.custom:
            self._custom_ids[record.id] = record.seq
        for name in record.channels:
            channel = self._channels.get(name)
            if channel is None:
                channel = self._channels[name] = _Channel()
            channel.kept.append(kept)
            if len(channel.kept) > self.history:
                self._evict_oldest(name, channel)
        while len(self._order) > self.history_total:
            _, oldest = self._order.popitem(last=False)
            self._forget_id(oldest.record)
            for name in oldest.record.channels:
                channel = self._channels.get(name)
                if channel is not None and channel.kept and channel.kept[0] is oldest:
                    self._evict_oldest(name, channel)

    def _evict_oldest(self, name: str, channel: _Channel) -> None:
        oldest = channel.kept.pop(0)
        channel.evicted_through = oldest.record.seq
        oldest.holders -= 1
        if oldest.holders == 0 and self._order.pop(oldest.record.seq, None) is not None:
            self._forget_id(oldest.record)
        if not channel.kept:
            del self._channels[name]
            self._forgotten_through = max(self._forgotten_through, channel.evicted_through)

    def _forget_id(self, record: Record) -> None:
        if self._custom_ids.get(record.id) == record.seq:
            del self._custom_ids[record.id]

    def replay(self, channels: Sequence[str], last_event_id: str) -> Replay | None:
        """The kept records on *channels* published after *last_event_id*, in order.

        ``None`` when the id is neither one of this broker's (of any life) nor
        a caller's id still kept. An id of another life, or of the future,
        counts as lost, and the history of *channels* follows. After a loss,
        the replay starts after the last event any of *channels* forgot, so
        that it has no hole (older events still kept on another of them are
        not sent: the client was told to start over).
        """
        with self._lock:
            self._check_fork()
            return self._replay(tuple(channels), last_event_id)

    def _replay(self, channels: tuple[str, ...], last_event_id: str) -> Replay | None:
        after = self._resolve(last_event_id)
        if after is None:
            return None
        lost = after < 0 or after > self._seq
        if lost:
            after = 0
        # Replay from the last point where any of these channels forgot events, so
        # that what follows the loss event has no hole on any of them.
        floor = after
        for name in channels:
            channel = self._channels.get(name)
            forgot = self._forgotten_through if channel is None else channel.evicted_through
            floor = max(floor, forgot)
        lost = lost or floor > after
        by_seq: dict[int, Record] = {}
        for name in channels:
            channel = self._channels.get(name)
            if channel is not None:
                kept = channel.kept
                start = bisect.bisect_right(kept, floor, key=lambda k: k.record.seq)
                for entry in kept[start:]:
                    by_seq[entry.record.seq] = entry.record
        head = self._seq  # everything up to it is replayed here, or was before the id, or is elsewhere
        records = [by_seq[seq] for seq in sorted(by_seq)]
        oldest_id = records[0].id if records else None
        resume_id = f"{self._epoch}-{head}"
        return Replay(
            [(r, r.id) for r in records], SeqCursor(head), lost=lost, oldest_id=oldest_id, resume_id=resume_id
        )

    def _resolve(self, last_event_id: str) -> int | None:
        """The seq after which to resume; -1 for an id of another life; ``None`` for an unknown id."""
        custom = self._custom_ids.get(last_event_id)
        if custom is not None:
            return custom
        match = _OWN_ID.fullmatch(last_event_id)
        if match is None:
            return None
        return int(match.group(2)) if match.group(1) == self._epoch else -1

    def stats(self) -> dict[str, Any]:
        """History figures: events and channels kept, and the first and last id kept."""
        with self._lock:
            self._check_fork()
            first = next(iter(self._order.values()), None)
            last = next(reversed(self._order.values()), None)
            return {
                "broker": "memory",
                "epoch": self._epoch,
                "history_size": len(self._order),
                "history_per_channel": self.history,
                "history_total": self.history_total,
                "channels_kept": len(self._channels),
                "first_id": first.record.id if first is not None else None,
                "last_id": last.record.id if last is not None else None,
            }

    def close(self) -> None:
        """Stop delivering; the history is dropped."""
        with self._lock:
            self._deliver = None
            self._channels.clear()
            self._order.clear()
            self._custom_ids.clear()
            self._last.clear()
            self._held.clear()
            self._held_by_channel.clear()
            self._published_keys.clear()
