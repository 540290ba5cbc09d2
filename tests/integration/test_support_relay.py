"""The test relay (tests/support/relay.py) on a real redis-server: it forwards, goes silent without closing, closes."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.support.redis_server import RedisServer
from tests.support.relay import Relay

pytestmark = [pytest.mark.integration, pytest.mark.redis, pytest.mark.timeout(30)]

SOCKET_TIMEOUT = 1.0  # seconds a client waits for a reply through the relay


def client(url: str) -> redis.Redis:
    """A client that raises at the first timeout or error: no retry on a fresh connection, which would
    go through the relay again and so get round a silenced one."""
    return redis.Redis.from_url(
        url, socket_timeout=SOCKET_TIMEOUT, socket_connect_timeout=SOCKET_TIMEOUT, retry=Retry(NoBackoff(), 0)
    )


def wait_for(check: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait until ``check()`` is true; fail after *timeout* seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"not true after {timeout} s: {check}")
        time.sleep(0.02)


def clients_of(server: RedisServer) -> int:
    """How many client connections the server has, not counting the one that asks."""
    with redis.Redis(port=server.port, socket_timeout=2) as direct:
        return len(direct.client_list()) - 1


@pytest.fixture
def relay(redis_server: RedisServer) -> Iterator[Relay]:
    with Relay(redis_server.port) as started:
        yield started


def test_forwards_commands(relay: Relay, redis_server: RedisServer) -> None:
    with client(relay.url_for(3)) as through:
        assert through.ping()
        through.set("relayed", "yes")
        assert through.get("relayed") == b"yes"
    with redis.Redis(port=redis_server.port, db=3, socket_timeout=2) as direct:
        assert direct.get("relayed") == b"yes"
    assert relay.accepted == 1
    wait_for(lambda: relay.open_connections == 0)  # the client's close went through
    wait_for(lambda: clients_of(redis_server) == 0)


def test_silence_times_out_old_connections_and_forwards_new_ones(
    relay: Relay,
    redis_server: RedisServer,
) -> None:
    with client(relay.url_for()) as old, client(relay.url_for()) as new:
        assert old.ping()
        relay.silence()
        with pytest.raises(redis.TimeoutError):  # not a reset: the connection stays open and silent
            old.ping()
        assert new.ping()  # a connection made after silence() goes through
        assert relay.accepted == 2
        assert relay.open_connections == 2
        assert clients_of(redis_server) == 2  # the server never heard the old client leave


def test_silence_all_until_resume(relay: Relay) -> None:
    relay.silence_all()
    with socket.create_connection(("127.0.0.1", relay.port), timeout=SOCKET_TIMEOUT) as during:
        with client(relay.url_for()) as silenced:
            with pytest.raises(redis.TimeoutError):  # accepted, then nothing forwarded
                silenced.ping()
        relay.resume()
        with client(relay.url_for()) as after:
            assert after.ping()
        during.sendall(b"PING\r\n")
        with pytest.raises(TimeoutError):  # silenced when accepted: it stays silent
            during.recv(16)
    assert relay.accepted == 3


def test_close_stops_listening_and_closes_connections(redis_server: RedisServer) -> None:
    relay = Relay(redis_server.port).start()
    port = relay.port
    with client(relay.url_for()) as through:
        assert through.ping()
        relay.silence()
        relay.close()
        assert relay.open_connections == 0
        with pytest.raises(redis.ConnectionError):  # closed now, not silent
            through.ping()
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass
