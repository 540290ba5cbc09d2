"""GRIP mode behind a real Pushpin: streams held by the proxy, on every server and on gunicorn ``sync``.

Each test starts the app (``tests/support/servers/apps/basic.py`` with ``SSE_GRIP``) and a Pushpin of its own
(``tests/support/pushpin.py``) in front of it. Clients read the streams through Pushpin; events are published
through the app, which feeds Pushpin's control endpoint.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from sse_wsgi import HISTORY_LOST_EVENT
from tests.support.pushpin import Pushpin
from tests.support.redis_server import RedisServer
from tests.support.servers.harness import SERVERS, LiveServer, start_server, wait_until
from tests.support.streams import Reader, open_stream

pytestmark = [pytest.mark.integration, pytest.mark.pushpin]

APP = "tests.support.servers.apps.basic:app"


@contextmanager
def behind_pushpin(
    directory: Path, kind: str, env: dict[str, str] | None = None
) -> Iterator[tuple[LiveServer, Pushpin]]:
    """The app on server *kind*, and a Pushpin in front of it that the app publishes to."""
    pushpin = Pushpin(directory / "pushpin", origin_port=0)
    settings = {"SSE_GRIP": pushpin.grip_url, "SSE_HEARTBEAT": "1", **(env or {})}
    with start_server(kind, APP, env=settings) as app:
        pushpin.origin_port = app.port
        pushpin.start()
        try:
            yield app, pushpin
        finally:
            pushpin.stop()


def broker_env(broker: str, request: pytest.FixtureRequest) -> dict[str, str]:
    """The app's settings for *broker*: in memory, or on the test's own Redis."""
    return {"SSE_REDIS_URL": request.getfixturevalue("redis_server").url} if broker == "redis" else {}


def publish(app: LiveServer, text: str, *channels: str) -> str:
    query = "&".join(f"channel={name}" for name in channels or ("room",))
    response = httpx.post(f"{app.url}/publish?{query}", content=text, timeout=5)
    assert response.status_code == 200, response.text
    return response.text


def stats(app: LiveServer) -> dict:
    return httpx.get(app.url + "/stats", timeout=5).json()


def opened(reader: Reader) -> None:
    """Until the stream's first body (the opening chunk) came through the proxy."""
    assert wait_until(lambda: reader._parser.retry is not None), "the held stream did not open"


@pytest.mark.parametrize("kind", [*SERVERS, "gunicorn-sync", "gunicorn-sync-preload", "gunicorn-gevent-preload"])
def test_streams_are_held_by_pushpin_on_every_server_and_get_every_event(tmp_path: Path, kind: str) -> None:
    with behind_pushpin(tmp_path, kind) as (app, pushpin):
        streams = [open_stream(pushpin.url, "/events/room") for _ in range(3)]
        try:
            for _, reader in streams:
                opened(reader)
            ids = [publish(app, f"m{n}") for n in range(3)]
            for _, reader in streams:
                assert [(e.data, e.last_event_id) for e in reader.wait_for(3)] == list(
                    zip(["m0", "m1", "m2"], ids, strict=True)
                )
            figures = stats(app)
            assert figures["subscriptions"] == 0  # held by the proxy: no worker holds a stream
            assert wait_until(lambda: sum(p["sent"] for p in stats(app)["grip"].values()) >= 3)
        finally:
            for client, _ in streams:
                client.close()


def test_a_resume_through_pushpin_replays_from_history_then_goes_on_live(tmp_path: Path) -> None:
    with behind_pushpin(tmp_path, "gunicorn-sync") as (app, pushpin):
        first = publish(app, "one")
        ids = [publish(app, text) for text in ("two", "three")]
        client, reader = open_stream(pushpin.url, "/events/room", headers={"Last-Event-ID": first})
        try:
            assert [e.data for e in reader.wait_for(2)] == ["two", "three"]
            ids.append(publish(app, "four"))
            assert [e.last_event_id for e in reader.wait_for(3)] == ids
        finally:
            client.close()


@pytest.mark.parametrize("broker", ["memory", "redis"])
def test_a_stream_of_several_channels_gets_an_event_published_to_both_once(
    tmp_path: Path, broker: str, request: pytest.FixtureRequest
) -> None:
    env = broker_env(broker, request)
    with behind_pushpin(tmp_path, "gunicorn-gthread", env) as (app, pushpin):
        client, reader = open_stream(pushpin.url, "/events?channel=a&channel=b")
        single_client, single = open_stream(pushpin.url, "/events/b")
        try:
            opened(reader)
            opened(single)
            publish(app, "to both", "a", "b")
            publish(app, "to b", "b")
            publish(app, "to a", "a")
            assert [e.data for e in reader.wait_for(3)] == ["to both", "to b", "to a"]
            assert [e.data for e in single.wait_for(2)] == ["to both", "to b"]
            time.sleep(1.0)
            assert len(reader.events) == 3 and len(single.events) == 2  # once each, nothing more
        finally:
            client.close()
            single_client.close()


