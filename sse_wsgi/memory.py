"""The in-memory broker: one process, ids from a counter, a bounded history per channel."""

from __future__ import annotations

import re
import threading
from collections import deque
from collections.abc import Iterable
from typing import Any

from ._validate import check_count
from .broker import Deliver, Message, Record, Replay

__all__ = ["MemoryBroker"]

_SEQ_ID = re.compile(r"[0-9]{1,19}")


class MemoryBroker:
    """Keep events in this process; the default broker of :class:`~sse_wsgi.Publisher`.

    Ids are ``"1"``, ``"2"``, ... in publish order. Each channel keeps its
    last *history* events for ``Last-Event-ID`` resumption. An id from a
    previous run of the process (greater than any id given out) is
    answered as "events were lost", followed by the whole history.

    :param history: events kept per channel (0 keeps none).
    """

    cross_process = False

    def __init__(self, history: int = 1000) -> None:
        check_count("history", history, minimum=0)
        self._history_size = history
        self._lock = threading.Lock()
        self._seq = 0
        self._history: dict[str, deque[Record]] = {}
        self._evicted: dict[str, int] = {}  # per channel: the highest seq no longer kept
        self._custom_ids = False
        self._deliver: Deliver | None = None

    def start(self, deliver: Deliver) -> None:
        """Call *deliver* with each record, under the lock that orders publishes."""
        self._deliver = deliver

    def publish(self, message: Message) -> str:
        """Number, keep and deliver *message*; return its wire id."""
        with self._lock:
            self._seq += 1
            wire_id = message.id if message.id is not None else str(self._seq)
            record = Record.from_message(self._seq, wire_id, message)
            if message.id is not None:
                self._custom_ids = True
            for channel in message.channels:
                self._keep(channel, record)
            if self._deliver is not None:
                self._deliver(record)
        return wire_id

    def _keep(self, channel: str, record: Record) -> None:
        if self._history_size == 0:
            self._evicted[channel] = record.seq
            return
        kept = self._history.get(channel)
        if kept is None:
            kept = self._history[channel] = deque()
        if len(kept) >= self._history_size:
            self._evicted[channel] = kept.popleft().seq
        kept.append(record)

    def replay(self, channels: Iterable[str], last_event_id: str) -> Replay | None:
        """The kept records on *channels* published after *last_event_id*, in order."""
        channels = tuple(channels)
        with self._lock:
            after = self._resolve(channels, last_event_id)
            if after is None:
                return None
            lost = after > self._seq  # an id from before a restart
            if lost:
                after = 0
            lost = lost or any(self._evicted.get(channel, 0) > after for channel in channels)
            by_seq: dict[int, Record] = {}
            for channel in channels:
                for record in reversed(self._history.get(channel, ())):
                    if record.seq <= after:
                        break
                    by_seq[record.seq] = record
            oldest = [self._history[c][0] for c in channels if self._history.get(c)]
        records = [by_seq[seq] for seq in sorted(by_seq)]
        oldest_id = min(oldest, key=lambda r: r.seq).id if oldest else None
        return Replay(records, lost=lost, oldest_id=oldest_id, after_seq=after)

    def _resolve(self, channels: tuple[str, ...], last_event_id: str) -> int | None:
        if self._custom_ids:
            for channel in channels:
                for record in reversed(self._history.get(channel, ())):
                    if record.id == last_event_id:
                        return int(record.seq)
        if _SEQ_ID.fullmatch(last_event_id):
            return int(last_event_id)
        return None

    def stats(self) -> dict[str, Any]:
        """History figures: events kept, and the first and last id kept."""
        with self._lock:
            firsts = [kept[0] for kept in self._history.values() if kept]
            lasts = [kept[-1] for kept in self._history.values() if kept]
            kept_records = {id(r) for kept in self._history.values() for r in kept}
        return {
            "broker": "memory",
            "history_size": len(kept_records),
            "history_per_channel": self._history_size,
            "first_id": min(firsts, key=lambda r: r.seq).id if firsts else None,
            "last_id": max(lasts, key=lambda r: r.seq).id if lasts else None,
        }

    def close(self) -> None:
        """Stop delivering; the history is dropped."""
        with self._lock:
            self._deliver = None
            self._history.clear()
