"""The Redis broker on a real Redis Cluster (three masters, three replicas): routing, resume, failover."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import pytest
import redis as redis_py

from sse_wsgi import HISTORY_LOST_EVENT, BrokerUnavailable, Publisher, Subscription
from sse_wsgi.redis.keys import channel_keys
from sse_wsgi.testing import ReceivedEvent
from tests.support.redis_cluster import LocalCluster
from tests.support.streams import Reader

pytestmark = [pytest.mark.integration, pytest.mark.redis]


def channels_on_every_master(cluster: LocalCluster, per_master: int, prefix: str = "room") -> dict[str, str]:
    """*per_master* channel names for each master: name -> "host:port" of its master."""
    wanted: dict[tuple[str, int], list[str]] = {master: [] for master in cluster.masters()}
    n = 0
    while any(len(names) < per_master for names in wanted.values()):
        name = f"{prefix}-{n}"
        master = cluster.master_for_key(channel_keys("sse_wsgi", name).live)
        if len(wanted[master]) < per_master:
            wanted[master].append(name)
        n += 1
    return {name: f"{host}:{port}" for (host, port), names in wanted.items() for name in names}


@pytest.fixture
def publishers(module_redis_cluster: LocalCluster) -> Iterator[list[Publisher]]:
    """Two publishers on the cluster, as two web processes would have."""
    module_redis_cluster.wait_until_healthy()
    made = [Publisher.from_url(module_redis_cluster.url), Publisher.from_url(module_redis_cluster.url)]
    yield made
    for publisher in made:
        publisher.close()


def test_a_cluster_url_is_detected_and_events_cross_processes(publishers: list[Publisher]) -> None:
    here, there = publishers
    assert here.stats()["cluster"] is True
    reader = Reader(here.subscribe("chat", heartbeat=None))
    event_id = there.publish({"text": "hi"}, "chat")
    [event] = reader.wait_for(1)
    assert (event.data, event.last_event_id) == ('{"text":"hi"}', event_id)


def test_channels_spread_over_every_master_each_with_one_connection(
    module_redis_cluster: LocalCluster,
    publishers: list[Publisher],
) -> None:
    here, there = publishers
    homes = channels_on_every_master(module_redis_cluster, per_master=4)
    readers = {name: Reader(here.subscribe(name, heartbeat=None)) for name in homes}
    ids = {name: there.publish(f"to {name}", name) for name in homes}
    for name, reader in readers.items():
        assert [(e.data, e.last_event_id) for e in reader.wait_for(1)] == [(f"to {name}", ids[name])]
    nodes = here.stats()["nodes"]
    assert sorted(nodes) == sorted(set(homes.values()))  # one receiving connection per master
    assert all(node == {"connected": True, "channels": 4} for node in nodes.values())
    admin = redis_py.Redis(*module_redis_cluster.masters()[0], decode_responses=True)
    try:  # each master carries its own channels' live messages only (sharded pub/sub)
        shard_channels = admin.execute_command(
            "PUBSUB", "SHARDNUMSUB", *[channel_keys("sse_wsgi", n).live for n in homes]
        )
    finally:
        admin.close()
    counts = dict(zip(shard_channels[::2], shard_channels[1::2], strict=True))
    address = "{}:{}".format(*module_redis_cluster.masters()[0])
    assert {n for n in homes if counts[channel_keys("sse_wsgi", n).live]} == {
        n for n, a in homes.items() if a == address
    }


def test_a_process_receives_only_the_events_of_its_subscribers_channels(publishers: list[Publisher]) -> None:
    here, there = publishers
    watched = [f"user:{n}" for n in range(0, 100, 10)]  # 10 of 100 channels
    readers = [Reader(here.subscribe(name, heartbeat=None)) for name in watched]
    for round_ in range(3):
        for n in range(100):
            there.publish(f"{round_}", f"user:{n}")
    for reader in readers:
        assert [e.data for e in reader.wait_for(3)] == ["0", "1", "2"]
    assert here.stats()["events_published"] == 30  # the records of its 10 channels, not the 300
    assert there.stats()["events_published"] == 0  # no subscriber there: nothing received


def test_resume_of_several_channels_on_several_masters(
    module_redis_cluster: LocalCluster,
    publishers: list[Publisher],
) -> None:
    here, there = publishers
    names = sorted(channels_on_every_master(module_redis_cluster, per_master=1, prefix="multi"))
    subscription = here.subscribe(names, heartbeat=None)
    reader = Reader(subscription)
    there.publish("first", names[0])
    [seen] = reader.wait_for(1)
    subscription.close()
    for name in names:
        there.publish(f"missed on {name}", name)
    there.publish("on all", names[::-1])
    resumed = Reader(here.subscribe(names, last_event_id=seen.last_event_id, heartbeat=None))
    there.publish("live", names[1])
    events = resumed.wait_for(len(names) + 2)
    assert sorted(e.data for e in events[: len(names)]) == sorted(f"missed on {name}" for name in names)
    assert [e.data for e in events[len(names) :]] == ["on all", "live"]
    time.sleep(0.3)
    assert len(resumed.events) == len(names) + 2  # "on all" once, though it is in every channel's history
    assert len(seen.last_event_id) < 200


def test_an_id_for_32_channels_of_200_characters_stays_small(publishers: list[Publisher]) -> None:
    here, there = publishers
    names = [f"{n:02d}" + "x" * 198 for n in range(32)]
    reader = Reader(here.subscribe(names, heartbeat=None))
    for name in names:
        there.publish("e", name)
    events = reader.wait_for(32)
    longest = max(len(e.last_event_id.encode()) for e in events)
    print(f"the id of a stream of 32 channels with 200-character names: {longest} bytes")
    assert longest < 1200  # gunicorn's header field limit is 8190 bytes


# -- a master failover under live streams ---------------------------------------------------------


def silent_gaps(events: list[ReceivedEvent], acknowledged: list[int]) -> list[int]:
    """Acknowledged numbers missing from *events* with no loss event where they would have been."""
    received = [(int(e.data.rpartition(" ")[2]), False) if e.type == "message" else (None, True) for e in events]
    gaps = []
    for number in acknowledged:
        if any(n == number for n, _ in received):
            continue
        before = max((i for i, (n, _) in enumerate(received) if n is not None and n < number), default=-1)
        after = min((i for i, (n, _) in enumerate(received) if n is not None and n > number), default=len(received))
        if not any(lost for _, lost in received[before + 1 : after]):
            gaps.append(number)
    return gaps


def test_a_master_failover_keeps_streams_open_and_loses_nothing_silently(
    redis_cluster: LocalCluster,
) -> None:
    homes = channels_on_every_master(redis_cluster, per_master=2, prefix="failover")
    victim = sorted(homes)[0]
    with Publisher.from_url(redis_cluster.url) as subscriber_side, Publisher.from_url(redis_cluster.url) as publisher:
        subscriptions: dict[str, Subscription] = {
            name: subscriber_side.subscribe(name, heartbeat=0.5) for name in homes
        }
        readers = {name: Reader(subscriptions[name]) for name in homes}
        acknowledged: dict[str, list[int]] = {name: [] for name in homes}
        refused = 0
        stop = threading.Event()

        def publish_forever() -> None:
            nonlocal refused
            number = 0
            while not stop.is_set():
                for name in homes:
                    number += 1
                    try:
                        publisher.publish(f"{name} {number}", name)
                        acknowledged[name].append(number)
                    except BrokerUnavailable:
                        refused += 1
                time.sleep(0.01)

        producer = threading.Thread(target=publish_forever, name="test-cluster-producer")
        producer.start()
        try:
            time.sleep(1.0)
            dead = redis_cluster.kill_master_for_key(channel_keys("sse_wsgi", victim).live)
            started = time.monotonic()
            redis_cluster.wait_for_failover(dead)
            print(f"failover of {dead} took {time.monotonic() - started:.1f} s; publishes refused meanwhile: {refused}")
            time.sleep(2.0)
        finally:
            stop.set()
            producer.join(30)
        final = {name: acknowledged[name][-1] for name in homes}
        for name, reader in readers.items():
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not any(
                e.type == "message" and e.data == f"{name} {final[name]}" for e in reader.events
            ):
                time.sleep(0.05)
        report = {
            name: (len(acknowledged[name]), sum(e.type == HISTORY_LOST_EVENT for e in reader.events))
            for name, reader in readers.items()
        }
        nodes = json.dumps(subscriber_side.stats()["nodes"])
        print(f"per channel (events acknowledged, loss events): {report}; receiving connections: {nodes}")
        for name, reader in readers.items():
            numbers = [int(e.data.rpartition(" ")[2]) for e in reader.events if e.type == "message"]
            assert numbers == sorted(set(numbers)), f"{name}: out of order or repeated: {numbers}"
            assert numbers and numbers[-1] == final[name], f"{name} never got its last event: {numbers[-5:]}"
            assert silent_gaps(reader.events, acknowledged[name]) == [], f"{name}: silent gaps"
            assert not reader.ended.is_set() and not subscriptions[name].closed  # the same stream throughout
        assert subscriber_side.stats()["reconnects"] >= 1
        assert subscriber_side.stats()["connected"] is True
