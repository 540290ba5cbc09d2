"""Positions in a channel's history, the ids made of them, and the cursor of one subscriber.

Each channel's events are numbered 1, 2, 3, ... within one *epoch* of the
channel (a random 8-hex-digit name, made anew when the channel's data is
created, so a channel that expired or a Redis that lost its data never
gives an old number a new meaning), and each event gets a random *tag*,
so that an event that a failover lost and a later one that took its number
are told apart. ``<epoch>-<n>-<tag>`` is the position's token.

The id a subscriber gets names its position on every channel it
subscribed to: the token for one channel, the tokens joined by ``_`` in the
order of the sorted channel names for several (at 32 channels, about 800
bytes: far below the 8 KiB header limits of common servers). A channel
with no event yet has the token ``0``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from ..broker import Record

__all__ = [
    "NO_POSITION",
    "ChannelCursor",
    "Position",
    "ids_of",
    "parse_id",
    "parse_token",
    "parse_tokens",
    "token",
    "wire_id",
]

NO_POSITION = "0"
MAX_TOKENS = 1000  # positions one id may name
_TOKEN = re.compile(r"([0-9a-f]{8})-([0-9]{1,19})-([0-9]{1,10})")


class Position(NamedTuple):
    """An event's place in its channel: the channel's epoch, its number there and its tag."""

    epoch: str
    n: int
    tag: int

    @property
    def token(self) -> str:
        """``<epoch>-<n>-<tag>``."""
        return f"{self.epoch}-{self.n}-{self.tag}"

    @classmethod
    def from_entry(cls, epoch: str, entry_id: str) -> Position:
        """The position of the Redis Stream entry *entry_id* (``<n>-<tag>``) in a channel of *epoch*."""
        n, _, tag = entry_id.partition("-")
        return cls(epoch, int(n), int(tag))


def token(position: Position | None) -> str:
    """The token of *position*; ``0`` for none."""
    return NO_POSITION if position is None else position.token


def parse_token(text: str) -> Position | None:
    """The position a token names; ``None`` for ``0``. Raises ``ValueError`` when malformed."""
    if text == NO_POSITION:
        return None
    match = _TOKEN.fullmatch(text)
    if match is None:
        raise ValueError(f"not a position token: {text!r}")
    return Position(match.group(1), int(match.group(2)), int(match.group(3)))


def wire_id(positions: Sequence[Position | None]) -> str:
    """The id naming *positions*, one per channel in sorted-name order."""
    return "_".join(token(p) for p in positions)


def parse_id(text: str, count: int) -> list[Position | None] | None:
    """The *count* positions an id names; ``None`` when it is not such an id."""
    parts = text.split("_")
    if len(parts) != count:
        return None
    try:
        return [parse_token(part) for part in parts]
    except ValueError:
        return None


def parse_tokens(text: str) -> list[Position | None] | None:
    """The positions of an id of any number of channels (at most :data:`MAX_TOKENS`); ``None`` when not such an id."""
    parts = text.split("_", MAX_TOKENS)
    if len(parts) > MAX_TOKENS:
        return None
    try:
        return [parse_token(part) for part in parts]
    except ValueError:
        return None


def ids_of(channels: Iterable[str]) -> tuple[str, ...]:
    """*channels* in the order an id lists them."""
    return tuple(sorted(channels))


class ChannelCursor:
    """Where one subscriber is on each of its channels.

    A record comes on one channel's stream; the subscriber takes an event
    published to several of its channels from the first of them in the
    event's own channel order (its *primary* stream) and moves past the
    other copies without sending them, so it gets the event once, live or
    replayed. A record at or before the subscriber's position on its
    stream (same epoch) was already sent.
    """

    __slots__ = ("_single", "channels", "positions")

    def __init__(self, channels: Sequence[str], positions: Sequence[Position | None]) -> None:
        self.channels = ids_of(channels)
        self.positions: dict[str, Position | None] = dict(zip(self.channels, positions, strict=True))
        self._single = len(self.channels) == 1

    def admit(self, record: Record) -> str | None:
        """Move past *record*; the id to send it with, or ``None`` when it is a copy or was sent."""
        stream: str = record.stream  # type: ignore[assignment]
        position: Position = record.seq
        known = self.positions[stream]
        if known is not None and position.n <= known.n and known.epoch == position.epoch:
            return None
        self.positions[stream] = position
        if not self._single and self._primary(record) != stream:
            return None  # a copy: this subscriber takes the event from another of its streams
        if self._single or record.custom:  # the record's own id: its token, or the caller's id
            return record.id
        return self.wire_id()

    def _primary(self, record: Record) -> str:
        """The stream this subscriber takes *record* from: the first of its channels in the event's order."""
        return next(c for c in record.channels if c in self.positions)

    def reset(self, stream: str | None) -> None:
        """Events of *stream* (``None``: all) were lost: take what comes next there."""
        for channel in self.channels if stream is None else (stream,):
            self.positions[channel] = None

    def advance(self, heads: dict[str, Position | None]) -> None:
        """Move to at least *heads* (what the history held when a replay read it)."""
        for channel, head in heads.items():
            known = self.positions[channel]
            if head is not None and (known is None or known.epoch != head.epoch or known.n < head.n):
                self.positions[channel] = head

    def wire_id(self) -> str:
        """The id naming this subscriber's position on every channel."""
        return wire_id([self.positions[c] for c in self.channels])
