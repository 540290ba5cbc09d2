"""The catch-up rules of the Redis broker, without Redis: what one read of a channel owes a reader."""

from __future__ import annotations

import pytest

from sse_wsgi.broker import Message, Record
from sse_wsgi.redis.catchup import UNKNOWN, catch_up
from sse_wsgi.redis.positions import Position

EPOCH = "0a1b2c3d"


def entry(n: int, tag: int | None = None) -> tuple[int, Record]:
    """The record of event *n* of the channel (tag *n* unless given), as a read returns it."""
    position = Position(EPOCH, n, n if tag is None else tag)
    return n, Record.from_message(position, position.token, Message(("c",), f"e{n}"), "c")


def at(n: int, tag: int | None = None) -> Position:
    return Position(EPOCH, n, n if tag is None else tag)


def test_a_channel_without_data_owes_nothing_and_is_lost_only_to_a_reader_that_had_a_position() -> None:
    assert catch_up(None, "", [], None, "0", rewind=False).lost is False
    assert catch_up(at(3), "", [], None, "0", rewind=False).lost is True
    assert catch_up(UNKNOWN, "", [], None, "0", rewind=False).lost is False


def test_a_reader_at_the_head_owes_nothing_even_once_the_entries_expired() -> None:
    caught = catch_up(at(5), EPOCH, [], at(5), at(5).token, rewind=True)
    assert caught is not None and (caught.records, caught.lost, caught.head) == ([], False, at(5))


def test_the_entries_after_the_reader_follow_with_no_loss() -> None:
    caught = catch_up(at(2), EPOCH, [entry(2), entry(3), entry(4)], at(4), at(4).token, rewind=False)
    assert caught is not None and not caught.lost
    assert [record.data for _, record in caught.records] == ["e3", "e4"]


def test_entries_trimmed_past_the_reader_are_lost() -> None:
    caught = catch_up(at(2), EPOCH, [entry(5), entry(6)], at(6), at(6).token, rewind=False)
    assert caught is not None and caught.lost and [r.data for _, r in caught.records] == ["e5", "e6"]


def test_an_event_a_failover_replaced_is_told_by_its_tag() -> None:
    replaced = [entry(3, tag=99), entry(4)]
    caught = catch_up(at(3), EPOCH, replaced, at(4), at(4).token, rewind=False)
    assert caught is not None and caught.lost  # the reader had another event 3
    assert [r.data for _, r in caught.records] == ["e3", "e4"]


def test_a_caller_id_found_by_number_matches_any_tag() -> None:
    caught = catch_up(Position(EPOCH, 3, -1), EPOCH, [entry(3), entry(4)], at(4), at(4).token, rewind=False)
    assert caught is not None and not caught.lost and [r.data for _, r in caught.records] == ["e4"]
    assert caught.after == at(3)  # now with its tag


def test_another_epoch_means_reading_the_whole_history_again() -> None:
    assert catch_up(Position("ffffffff", 3, 3), EPOCH, [], at(4), at(4).token, rewind=False) is None


@pytest.mark.parametrize(("rewind", "again"), [(True, True), (False, False)])
def test_a_position_past_the_head_is_lost_and_a_client_gets_the_whole_history(rewind: bool, again: bool) -> None:
    caught = catch_up(at(9), EPOCH, [], at(4), at(4).token, rewind=rewind)
    assert (caught is None) is again
    assert caught is None or caught.lost


def test_from_the_start_is_lost_only_when_the_first_events_are_gone() -> None:
    whole = catch_up(None, EPOCH, [entry(1), entry(2)], at(2), at(2).token, rewind=False)
    trimmed = catch_up(None, EPOCH, [entry(4)], at(4), at(4).token, rewind=False)
    expired = catch_up(None, EPOCH, [], at(4), at(4).token, rewind=False)
    assert whole is not None and not whole.lost
    assert trimmed is not None and trimmed.lost
    assert expired is not None and expired.lost


def test_an_unknown_position_gets_nothing_and_a_loss_when_the_channel_has_events() -> None:
    caught = catch_up(UNKNOWN, EPOCH, [], at(4), at(4).token, rewind=False)
    assert caught is not None and caught.lost and caught.records == [] and caught.head == at(4)
