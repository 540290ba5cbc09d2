"""The fault helpers of tests/support/redis_cluster.py on a real Redis Cluster: an empty slot moves and a client
follows the -MOVED; a frozen master fails over, thaws and rejoins as a replica."""

from __future__ import annotations

import time

import pytest
import redis
from redis.cluster import RedisCluster
from redis.exceptions import MovedError

from tests.support.redis_cluster import LocalCluster

pytestmark = [pytest.mark.integration, pytest.mark.redis, pytest.mark.timeout(120)]


def direct(address: tuple[str, int]) -> redis.Redis:
    """A plain client of one node; close it after use."""
    return redis.Redis(*address, socket_timeout=2, decode_responses=True)


def test_move_empty_slot_and_a_client_with_the_old_map_follows_moved(redis_cluster: LocalCluster) -> None:
    key = "moved-fresh-key"
    slot = redis_cluster.keyslot(key)
    source = redis_cluster.master_for_key(key)
    target = redis_cluster.other_master(source)
    assert target != source
    with RedisCluster.from_url(redis_cluster.url, decode_responses=True) as client:
        assert client.get(key) is None  # the client has the map: the slot on source
        assert client.get_node_from_key(key).port == source[1]

        redis_cluster.move_empty_slot(slot, target)

        assert redis_cluster.master_for_key(key) == target
        client.set(key, "after the move")  # sent to source first, which answers -MOVED
        assert client.get(key) == "after the move"
        assert client.get_node_from_key(key).port == target[1]
    with direct(target) as owner:
        assert owner.get(key) == "after the move"
        assert owner.cluster("countkeysinslot", slot) == 1
    with direct(source) as former, pytest.raises(MovedError) as moved:
        former.get(key)
    assert (moved.value.slot_id, moved.value.node_addr) == (slot, target)
    with pytest.raises(ValueError, match="holds 1 keys"):  # the slot is no longer empty
        redis_cluster.move_empty_slot(slot, source)
    redis_cluster.wait_until_healthy()


def test_frozen_master_fails_over_then_rejoins_as_a_replica_when_thawed(redis_cluster: LocalCluster) -> None:
    key = "frozen-master-key"
    with direct(redis_cluster.master_for_key(key)) as master:
        master.set(key, "before the freeze")
        assert master.wait(1, 5000) == 1  # the replica has it
    started = time.monotonic()
    frozen = redis_cluster.freeze_master_for_key(key)
    promoted = redis_cluster.wait_for_failover(frozen)
    failover = time.monotonic() - started
    assert promoted != frozen
    assert redis_cluster.master_for_key(key) == promoted
    with direct(promoted) as new_master:
        assert new_master.get(key) == "before the freeze"

    started = time.monotonic()
    redis_cluster.thaw(frozen)
    redis_cluster.wait_until_healthy()
    rejoined = time.monotonic() - started
    with direct(frozen) as former:
        replication = former.info("replication")
    assert replication["role"] == "slave"
    assert replication["master_link_status"] == "up"
    assert (replication["master_host"], int(replication["master_port"])) == promoted
    print(f"failover of a frozen master: {failover:.1f} s; thawed to healthy: {rejoined:.1f} s")
