"""Fuzzing: the public API takes any input without crashing or leaking, payloads never inject fields,
and real servers answer thousands of random requests with no 5xx and no subscriber left behind."""

from __future__ import annotations

import warnings

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sse_wsgi import Event, Publisher, SSEMiddleware
from sse_wsgi.testing import EventStreamParser

# -- the public API under arbitrary arguments ------------------------------------------------------

anything = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=30), st.binary(max_size=10),
    st.lists(st.text(max_size=5), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.just(object()), st.just(float("inf")), st.just(-1), st.just(""),
)  # fmt: skip
ALLOWED = (TypeError, ValueError)


@settings(max_examples=400, deadline=None)
@given(data=anything, event=anything, event_id=anything, retry=anything, comment=anything)
def test_event_takes_anything_or_refuses_clearly(data, event, event_id, retry, comment) -> None:
    try:
        encoded = Event(data, event=event, id=event_id, retry=retry, comment=comment).encode()
    except ALLOWED:
        return
    assert encoded.endswith(b"\n\n")


@settings(max_examples=300, deadline=None)
@given(history=anything, queue_size=anything, serializer=anything)
def test_publisher_constructor_takes_anything_or_refuses_clearly(history, queue_size, serializer) -> None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # a queue larger than half the history is allowed, warned
            publisher = Publisher(history=history, queue_size=queue_size, serializer=serializer)
    except ALLOWED:
        return
    publisher.close()


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    channel=anything | st.lists(anything, max_size=3),
    properties=anything,
    initial=anything,
    last_event_id=anything,
    heartbeat=anything,
    data=anything,
    event=anything,
    event_id=anything,
    retry=anything,
)
def test_publisher_methods_take_anything_and_leak_nothing(
    channel, properties, initial, last_event_id, heartbeat, data, event, event_id, retry
) -> None:
    with Publisher() as publisher:
        try:
            subscription = publisher.subscribe(channel, properties, initial, last_event_id, heartbeat)
        except ALLOWED:
            assert publisher.subscription_count == 0
        else:
            subscription.close()
            assert publisher.subscription_count == 0
        try:
            publisher.publish(data, channel, event=event, id=event_id, retry=retry)
        except ALLOWED:
            pass
        try:
            list(publisher.get_subscribers(channel))
        except ALLOWED:
            pass


@settings(max_examples=300, deadline=None)
@given(
    path=anything, heartbeat=anything, retry=anything, cors=anything, max_channels=anything,
    max_subscribers=anything, max_lifetime=anything, authorize=anything, properties=anything,
)  # fmt: skip
def test_middleware_constructor_takes_anything_or_refuses_clearly(
    path, heartbeat, retry, cors, max_channels, max_subscribers, max_lifetime, authorize, properties
) -> None:
    try:
        middleware = SSEMiddleware(
            lambda environ, start_response: [], path=path, heartbeat=heartbeat, retry=retry, cors_origins=cors,
            max_channels=max_channels, max_subscribers=max_subscribers, max_lifetime=max_lifetime,
            authorize=authorize, properties=properties,
        )  # fmt: skip
    except ALLOWED:
        return
    middleware.publisher.close()


# -- payloads never produce another field -------------------------------------------------------------


@settings(max_examples=10_000, deadline=None)
@given(data=st.text(st.characters(exclude_categories=("Cs",))))
def test_no_payload_produces_a_field_other_than_data(data: str) -> None:
    encoded = Event(data).encode()
    body = encoded.decode("utf-8")
    assert body.endswith("\n\n")
    lines = body[:-2].split("\n")
    assert all(line.startswith("data: ") and "\r" not in line for line in lines)
    parser = EventStreamParser()
    [event] = parser.feed(encoded)
    assert (event.type, event.last_event_id, parser.retry) == ("message", "", None)


# -- HTTP fuzz against real servers ------------------------------------------------------------------
