"""GRIP mode in one process: GRIP URLs, the proxy's signature, held answers, recovery answers, proxy items.

The real proxy (Pushpin) is in tests/test_pushpin.py; here requests are made
as Pushpin makes them (an HS256 ``Grip-Sig``), through werkzeug's test client.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
from collections.abc import Iterator
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from werkzeug.test import Client

from sse_wsgi import HISTORY_LOST_EVENT, Publisher, SSEMiddleware
from sse_wsgi.broker import MAX_HELD_SETS, Message
from sse_wsgi.grip import GripProxy, held_channel, parse_grip, parse_grip_last, verify_grip_sig
from sse_wsgi.testing import EventStreamParser

KEY = "test-secret"
UNREACHABLE = f"http://127.0.0.1:9?key={KEY}"  # port 9 (discard) is closed here: items are refused, not lost


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def grip_sig(key: str = KEY, *, expires_in: float = 3600, alg: str = "HS256") -> str:
    """A ``Grip-Sig`` as Pushpin makes it: an HS256 JWT ``{"iss": "pushpin", "exp": ...}``."""
    header = _b64(json.dumps({"typ": "JWT", "alg": alg}).encode())
    payload = _b64(json.dumps({"iss": "pushpin", "exp": int(time.time() + expires_in)}).encode())
    signature = hmac.new(key.encode(), f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{_b64(signature)}"


@pytest.fixture
def publisher() -> Iterator[Publisher]:
    with Publisher(grip=UNREACHABLE) as made:
        yield made


@pytest.fixture
def client(publisher: Publisher) -> Client:
    def authorize(environ, channels) -> bool:
        return "secret" not in channels

    return Client(SSEMiddleware(lambda environ, start_response: [], publisher, authorize=authorize, heartbeat=15))


# -- configuration and signatures ------------------------------------------------------------------


def test_a_grip_url_gives_the_publish_endpoint_and_the_key() -> None:
    proxy = GripProxy.from_url("http://127.0.0.1:5561?key=changeme")
    assert (proxy.publish_url, proxy.key) == ("http://127.0.0.1:5561/publish/", b"changeme")
    binary = GripProxy.from_url("https://proxy.internal/base/?key=base64:" + base64.b64encode(b"\x00\xff").decode())
    assert (binary.publish_url, binary.key) == ("https://proxy.internal/base/publish/", b"\x00\xff")
    assert len(parse_grip(["http://a:1?key=x", "http://b:2?key=y"])) == 2
    assert parse_grip(None) == []


@pytest.mark.parametrize(
    ("grip", "error", "match"),
    [
        pytest.param("http://127.0.0.1:5561", ValueError, "signing key", id="no key"),
        pytest.param("http://127.0.0.1:5561?key=", ValueError, "signing key", id="empty key"),
        pytest.param("127.0.0.1:5561?key=x", ValueError, "http", id="not a URL"),
        pytest.param("http://h:1?key=base64:***", ValueError, "base64", id="bad base64"),
        pytest.param([], ValueError, "at least one", id="empty list"),
        pytest.param([5561], TypeError, "GRIP URL must be a str", id="not a str"),
    ],
)
def test_a_bad_grip_argument_is_a_clear_error(grip, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        Publisher(grip=grip)


@pytest.mark.parametrize(
    ("token", "verifies"),
    [
        pytest.param(grip_sig(), True, id="signed with the key"),
        pytest.param(grip_sig("another key"), False, id="another key"),
        pytest.param(grip_sig(expires_in=-5), False, id="expired"),
        pytest.param(grip_sig(alg="none"), False, id="alg none"),
        pytest.param("not.a.jwt", False, id="garbage"),
        pytest.param(".".join([_b64(b"[" * 5000)] * 2 + ["AAAA"]), False, id="deeply nested JSON"),
        pytest.param("\u00e9.\u00e9.\u00e9", False, id="not ASCII"),
        pytest.param("", False, id="empty"),
        pytest.param(None, False, id="absent"),
    ],
)
def test_grip_sig_verifies_only_when_signed_with_the_key_and_not_expired(token: str | None, verifies: bool) -> None:
    assert verify_grip_sig(token, [b"other", KEY.encode()]) is verifies


def test_grip_last_is_parsed_with_plain_and_quoted_ids() -> None:
    assert parse_grip_last('a; last-id=1-2-3, b; last-id="x,\\"y"') == {"a": "1-2-3", "b": 'x,"y'}


def test_callable_data_cannot_go_to_a_proxy(publisher: Publisher) -> None:
    with pytest.raises(TypeError, match="GRIP proxy"):
        publisher.publish(lambda properties: "x")


# -- held answers ----------------------------------------------------------------------------------


def hold_headers(response) -> dict[str, str]:
    return {name: value for name, value in response.headers.items() if name.startswith("Grip-")}


def test_a_request_from_the_proxy_is_held_at_once_with_the_stream_start(client: Client, publisher: Publisher) -> None:
    first = publisher.publish("one", "chat")
    response = client.get("/events/chat", headers={"Grip-Sig": grip_sig()})
    assert response.status_code == 200 and response.mimetype == "text/event-stream"
    grip = hold_headers(response)
    assert grip["Grip-Hold"] == "stream"
    assert grip["Grip-Channel"] == f"{held_channel(['chat'])}; prev-id={first}"
    assert grip["Grip-Keep-Alive"] == ": keep-alive\\n\\n; format=cstring; timeout=15"
    link = urlsplit(grip["Grip-Link"].split(">")[0].lstrip("<"))
    assert link.path == "/events" and ("channel", "chat") in parse_qsl(link.query)
    assert grip["Grip-Link"].endswith("; rel=next; timeout=60")
    assert response.get_data().startswith(b": stream open\nretry: 3000\n")  # the opening chunk, nothing more
    assert publisher.subscription_count == 0  # the proxy holds it, not the app


def test_a_held_resume_carries_the_replay_and_announces_its_last_id(client: Client, publisher: Publisher) -> None:
    first = publisher.publish("one", "chat")
    ids = [publisher.publish(text, "chat") for text in ("two", "three")]
    response = client.get("/events/chat", headers={"Grip-Sig": grip_sig(), "Last-Event-ID": first})
    events = EventStreamParser().feed(response.get_data())
    assert [(e.data, e.last_event_id) for e in events] == [("two", ids[0]), ("three", ids[1])]
    assert hold_headers(response)["Grip-Channel"].endswith(f"prev-id={ids[1]}")


def test_without_a_valid_signature_the_app_streams_it_itself(client: Client, publisher: Publisher) -> None:
    for headers in ({}, {"Grip-Sig": grip_sig("guessed")}):
        response = client.get("/events/chat", headers=headers)
        assert hold_headers(response) == {}
        next(response.response)  # the opening chunk: a stream the app serves
        assert publisher.subscription_count == 1
        response.close()
        assert publisher.subscription_count == 0


def test_authorize_limits_and_methods_are_decided_at_hold_time(client: Client) -> None:
    signed = {"Grip-Sig": grip_sig()}
    assert client.get("/events/secret", headers=signed).status_code == 403
    assert client.get("/events?" + "&".join(f"channel=c{n}" for n in range(33)), headers=signed).status_code == 400
    assert client.post("/events/chat", headers=signed).status_code == 405


def test_several_channels_are_held_as_one_proxy_channel(client: Client, publisher: Publisher) -> None:
    response = client.get("/events?channel=b&channel=a", headers={"Grip-Sig": grip_sig()})
    name = hold_headers(response)["Grip-Channel"].split(";")[0]
    assert name == held_channel(["a", "b"]) == held_channel(["b", "a"]) != held_channel(["a"])
    event_id, items = publisher.broker.publish_for_proxies(Message(("a", "c"), "x"))
    by_channel = {item.channels: item for item in items}
    assert sorted(by_channel) == [("a",), ("a", "b"), ("c",)]  # the held set gets it once
    assert all(item.id == event_id for item in items)


def test_a_publish_to_a_channel_in_many_held_sets_costs_a_bounded_number_of_items(
    client: Client, publisher: Publisher
) -> None:
    """Each of many users holds ``[user:i, news]``: a publish to ``news`` makes at most MAX_HELD_SETS + 1 items.

    A set beyond the bound is not held: the app serves that stream itself, with every promise of a stream.
    """
    held = [publisher.hold([f"user:{n}", "news"], None) for n in range(MAX_HELD_SETS + 50)]
    assert all(h is not None for h in held[:MAX_HELD_SETS]) and all(h is None for h in held[MAX_HELD_SETS:])
    assert publisher.hold(["user:0", "news"], None) is not None  # a registered set is renewed, never refused
    _, items = publisher.broker.publish_for_proxies(Message(("news",), "x"))
    assert len(items) == MAX_HELD_SETS + 1  # one for the channel, one per registered set
    response = client.get(f"/events?channel=news&channel=user:{MAX_HELD_SETS + 1}", headers={"Grip-Sig": grip_sig()})
    assert hold_headers(response) == {}  # not held: streamed by the app
    assert next(response.response).startswith(b": stream open")
    assert publisher.subscription_count == 1
    response.close()
    assert publisher.subscription_count == 0


# -- recovery ----------------------------------------------------------------------------------------


def recovery_link(client: Client, path: str) -> str:
    response = client.get(path, headers={"Grip-Sig": grip_sig()})
    return hold_headers(response)["Grip-Link"].split(">")[0].lstrip("<")


def test_recovery_answers_what_followed_the_last_id_and_holds_again(client: Client, publisher: Publisher) -> None:
    link = recovery_link(client, "/events/chat")
    first = publisher.publish("one", "chat")
    second = publisher.publish("two", "chat")
    last = f"{held_channel(['chat'])}; last-id={first}"
    response = client.get(link, headers={"Grip-Sig": grip_sig(), "Grip-Last": last})  # no cookie, no authorize
    assert [e.data for e in EventStreamParser().feed(response.get_data())] == ["two"]  # no opening chunk again
    assert hold_headers(response)["Grip-Channel"].endswith(f"prev-id={second}")


def test_recovery_from_an_id_the_history_lost_starts_with_the_loss_event(client: Client, publisher: Publisher) -> None:
    link = recovery_link(client, "/events/chat")
    publisher.publish("kept", "chat")
    last = f"{held_channel(['chat'])}; last-id=0badcafe-7"  # another life's id
    response = client.get(link, headers={"Grip-Sig": grip_sig(), "Grip-Last": last})
    events = EventStreamParser().feed(response.get_data())
    assert [e.type for e in events] == [HISTORY_LOST_EVENT, "message"]


@pytest.mark.parametrize("forged", ["no signature", "another key", "link of another channel", "edited link"])
def test_a_recovery_request_that_does_not_verify_gets_403_and_nothing(
    client: Client, publisher: Publisher, forged: str
) -> None:
    link = recovery_link(client, "/events/secret-not" if forged != "link of another channel" else "/events/other")
    publisher.publish("private", "secret")
    headers = {"Grip-Sig": grip_sig(), "Grip-Last": f"{held_channel(['secret'])}; last-id=0badcafe-0"}
    if forged == "no signature":
        del headers["Grip-Sig"]
    if forged == "another key":
        headers["Grip-Sig"] = grip_sig("guessed")
    if forged == "edited link":
        link = link.replace("channel=secret-not", "channel=secret")
    if forged == "link of another channel":
        link = link.replace("channel=other", "channel=secret")
    response = client.get(link, headers=headers)
    assert response.status_code == 403 and b"private" not in response.get_data()


@pytest.mark.parametrize("signature", ["%C3%A9", "", "0" * 64])
def test_a_recovery_link_with_a_malformed_signature_gets_403_not_an_error(
    client: Client, publisher: Publisher, signature: str
) -> None:
    link = re.sub(r"grip_link=[^&]*", f"grip_link={signature}", recovery_link(client, "/events/chat"))
    publisher.publish("private", "chat")
    headers = {"Grip-Sig": grip_sig(), "Grip-Last": f"{held_channel(['chat'])}; last-id=0badcafe-0"}
    response = client.get(link, headers=headers)
    assert response.status_code == 403 and b"private" not in response.get_data()


header_text = st.text(st.characters(min_codepoint=32, max_codepoint=255), max_size=40)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    sig=st.sampled_from(["valid", "expired", "nested", "none"]) | header_text,
    last=st.none() | header_text | header_text.map(lambda i: f"{held_channel(['chat'])}; last-id={i}"),
    query=st.lists(st.tuples(st.sampled_from(["channel", "grip_link", "lastEventId"]), header_text), max_size=3),
    link_of_chat=st.booleans(),
    path=st.sampled_from(["/events", "/events/chat", "/events/secret", "/events/%C3%A9", "/events/%FF"]),
)
def test_hostile_grip_requests_get_an_answer_never_an_error_and_leak_nothing(
    client: Client, publisher: Publisher, sig: str, last: str | None, query: list, link_of_chat: bool, path: str
) -> None:
    signatures = {"valid": grip_sig(), "expired": grip_sig(expires_in=-5), "nested": f"{_b64(b'[' * 5000)}.e30.AA"}
    headers = {} if sig == "none" else {"Grip-Sig": signatures.get(sig, sig)}
    if last is not None:
        headers["Grip-Last"] = last
    target = recovery_link(client, "/events/chat") if link_of_chat else path
    target += ("&" if "?" in target else "?") + urlencode(query)
    response = client.get(target, headers=headers, buffered=False)
    try:
        assert response.status_code < 500
    finally:
        response.close()  # a stream the app serves itself ends here
    assert publisher.subscription_count == 0


# -- what goes to the proxy --------------------------------------------------------------------------


def test_each_item_chains_from_its_channels_previous_id_with_a_placeholder_first(publisher: Publisher) -> None:
    epoch = publisher.broker.epoch  # type: ignore[attr-defined]
    first, items = publisher.broker.publish_for_proxies(Message(("a",), "1"))
    assert [(i.channels, i.id, i.prev_id) for i in items] == [(("a",), first, f"{epoch}-0")]
    second, items = publisher.broker.publish_for_proxies(Message(("a", "b"), "2"))
    assert {(i.channels, i.prev_id) for i in items} == {(("a",), first), (("b",), f"{epoch}-0")}
    _, items = publisher.broker.publish_for_proxies(Message(("b",), "3", id="mine"))
    assert [(i.id, i.prev_id) for i in items] == [("mine", second)]


def test_a_proxy_that_is_down_never_blocks_publish_and_is_counted(publisher: Publisher) -> None:
    started = time.monotonic()
    for n in range(200):
        publisher.publish(str(n), "chat")
    assert time.monotonic() - started < 1.0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and publisher.stats()["grip"]["http://127.0.0.1:9/publish/"]["refused"] < 200:
        time.sleep(0.05)
    figures = publisher.stats()["grip"]["http://127.0.0.1:9/publish/"]
    assert (figures["sent"], figures["refused"]) == (0, 200) and figures["last_error"]
