"""MemoryBroker directly: ids with an epoch, history bounded per channel and in all, replay answers."""

from __future__ import annotations

import pytest

from sse_wsgi.broker import Message, Record
from sse_wsgi.memory import MemoryBroker


def publish(broker: MemoryBroker, data: str, *channels: str, id: str | None = None) -> str:
    return broker.publish(Message(channels or ("c",), data, id=id))


def started(broker: MemoryBroker) -> list[Record]:
    delivered: list[Record] = []
    broker.start(delivered.append, lambda stream, oldest: None)
    return delivered


def test_ids_count_up_within_an_epoch_and_records_are_delivered_encoded_once() -> None:
    broker = MemoryBroker()
    delivered = started(broker)
    epoch = broker.epoch
    assert [publish(broker, "a"), publish(broker, "b")] == [f"{epoch}-1", f"{epoch}-2"]
    assert [r.chunk for r in delivered] == [
        f"id: {epoch}-1\ndata: a\n\n".encode(),
        f"id: {epoch}-2\ndata: b\n\n".encode(),
    ]
    assert [r.seq for r in delivered] == [1, 2]


def test_a_new_life_has_a_new_epoch_and_an_old_id_is_reported_lost() -> None:
    before = MemoryBroker()
    old_id = publish(before, "old")
    after = MemoryBroker()  # the process restarted
    assert after.epoch != before.epoch
    new_id = publish(after, "new")
    assert new_id != old_id
    replay = after.replay(["c"], old_id)
    assert replay is not None and replay.lost and [r.data for r in replay.records] == ["new"]


def test_history_is_bounded_per_channel() -> None:
    broker = MemoryBroker(history=2)
    start = f"{broker.epoch}-0"
    for n in range(5):
        publish(broker, f"busy{n}", "busy")
    publish(broker, "quiet", "quiet")
    replay = broker.replay(["quiet"], start)
    assert replay is not None and [r.data for r in replay.records] == ["quiet"]
    assert not replay.lost  # a busy channel does not evict a quiet one's history
    busy = broker.replay(["busy"], start)
    assert busy is not None and busy.lost and [r.data for r in busy.records] == ["busy3", "busy4"]
    assert busy.oldest_id == f"{broker.epoch}-4"


def test_history_is_bounded_in_all_and_a_channel_with_nothing_kept_keeps_no_state() -> None:
    broker = MemoryBroker(history=10, history_total=3)
    start = f"{broker.epoch}-0"
    for n in range(5):
        publish(broker, f"e{n}", f"user:{n}")
    stats = broker.stats()
    assert (stats["history_size"], stats["channels_kept"]) == (3, 3)
    kept = broker.replay(["user:4"], start)
    assert kept is not None and [r.data for r in kept.records] == ["e4"] and not kept.lost
    gone = broker.replay(["user:0"], start)
    assert gone is not None and gone.lost and gone.records == []


def test_a_record_on_several_channels_is_dropped_once_no_channel_keeps_it() -> None:
    broker = MemoryBroker(history=1)
    publish(broker, "both", "a", "b")
    publish(broker, "a again", "a")
    assert broker.stats()["history_size"] == 2  # "both" is still b's
    publish(broker, "b again", "b")
    assert broker.stats()["history_size"] == 2


def test_replay_merges_channels_in_order_without_repeats() -> None:
    broker = MemoryBroker()
    publish(broker, "a1", "a")
    publish(broker, "ab", "a", "b")
    publish(broker, "b1", "b")
    replay = broker.replay(["a", "b"], f"{broker.epoch}-0")
    assert replay is not None and [r.data for r in replay.records] == ["a1", "ab", "b1"]


def test_history_zero_keeps_nothing_and_reports_loss() -> None:
    broker = MemoryBroker(history=0)
    first = publish(broker, "x")
    replay = broker.replay(["c"], f"{broker.epoch}-0")
    assert replay is not None and replay.lost and replay.records == []
    nothing = broker.replay(["c"], first)
    assert nothing is not None and (nothing.items, nothing.lost, nothing.oldest_id) == ([], False, None)
    for n in range(1000):
        publish(broker, "x", f"user:{n}")
    assert broker.stats()["channels_kept"] == 0


def test_custom_ids_resume_while_kept_and_are_forgotten_with_their_event() -> None:
    broker = MemoryBroker(history=2)
    publish(broker, "one", id="order-1")
    publish(broker, "two", id="order-2")
    replay = broker.replay(["c"], "order-1")
    assert replay is not None and [r.data for r in replay.records] == ["two"] and not replay.lost
    publish(broker, "three", id="order-3")
    assert broker.replay(["c"], "order-1") is None  # no longer kept: unknown, as any other id


@pytest.mark.parametrize("bad_id", ["", "abc", "-1", "1.5", "1" * 25, " 1", "0", "1", "zzzzzzzz-1"])
def test_malformed_ids_give_none(bad_id: str) -> None:
    broker = MemoryBroker()
    publish(broker, "x")
    assert broker.replay(["c"], bad_id) is None


def test_an_id_from_the_future_of_this_epoch_counts_as_lost() -> None:
    broker = MemoryBroker()
    publish(broker, "x")
    replay = broker.replay(["c"], f"{broker.epoch}-99")
    assert replay is not None and replay.lost and [r.data for r in replay.records] == ["x"]


def test_stats() -> None:
    broker = MemoryBroker(history=10)
    first = publish(broker, "x", "a", "b")
    last = publish(broker, "y", "b")
    assert broker.stats() == {
        "broker": "memory", "epoch": broker.epoch, "history_size": 2, "history_per_channel": 10,
        "history_total": 100_000, "channels_kept": 2, "first_id": first, "last_id": last,
    }  # fmt: skip


def test_an_idempotency_key_publishes_once_within_its_window() -> None:
    broker = MemoryBroker()
    delivered = started(broker)
    first = broker.publish(Message(("c",), "x", idempotency_key="k"))
    again = broker.publish(Message(("c",), "x", idempotency_key="k"))
    other = broker.publish(Message(("c",), "y", idempotency_key="other"))
    assert again == first != other
    assert [r.data for r in delivered] == ["x", "y"]
    assert broker.stats()["history_size"] == 2


def test_a_loss_with_nothing_after_it_names_where_the_stream_goes_on() -> None:
    broker = MemoryBroker(history=0)
    old = publish(broker, "old", "c")
    publish(broker, "forgotten", "c")
    replay = broker.replay(("c",), old)
    assert replay is not None and replay.lost and not replay.items
    assert replay.resume_id is not None
    again = broker.replay(("c",), replay.resume_id)
    assert again is not None and not again.lost  # resuming from it is told of nothing again
