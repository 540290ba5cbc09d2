"""MemoryBroker directly: ids, per-channel history, replay answers."""

from __future__ import annotations

import pytest

from sse_wsgi.broker import Message, Record
from sse_wsgi.memory import MemoryBroker


def publish(broker: MemoryBroker, data: str, *channels: str, id: str | None = None) -> str:
    return broker.publish(Message(channels or ("c",), data, id=id))


def test_ids_count_up_and_records_are_delivered_encoded_once() -> None:
    delivered: list[Record] = []
    broker = MemoryBroker()
    broker.start(delivered.append)
    assert [publish(broker, "a"), publish(broker, "b")] == ["1", "2"]
    assert [r.chunk for r in delivered] == [b"id: 1\ndata: a\n\n", b"id: 2\ndata: b\n\n"]
    assert [r.seq for r in delivered] == [1, 2]


def test_history_is_bounded_per_channel() -> None:
    broker = MemoryBroker(history=2)
    for n in range(5):
        publish(broker, f"busy{n}", "busy")
    publish(broker, "quiet", "quiet")
    replay = broker.replay(["quiet"], "0")
    assert replay is not None and [r.data for r in replay.records] == ["quiet"]
    assert not replay.lost  # a busy channel does not evict a quiet one's history
    busy = broker.replay(["busy"], "0")
    assert busy is not None and busy.lost and [r.data for r in busy.records] == ["busy3", "busy4"]
    assert busy.oldest_id == "4"


def test_replay_merges_channels_in_order_without_repeats() -> None:
    broker = MemoryBroker()
    publish(broker, "a1", "a")
    publish(broker, "ab", "a", "b")
    publish(broker, "b1", "b")
    replay = broker.replay(["a", "b"], "0")
    assert replay is not None and [r.data for r in replay.records] == ["a1", "ab", "b1"]


def test_history_zero_keeps_nothing_and_reports_loss() -> None:
    broker = MemoryBroker(history=0)
    publish(broker, "x")
    replay = broker.replay(["c"], "0")
    assert replay is not None and replay.lost and replay.records == []
    assert broker.replay(["c"], "1") == type(replay)([], lost=False, oldest_id=None, after_seq=1)


@pytest.mark.parametrize("bad_id", ["", "abc", "-1", "1.5", "1" * 25, " 1"])
def test_malformed_ids_give_none(bad_id: str) -> None:
    broker = MemoryBroker()
    publish(broker, "x")
    assert broker.replay(["c"], bad_id) is None


def test_stats() -> None:
    broker = MemoryBroker(history=10)
    publish(broker, "x", "a", "b")
    publish(broker, "y", "b")
    assert broker.stats() == {
        "broker": "memory", "history_size": 2, "history_per_channel": 10, "first_id": "1", "last_id": "2",
    }  # fmt: skip
