"""Faults of a real redis-server, each reproduced for real, and what the Redis broker promises under it.

An error reply on the receiving link (``-BUSY``), a network path that goes silent, a publish that times out,
a full Redis (``-OOM``), history that expired, a stream whose channels changed, and a ``Last-Event-ID`` of 32
long channel names over HTTP.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import httpx
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from sse_wsgi import HISTORY_LOST_EVENT, BrokerUnavailable, Publisher, SSEMiddleware
from sse_wsgi.redis import RedisBroker
from sse_wsgi.redis.broker import SOCKET_TIMEOUT
from sse_wsgi.redis.keys import channel_keys
from sse_wsgi.testing import EventStreamParser, ReceivedEvent
from tests.support.redis_server import RedisServer
from tests.support.relay import Relay

KEY = "sse_wsgi"  # the broker's default key prefix

# A script that keeps Redis busy for ARGV[1] microseconds (Redis runs nothing else meanwhile).
BUSY_SCRIPT = """
local t = redis.call('TIME')
local start = tonumber(t[1]) * 1000000 + tonumber(t[2])
while true do
  local n = redis.call('TIME')
  if tonumber(n[1]) * 1000000 + tonumber(n[2]) - start > tonumber(ARGV[1]) then break end
end
return 1
"""


class Reader:
    """Reads a subscription in a named thread and collects its events."""

    def __init__(self, chunks: Iterable[bytes], name: str = "test-redis-faults-reader") -> None:
        self.events: list[ReceivedEvent] = []
        self.ended = threading.Event()
        self._parser = EventStreamParser()
        self._chunks = chunks
        threading.Thread(target=self._run, name=name, daemon=True).start()

    def _run(self) -> None:
        try:
            for chunk in self._chunks:
                self.events.extend(self._parser.feed(chunk))
        finally:
            self.ended.set()

    def wait_for(self, count: int, timeout: float = 10.0) -> list[ReceivedEvent]:
        deadline = time.monotonic() + timeout
        while len(self.events) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(self.events) >= count, f"{len(self.events)} of {count} events: {self.events}"
        return self.events[:count]


def admin_client(server: RedisServer, timeout: float = 5.0) -> redis.Redis:
    """A plain client of *server* for the test's own commands, that raises at its first timeout; close it after use."""
    return redis.Redis(
        port=server.port,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        decode_responses=True,
        retry=Retry(NoBackoff(), 0),  # redis.Redis() retries a timeout 10 times: a probe would outlast a freeze
    )


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"not true after {timeout} s: {what}")
        time.sleep(0.02)


def set_busy_threshold(admin: redis.Redis, milliseconds: int) -> None:
    """How long a script runs before Redis answers other clients ``-BUSY`` (busy-reply-threshold since 7.0)."""
    admin.config_set("lua-time-limit", milliseconds)  # the name Redis 6.2 knows; an alias on 7.0


class Background:
    """Runs *call* once in a named thread; keeps its result or its exception for the test to check."""

    def __init__(self, call: Callable[[], Any], name: str) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self.started = threading.Event()
        self._call = call
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        self.started.set()
        try:
            self.result = self._call()
        except BaseException as error:  # the test asserts on it
            self.error = error

    def join(self, timeout: float) -> Any:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"{self._thread.name} still running after {timeout} s"
        if self.error is not None:
            raise self.error
        return self.result


def without_lost(events: list[ReceivedEvent]) -> list[ReceivedEvent]:
    """*events*, after checking that none is a history-lost event."""
    assert not [e for e in events if e.type == HISTORY_LOST_EVENT], f"a history-lost event: {events}"
    return events


