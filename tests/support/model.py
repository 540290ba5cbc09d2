"""The model-based test's machine: the Publisher, on the in-memory broker and on a real Redis.

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
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from sse_wsgi import HISTORY_LOST_EVENT, Publisher, Subscription
from sse_wsgi.testing import EventStreamParser

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