def test_an_unauthorized_channel_is_refused_through_pushpin(tmp_path: Path) -> None:
    with behind_pushpin(tmp_path, "gunicorn-sync") as (_, pushpin):
        response = httpx.get(pushpin.url + "/events/forbidden-room", timeout=5)
        assert response.status_code == 403 and response.text == "Forbidden\n"
        forged = httpx.get(
            pushpin.url + "/events?channel=forbidden-room&grip_link=0",
            headers={"Grip-Last": "x; last-id=0"}, timeout=5,
        )  # fmt: skip
        assert forged.status_code == 403  # Pushpin drops the client's Grip-Last, and authorize still decides


def test_a_gap_is_recovered_by_pushpin_never_skipped(tmp_path: Path, redis_server: RedisServer) -> None:
    """An event that never reached Pushpin (published by a process without grip) comes by recovery, in order."""
    with (
        behind_pushpin(tmp_path, "gunicorn-gthread", {"SSE_REDIS_URL": redis_server.url}) as (app, pushpin),
        start_server("waitress", APP, env={"SSE_REDIS_URL": redis_server.url}) as bypass,
    ):
        client, reader = open_stream(pushpin.url, "/events/room")
        try:
            opened(reader)
            ids = [publish(app, "one"), publish(bypass, "two"), publish(app, "three")]
            events = reader.wait_for(3, timeout=15)
            assert [(e.data, e.last_event_id) for e in events] == list(zip(["one", "two", "three"], ids, strict=True))
        finally:
            client.close()


@pytest.mark.parametrize("broker", ["memory", "redis"])
def test_an_app_restart_behind_pushpin_keeps_held_streams_and_loses_nothing_silently(
    tmp_path: Path, broker: str, request: pytest.FixtureRequest
) -> None:
    env = broker_env(broker, request)
    with behind_pushpin(tmp_path, "gunicorn-sync", env) as (app, pushpin):
        client, reader = open_stream(pushpin.url, "/events/room")
        try:
            opened(reader)
            before = publish(app, "before")
            reader.wait_for(1)
            with start_server("gunicorn-sync", APP, env={**env, "SSE_GRIP": pushpin.grip_url}) as restarted:
                app.stop()  # the old app is gone; Pushpin still holds the stream
                pushpin.route_to(restarted.port)
                after = publish(restarted, "after")
                events = reader.wait_for(2 if broker == "redis" else 3, timeout=15)
                assert not reader.ended.is_set()  # the same stream throughout: the proxy held it
        finally:
            client.close()
    summary = [(e.type, e.data if e.type == "message" else "") for e in events]
    if broker == "redis":  # the history and the chain of ids live on in Redis
        assert [(e.data, e.last_event_id) for e in events] == [("before", before), ("after", after)]
    else:  # a new life: the proxy sees the gap, asks, and is told what the restart lost
        assert summary == [("message", "before"), (HISTORY_LOST_EVENT, ""), ("message", "after")]
        assert json.loads(events[1].data)["last_event_id"] == before


def test_a_pushpin_restart_drops_held_streams_and_a_resume_through_it_loses_nothing(tmp_path: Path) -> None:
    with behind_pushpin(tmp_path, "gunicorn-sync") as (app, pushpin):
        client, reader = open_stream(pushpin.url, "/events/room")
        try:
            opened(reader)
            seen = publish(app, "seen")
            reader.wait_for(1)
            pushpin.stop()
            assert reader.ended.wait(5)  # the browser would reconnect after its retry
            missed = [publish(app, "missed while down")]
            pushpin.start()
            missed.append(publish(app, "missed while reconnecting"))
        finally:
            client.close()
        client, resumed = open_stream(pushpin.url, "/events/room", headers={"Last-Event-ID": seen})
        try:
            events = resumed.wait_for(2)
            assert [e.last_event_id for e in events] == missed
        finally:
            client.close()


@pytest.mark.parametrize("broker", ["memory", "redis"])
def test_an_id_of_32_channels_comes_back_through_the_app_and_through_pushpin(
    tmp_path: Path, broker: str, request: pytest.FixtureRequest
) -> None:
    """The id a stream of ``max_channels`` channels gets resumes it over HTTP, served by the app and held.

    Names of 200 characters make a 6.5 KB URL: the app takes it (on werkzeug; gunicorn's request line stops
    at 4,094 bytes), Pushpin's stops near 4 KB, so through it the names are 50 characters (ids hold no names).
    """
    with behind_pushpin(tmp_path, "werkzeug", broker_env(broker, request)) as (app, pushpin):
        for base, length in ((app.url, 200), (pushpin.url, 50)):
            names = [f"{n:02d}".ljust(length, "x") for n in range(32)]
            query = "/events?" + "&".join(f"channel={name}" for name in names)
            client, reader = open_stream(base, query)
            try:
                opened(reader)
                for name in names:  # a position on every channel: the longest id
                    publish(app, f"to {name[:2]}", name)
                event = reader.wait_for(32)[-1]
            finally:
                client.close()
            for n in (0, 5, 31):
                publish(app, f"missed {n}", names[n])
            client, resumed = open_stream(base, query, headers={"Last-Event-ID": event.last_event_id})
            try:
                got = resumed.wait_for(3)
                time.sleep(0.5)
                assert [e.data for e in resumed.events] == ["missed 0", "missed 5", "missed 31"], base
                assert all(e.type != HISTORY_LOST_EVENT for e in got)
                assert broker == "memory" or len(event.last_event_id) > 256  # what the middleware once ignored
            finally:
                client.close()
