"""The Redis broker: every process and host shares one publisher, on one Redis server or a Redis Cluster.

Needs the ``sse-wsgi[redis]`` extra (redis-py). The modules, one job each:

- :mod:`.keys`: a channel's Redis names, all in one hash slot;
- :mod:`.scripts`: the Lua scripts (publish to one channel, read one channel);
- :mod:`.positions`: positions, ids and a subscriber's cursor;
- :mod:`.history`: publishing into and reading the channels' histories;
- :mod:`.topology`: one server or a cluster, and which node owns a channel;
- :mod:`.receiver`: routed delivery to this process;
- :mod:`.broker`: :class:`RedisBroker`, which puts them together.
"""

from __future__ import annotations

from .broker import DEFAULT_TTL, RedisBroker

__all__ = ["DEFAULT_TTL", "RedisBroker"]
