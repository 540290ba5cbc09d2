"""The Redis names of a channel: its history, metadata, custom-id index and live pub/sub channel.

All of a channel's names share one hash tag, ``{<16 hex digits>}`` derived
from the key prefix and the channel name, so that on Redis Cluster they
live in one hash slot (one master) and one Lua script can touch them all;
the tag is a digest so that any channel name (braces, 200 characters)
gives a short, evenly spread slot. The channel's own name is kept in its
metadata hash (field ``c``) for whoever inspects the keys.
"""

from __future__ import annotations

import hashlib
from typing import NamedTuple

__all__ = ["ChannelKeys", "channel_keys", "check_prefix"]


class ChannelKeys(NamedTuple):
    """The names of one channel under one key prefix."""

    meta: str  # hash: e (epoch), n (last number), l and p (the last event's id and token), c (the name)
    stream: str  # stream: one entry per event, id <n>-<tag>, fields p (payload) and t (microseconds)
    ids: str  # sorted set: the caller's own ids, scored by their number
    live: str  # pub/sub channel: "<token> <payload>" per event
    held: str  # sorted set: the sets of several channels held by GRIP proxies that include it, by expiry
    done: str  # the prefix of its publishes' idempotency keys (string: the answer the publish got)


def check_prefix(prefix: object) -> str:
    """*prefix* if it can start key names; raises otherwise."""
    if not isinstance(prefix, str) or not prefix:
        raise TypeError(f"key must be a non-empty str: {prefix!r}")
    if "{" in prefix or "}" in prefix:
        raise ValueError(f"key must not contain braces (they would pick the Redis Cluster hash slot): {prefix!r}")
    return prefix


def channel_keys(prefix: str, channel: str) -> ChannelKeys:
    """The names of *channel* under *prefix*."""
    tag = hashlib.blake2b(f"{prefix}\0{channel}".encode(), digest_size=8).hexdigest()
    base = f"{prefix}:{{{tag}}}"
    return ChannelKeys(f"{base}:m", f"{base}:h", f"{base}:i", f"{base}:live", f"{base}:g", f"{base}:d:")
