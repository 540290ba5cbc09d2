"""The rules of a catch-up: what a channel's history, as read, owes a reader at a position, and what is lost.

Pure functions of what one read of a channel gave (its epoch, its entries
from the position on, its last event as its metadata names it): no Redis
here, so every rule has a unit test.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..broker import Record
from .positions import NO_POSITION, Position

__all__ = ["UNKNOWN", "Catchup", "catch_up"]

#: A position read from nothing the history can check (a caller's id not found on this channel):
#: reading after it gives nothing but the channel's head, as lost when the channel has events.
UNKNOWN = Position("", 0, 0)


@dataclass(frozen=True)
class Catchup:
    """What a channel's history holds after a position.

    :param records: ``(microseconds, record)`` pairs in the channel's order.
    :param lost: True when events after the position are gone (trimmed,
        expired, or a new epoch or a failover replaced them).
    :param head: the channel's last position when read (``None``: no event).
    :param head_id: the id of that event as its subscribers got it (``0``: no event).
    :param after: the position read after, with its tag when it was found from a caller's id.
    """

    records: list[tuple[int, Record]]
    lost: bool
    head: Position | None
    head_id: str = NO_POSITION
    after: Position | None = None


def catch_up(
    after: Position | None,
    epoch: str,
    records: list[tuple[int, Record]],
    head: Position | None,
    head_id: str,
    *,
    rewind: bool,
) -> Catchup | None:
    """What a reader at *after* (``None``: before the first event) gets from one read of a channel.

    :param epoch: the channel's epoch (``""``: the channel has no data: never
        published, forgotten, or lost by Redis).
    :param records: its entries read from ``after.n`` on (from its start for ``None``).
    :param head: its last event as its metadata names it (kept longer than its entries).
    :param rewind: for a client's id: one past the channel's last event means
        a life the channel lost, so the whole history follows (else, for this
        process's own position, nothing does).

    ``None`` when the whole history must be read again from its start, as
    lost: *after* is of another epoch, or (with *rewind*) past the head.
    """
    if not epoch:
        return Catchup([], after is not None and after is not UNKNOWN, None)
    if after is UNKNOWN:  # what this client has of the channel is unknown: resend nothing, say so
        return Catchup([], head is not None, head, head_id)
    if after is not None and after.epoch != epoch:
        return None
    if after is not None and head is not None and after.n == head.n and after.tag in (head.tag, -1):
        return Catchup([], False, head, head_id, head)  # at the head: nothing missed, even once the history expired
    if after is None:
        lost = records[0][1].seq.n > 1 if records else head is not None
        return Catchup(records, lost, head, head_id)
    if not records:  # the channel went back before *after*: a failover or a restart lost events
        return None if rewind and head is not None else Catchup([], True, head, head_id)
    first: Position = records[0][1].seq
    if first.n == after.n and (first.tag == after.tag or after.tag == -1):
        return Catchup(records[1:], False, head, head_id, first)
    return Catchup(records, first.n != after.n + 1, head, head_id, after)
