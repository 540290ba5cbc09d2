"""Which Redis server carries a channel: one server, or the master of the channel's slot in a Redis Cluster.

A URL names one server (``redis://[:password@]host:6379/0``, or
``rediss://`` for TLS). When that server runs with ``cluster-enabled
yes`` (its ``INFO cluster`` says so), the broker uses the whole cluster:
the server is the seed from which redis-py learns the other nodes, and
live events go by sharded pub/sub (``SSUBSCRIBE``/``SPUBLISH``) to the
master of each channel's slot only.
"""

from __future__ import annotations

import redis
import redis.cluster
from redis.connection import parse_url

from .history import CommandClient

__all__ = ["ClusterTopology", "ServerTopology", "Topology", "connect"]

Address = str  # "host:port"


class _Receiving:
    """How to open a pub/sub connection to a node of *url*: plain RESP2 replies, the URL's credentials."""

    def __init__(self, url: str, socket_timeout: float) -> None:
        parsed = parse_url(url)
        self.connection_class: type[redis.Connection] = parsed.pop("connection_class", redis.Connection)
        self.kwargs = {name: value for name, value in parsed.items() if name not in ("host", "port", "db")}
        self.kwargs.update(
            decode_responses=True,
            protocol=2,
            socket_timeout=socket_timeout,
            socket_connect_timeout=socket_timeout,
            socket_keepalive=True,  # beside the receiver's own PING: the kernel drops a peer that vanished
        )
        self.default_host = parsed.get("host", "localhost")
        self.default_port = parsed.get("port", 6379)

    def connection(self, address: Address) -> redis.Connection:
        host, _, port = address.rpartition(":")
        return self.connection_class(host=host, port=int(port), **self.kwargs)


class ServerTopology:
    """One Redis server carries every channel."""

    sharded = False

    def __init__(self, client: redis.Redis, receiving: _Receiving) -> None:
        self.client: CommandClient = client
        self._receiving = receiving
        self._address = f"{receiving.default_host}:{receiving.default_port}"

    def node_of(self, key: str) -> Address:
        """The server's address, whatever the key."""
        return self._address

    def refresh(self) -> None:
        """Nothing moves."""

    def receiving_connection(self, address: Address) -> redis.Connection:
        """A new connection for pub/sub to the server."""
        return self._receiving.connection(address)


class ClusterTopology:
    """A Redis Cluster: each channel lives on the master of its hash slot."""

    sharded = True

    def __init__(self, client: redis.cluster.RedisCluster, receiving: _Receiving) -> None:
        self.client: CommandClient = client
        self._cluster = client
        self._receiving = receiving

    def node_of(self, key: str) -> Address:
        """The address of the master that serves *key*'s slot, as last learnt."""
        node = self._cluster.get_node_from_key(key)
        return f"{node.host}:{node.port}"

    def refresh(self) -> None:
        """Learn the slots' masters again (after a failover)."""
        self._cluster.nodes_manager.initialize()

    def receiving_connection(self, address: Address) -> redis.Connection:
        """A new connection for sharded pub/sub to the master at *address*."""
        return self._receiving.connection(address)


Topology = ServerTopology | ClusterTopology


def connect(url: str, *, socket_timeout: float) -> Topology:
    """The topology at *url*: a cluster when that server says it is part of one.

    Raises redis-py's connection errors when the server cannot be reached.
    """
    options = {
        "decode_responses": True,
        "socket_connect_timeout": socket_timeout,
        "socket_timeout": socket_timeout,
        "socket_keepalive": True,
    }
    receiving = _Receiving(url, socket_timeout)
    client = redis.Redis.from_url(url, **options)
    try:
        enabled = client.info("cluster").get("cluster_enabled") == 1
    except BaseException:
        client.close()
        raise
    if not enabled:
        return ServerTopology(client, receiving)
    client.close()
    return ClusterTopology(redis.cluster.RedisCluster.from_url(url, **options), receiving)