# -- an error reply on the receiving link --------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.redis
@pytest.mark.timeout(60)
def test_a_busy_reply_on_the_receiving_link_replaces_it_and_its_channels_get_every_later_event(
    redis_server: RedisServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Fault: a Lua script runs past the busy-reply threshold, so Redis answers ``-BUSY`` to the SUBSCRIBE that
    the receiving link sends for a new channel (the error reply used to end the link's thread silently)."""
    with (
        admin_client(redis_server, timeout=10) as admin,
        admin_client(redis_server, timeout=2) as probe,
        Publisher.from_url(redis_server.url) as here,
        Publisher.from_url(redis_server.url) as there,
    ):
        set_busy_threshold(admin, 200)
        reader = Reader(here.subscribe("a", heartbeat=None))
        there.publish("before", "a")
        reader.wait_for(1)

        script = Background(lambda: admin.eval(BUSY_SCRIPT, 0, 1_500_000), "test-busy-script")
        busy_replies = []

        def busy() -> bool:
            try:
                probe.ping()
            except redis.ResponseError as error:
                busy_replies.append(str(error))
                return True
            return False

        wait_until(busy, 1.2, "another client gets -BUSY")  # the threshold is 0.2 s: the script is still running
        assert busy_replies[0].startswith("BUSY")
        try:  # the link sends SUBSCRIBE now and reads -BUSY
            here.subscribe("b", heartbeat=None).close()
        except BrokerUnavailable:
            pass  # refused while Redis is busy: fine, the page comes back
        assert script.join(10) == 1
        set_busy_threshold(admin, 5000)

        after = [there.publish(f"after {n}", "a") for n in range(5)]
        events = reader.wait_for(6, timeout=10)
        assert [(e.data, e.last_event_id) for e in events[1:]] == [(f"after {n}", i) for n, i in enumerate(after)]
        time.sleep(0.2)
        assert len(reader.events) == 6  # each once

        b = Reader(here.subscribe("b", heartbeat=None))  # a new channel is subscribed on the new link
        b_id = there.publish("b1", "b")
        assert [(e.data, e.last_event_id) for e in b.wait_for(1)] == [("b1", b_id)]

        stats = here.stats()
        assert stats["reconnects"] >= 1  # the link that read -BUSY was replaced
        assert stats["connected"] is True
        assert any("BUSY" in record.getMessage() for record in caplog.records), "the link never read -BUSY"


# -- a network path that goes silent -------------------------------------------------------------------------

HEALTH_CHECK = 2.0  # seconds


@pytest.mark.integration
@pytest.mark.redis
@pytest.mark.timeout(60)
def test_a_silent_relay_is_noticed_within_the_health_check_and_every_event_arrives_in_order(
    redis_server: RedisServer,
) -> None:
    """Fault: the path to Redis freezes (``Relay.silence()``: no FIN, no RST, no byte either way), as behind a
    frozen host, a partition or a NAT that dropped its mapping; new connections get through again."""
    with Relay(redis_server.port) as relay, Publisher.from_url(redis_server.url) as there:
        here = Publisher(RedisBroker.from_url(relay.url_for(), health_check=HEALTH_CHECK))
        try:
            reader = Reader(here.subscribe("r", heartbeat=None))
            there.publish("first", "r")
            reader.wait_for(1)
            assert here.stats()["connected"] is True

            relay.silence()
            silenced = time.monotonic()

            # stats() reads the history through the relay too: the first command after silence() takes the idle
            # command connection, frozen as well, and waits out its socket timeout (not retried). Let that be this
            # call, so that the poll below (on new connections, which get through) sees the link's state as it goes;
            # without it the receiver's catch-up read takes that connection and the events come SOCKET_TIMEOUT later.
            def timed_stats() -> float:
                start = time.monotonic()
                here.stats()
                return time.monotonic() - start

            frozen_call = Background(timed_stats, "test-stats-on-the-frozen-connection")
            frozen_call.started.wait(5)
            time.sleep(0.1)
            ids = [there.publish(f"e{n}", "r") for n in range(30)]
            samples: list[tuple[float, bool]] = []
            while len(reader.events) < 31 and time.monotonic() - silenced < HEALTH_CHECK + SOCKET_TIMEOUT + 5:
                connected = here.stats()["connected"]
                samples.append((time.monotonic() - silenced, connected))
                time.sleep(0.02)
            arrived = time.monotonic() - silenced
            print(
                f"\nsilent relay: the 30 events arrived {arrived:.2f} s after silence() (health_check {HEALTH_CHECK} s)"
            )
            events = reader.wait_for(31, timeout=1)
            assert [(e.data, e.last_event_id) for e in events[1:]] == [(f"e{n}", i) for n, i in enumerate(ids)]
            assert arrived < HEALTH_CHECK + 3.0
            disconnected = [at for at, connected in samples if not connected]
            assert disconnected, f"stats() never said disconnected before the events arrived: {samples}"
            print(f"silent relay: stats() said disconnected from {disconnected[0]:.2f} s to {disconnected[-1]:.2f} s")
            # Not before: its last read (the answer to a PING, sent about every second) was at most ~1 s old.
            assert HEALTH_CHECK / 2 <= disconnected[0] <= HEALTH_CHECK + 0.5
            blocked = frozen_call.join(SOCKET_TIMEOUT + 3)
            print(f"silent relay: the stats() call on the frozen command connection took {blocked:.2f} s")
            assert here.stats()["connected"] is True
            assert here.stats()["reconnects"] >= 1
            late = there.publish("late", "r")  # and the new link carries live events
            assert reader.wait_for(32)[-1].last_event_id == late
        finally:
            here.close()


# -- a publish that times out --------------------------------------------------------------------------------


def freeze(admin: redis.Redis, seconds: int) -> tuple[str, Background]:
    """Freeze Redis for *seconds*: ``DEBUG SLEEP``, or where Redis refuses DEBUG (7.0 unless started with
    enable-debug-command), a script that runs as long, under a busy-reply threshold raised above that, so that
    Redis reads nothing and answers nobody meanwhile, as DEBUG SLEEP does. Returns how, and the thread."""
    try:
        admin.execute_command("DEBUG", "SLEEP", 0)
    except redis.ResponseError:
        set_busy_threshold(admin, (seconds + 10) * 1000)
        return "a script", Background(lambda: admin.eval(BUSY_SCRIPT, 0, seconds * 1_000_000), "test-freeze-script")
    return "DEBUG SLEEP", Background(lambda: admin.execute_command("DEBUG", "SLEEP", seconds), "test-debug-sleep")


@pytest.mark.integration
@pytest.mark.redis
@pytest.mark.timeout(60)
def test_a_publish_that_times_out_raises_outcome_unknown_and_its_retry_with_the_key_publishes_it_once(
    redis_server: RedisServer,
) -> None:
    """Fault: Redis stops answering (``DEBUG SLEEP 6``) for longer than the library's socket timeout (5 s) while
    a publish waits for its reply; on waking it runs the publish, whose client has given up."""
    from sse_wsgi import PublishOutcomeUnknown

    keys = channel_keys(KEY, "c")
    with (
        admin_client(redis_server, timeout=30) as admin,
        admin_client(redis_server, timeout=0.3) as probe,
        Publisher.from_url(redis_server.url) as publisher,
    ):
        reader = Reader(publisher.subscribe("c", heartbeat=None))
        publisher.publish("warm", "elsewhere")  # Redis knows the script: the publish sent while frozen runs on waking
        admin.config_resetstat()
        how, frozen = freeze(admin, 6)

        def is_frozen() -> bool:
            try:
                probe.ping()
            except redis.TimeoutError:
                return True
            return False

        wait_until(is_frozen, 2, "Redis stops answering")
        started = time.monotonic()
        with pytest.raises(PublishOutcomeUnknown, match="not confirmed") as failed:
            publisher.publish("x", "c")
        print(f"\nfrozen by {how}: publish raised PublishOutcomeUnknown after {time.monotonic() - started:.2f} s")
        key = failed.value.idempotency_key
        assert key
        event_id = publisher.publish("x", "c", idempotency_key=key)  # waits for Redis to wake up
        frozen.join(10)
        set_busy_threshold(admin, 5000)
        [event] = reader.wait_for(1)
        assert (event.data, event.last_event_id) == ("x", event_id)
        time.sleep(3)  # a second copy would have come by now
        assert len(reader.events) == 1
        assert admin.xlen(keys.stream) == 1
        assert admin.info("commandstats")["cmdstat_evalsha"]["calls"] == 2  # both ran: one wrote, one found it
        assert publisher.publish("x", "c", idempotency_key=key) == event_id  # and once more: still once
        assert admin.xlen(keys.stream) == 1


@pytest.mark.integration
@pytest.mark.redis
@pytest.mark.timeout(30)
def test_a_publish_repeated_with_the_same_idempotency_key_returns_the_first_id_and_stores_one_event(
    redis_server: RedisServer,
) -> None:
    """Fault: none (the retry a caller makes after a failure it could not judge): the same publish, twice."""
    with admin_client(redis_server) as admin, Publisher.from_url(redis_server.url) as publisher:
        reader = Reader(publisher.subscribe("k", heartbeat=None))
        first = publisher.publish("once", "k", idempotency_key="key-1")
        assert publisher.publish("once", "k", idempotency_key="key-1") == first
        end = publisher.publish("end", "k")
        assert [(e.data, e.last_event_id) for e in reader.wait_for(2)] == [("once", first), ("end", end)]
        time.sleep(0.2)
        assert len(reader.events) == 2
        assert admin.xlen(channel_keys(KEY, "k").stream) == 2
        both = publisher.publish("both", ["k1", "k2"], idempotency_key="key-2")  # on each of several channels
        assert publisher.publish("both", ["k1", "k2"], idempotency_key="key-2") == both
        assert [admin.xlen(channel_keys(KEY, c).stream) for c in ("k1", "k2")] == [1, 1]


# -- a full Redis ---------------------------------------------------------------------------------------------


def grip_sig(key: bytes) -> str:
    """A Grip-Sig as Pushpin sends it: an HS256 JWT with ``iss`` and ``exp``, signed with *key*."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")

    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = b64(json.dumps({"iss": "pushpin", "exp": int(time.time()) + 60}).encode())
    signature = hmac.new(key, f"{header}.{payload}".encode("ascii"), hashlib.sha256).digest()
    return f"{header}.{payload}.{b64(signature)}"


def fill(admin: redis.Redis) -> None:
    """Fill Redis up to its maxmemory, set just above what it uses now, until even a one-byte write gets -OOM."""
    admin.config_set("maxmemory-policy", "noeviction")
    admin.config_set("maxmemory", int(admin.info("memory")["used_memory"]) + 2 * 1024 * 1024)
    for size in (65536, 4096, 256, 16, 1):  # a refused large value leaves room for smaller ones
        for n in range(10_000):
            try:
                admin.set(f"filler:{size}:{n}", "x" * size)
            except redis.exceptions.OutOfMemoryError:
                break
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        admin.set("one more", "x")


@pytest.mark.integration
@pytest.mark.redis
@pytest.mark.timeout(60)
def test_a_full_redis_refuses_a_publish_as_not_published_and_a_held_stream_gets_a_retry_hint_not_a_500(
    redis_server: RedisServer,
) -> None:
    """Fault: Redis is full (``maxmemory`` reached with ``noeviction``): every write gets ``-OOM``."""
    from werkzeug.test import Client

    with admin_client(redis_server) as admin, Publisher.from_url(redis_server.url) as publisher:
        before = publisher.publish("before", "a")
        try:
            fill(admin)
            with pytest.raises(BrokerUnavailable, match="not published") as refused:
                publisher.publish("x", "a")
            from sse_wsgi import PublishOutcomeUnknown

            assert not isinstance(refused.value, PublishOutcomeUnknown)  # Redis said no: nothing to retry with a key
            assert admin.xlen(channel_keys(KEY, "a").stream) == 1
            assert admin.hget(channel_keys(KEY, "a").meta, "l") == before

            proxied = Publisher(RedisBroker.from_url(redis_server.url), grip="http://127.0.0.1:1?key=secret")
            with proxied:
                app = SSEMiddleware(lambda environ, start_response: [], proxied)
                response = Client(app).get("/events?channel=a&channel=b", headers={"Grip-Sig": grip_sig(b"secret")})
                assert response.status_code == 200
                assert response.mimetype == "text/event-stream"
                assert "Grip-Hold" not in response.headers  # not held: the browser comes back
                body = response.get_data()
                parser = EventStreamParser()
                assert parser.feed(body) == []
                assert b"retry:" in body and parser.retry is not None and 1000 <= parser.retry <= 5000
        finally:
            admin.config_set("maxmemory", 0)


# -- history that expired ------------------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.redis
@pytest.mark.timeout(30)
def test_a_resume_after_the_history_expired_is_no_loss_and_the_loss_after_the_metadata_expired_is_told_once(
    redis_server: RedisServer,
) -> None:
    """Fault: a channel's data expires (history_ttl 1 s): first its history (the metadata outlives it), then
    its metadata too."""
    keys = channel_keys(KEY, "t")
    with admin_client(redis_server) as admin, Publisher(RedisBroker.from_url(redis_server.url, ttl=1.0)) as publisher:
        first = publisher.publish("e1", "t")
        time.sleep(1.5)
        assert not admin.exists(keys.stream) and admin.exists(keys.meta)  # the history expired, not the metadata

        with publisher.subscribe("t", last_event_id=first, heartbeat=None) as subscription:
            reader = Reader(subscription)
            second = publisher.publish("e2", "t")
            [event] = without_lost(reader.wait_for(1))
            assert (event.data, event.last_event_id) == ("e2", second)
            time.sleep(0.2)
            assert len(reader.events) == 1

        wait_until(lambda: not admin.exists(keys.meta), 5, "the metadata expires")
        with publisher.subscribe("t", last_event_id=second, heartbeat=None) as subscription:
            reader = Reader(subscription)
            [lost] = reader.wait_for(1)
            assert lost.type == HISTORY_LOST_EVENT
            assert json.loads(lost.data)["last_event_id"] == second
            assert lost.last_event_id, "the history-lost event carries no id: the next reconnect is told again"

        with publisher.subscribe("t", last_event_id=lost.last_event_id, heartbeat=None) as subscription:
            reader = Reader(subscription)
            third = publisher.publish("e3", "t")
            [event] = without_lost(reader.wait_for(1))
            assert (event.data, event.last_event_id) == ("e3", third)
            time.sleep(0.2)
            assert len(reader.events) == 1


# -- a stream whose channels changed -------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.redis
@pytest.mark.timeout(30)
def test_a_resume_with_the_id_of_fewer_channels_replays_what_each_of_them_missed(
    redis_server: RedisServer,
) -> None:
    """Fault: the page joined a channel while away: its Last-Event-ID names [a, b], the stream is [a, b, c]."""
    with Publisher.from_url(redis_server.url) as publisher:
        with publisher.subscribe(["a", "b"], heartbeat=None) as subscription:
            reader = Reader(subscription)
            publisher.publish("a0", "a")
            publisher.publish("b0", "b")
            last = reader.wait_for(2)[-1].last_event_id
        missed = {data: publisher.publish(data, data[0]) for data in ("a1", "b1", "a2", "b2")}

        with publisher.subscribe(["a", "b", "c"], last_event_id=last, heartbeat=None) as subscription:
            reader = Reader(subscription)
            publisher.publish("c1", "c")
            events = without_lost(reader.wait_for(5))
            by_channel = {
                "a": [e.data for e in events if e.data[0] == "a"],
                "b": [e.data for e in events if e.data[0] == "b"],
            }
            assert by_channel == {"a": ["a1", "a2"], "b": ["b1", "b2"]}
            for event in events[:4]:  # its id names its position on its channel (a, b, c: the order of the names)
                assert event.last_event_id.split("_")["abc".index(event.data[0])] == missed[event.data]
            assert events[-1].data == "c1"
            time.sleep(0.2)
            assert len(reader.events) == 5


# -- a Last-Event-ID of 32 long channel names, over HTTP -----------------------------------------------------


def read_until(
    chunks: Iterator[bytes], parser: EventStreamParser, done: Callable[[list[ReceivedEvent]], bool]
) -> list[ReceivedEvent]:
    """Feed *chunks* to *parser* until ``done(events so far)``; the events (a read timeout ends it failing)."""
    events: list[ReceivedEvent] = []
    for chunk in chunks:
        events.extend(parser.feed(chunk))
        if done(events):
            return events
    pytest.fail(f"the stream ended after {events}")


@pytest.mark.integration
@pytest.mark.redis
@pytest.mark.timeout(60)
def test_an_http_resume_on_32_long_channels_with_an_id_over_256_characters_replays_each_event_once(
    redis_server: RedisServer,
) -> None:
    """Fault: the browser reconnects (its stream was cut) with a Last-Event-ID that names 32 channels of 200
    characters each, far longer than 256 characters."""
    from werkzeug.serving import make_server

    channels = [f"{n:02d}-" + "x" * 197 for n in range(32)]
    assert all(len(name) == 200 for name in channels)
    query = "&".join(f"channel={name}" for name in channels)
    publisher = Publisher.from_url(redis_server.url)
    publisher.publish("before", channels)  # the channels have history: the stream's ids name a position on each
    server = make_server(
        "127.0.0.1", 0, SSEMiddleware(lambda environ, start_response: [], publisher, heartbeat=1.0), threaded=True
    )
    serving = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="test-werkzeug-server")
    serving.start()
    url = f"http://127.0.0.1:{server.server_port}/events?{query}"
    try:
        with httpx.Client(timeout=httpx.Timeout(5, read=10)) as client:
            with client.stream("GET", url) as response:
                assert response.status_code == 200
                wait_until(lambda: publisher.subscription_count == 1, 5, "the stream is subscribed")
                publisher.publish("all", channels)
                [event] = read_until(response.iter_raw(), EventStreamParser(), lambda events: len(events) == 1)
            assert event.data == "all"
            resume_id = event.last_event_id
            assert len(resume_id) > 256, resume_id
            wait_until(lambda: publisher.subscription_count == 0, 5, "the first stream is closed")

            missed = [
                publisher.publish("m1", channels[0]),
                publisher.publish("m2", [channels[5], channels[9]]),
                publisher.publish("m3", channels[31]),
            ]
            with client.stream("GET", url, headers={"Last-Event-ID": resume_id}) as response:
                assert response.status_code == 200
                wait_until(lambda: publisher.subscription_count == 1, 5, "the second stream is subscribed")
                publisher.publish("end", channels[1])
                events = read_until(
                    response.iter_raw(), EventStreamParser(), lambda got: bool(got) and got[-1].data == "end"
                )
            assert [e.data for e in without_lost(events)] == ["m1", "m2", "m3", "end"]
            # Each id names a position per channel, in name order: there, the event's on the channel it came from.
            tokens = [e.last_event_id.split("_") for e in events[:3]]
            assert [tokens[0][0], tokens[1][5], tokens[2][31]] == [missed[0], missed[1].split("_")[0], missed[2]]
            assert len({e.last_event_id for e in events}) == 4
    finally:
        publisher.close()
        server.shutdown()
        serving.join(5)
        server.server_close()
