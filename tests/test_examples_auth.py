"""authorize() done right (examples/auth_flask.py): session cookies, signed tokens, no guessing, no replay leaks."""

from __future__ import annotations

import time

import pytest
from itsdangerous import TimestampSigner, URLSafeTimedSerializer
from werkzeug.test import Client

from sse_wsgi.testing import read_events
from tests.support.examples import load


@pytest.fixture
def auth():
    module = load("auth_flask")
    yield module
    module.app.publisher.close()


def logged_in(module, name: str) -> tuple[Client, dict[str, str]]:
    client = Client(module.app)
    assert client.post("/login", data={"name": name}).status_code == 200
    cookie = client.get_cookie("session")
    assert cookie is not None
    return client, {"Cookie": f"session={cookie.value}"}


def status_of(module, url: str, headers: dict[str, str] | None = None) -> int:
    response = Client(module.app).get(url, headers=headers or {}, buffered=False)
    response.close()
    return response.status_code


def test_session_cookie_opens_own_private_channel(auth) -> None:
    _, alice = logged_in(auth, "alice")
    events = read_events(auth.app, "/events?channel=user:alice", 1, headers=alice,
                         publish=lambda p: p.publish("for alice", "user:alice"))  # fmt: skip
    assert [e.data for e in events] == ["for alice"]


@pytest.mark.parametrize(
    ("who", "url"),
    [
        ("bob", "/events?channel=user:alice"),
        ("bob", "/events/user:alice"),
        ("bob", "/events/user%3Aalice"),
        ("bob", "/events?channel=lobby&channel=user:alice"),
        ("bob", "/events?channel=user:alice%00"),
        (None, "/events?channel=lobby"),
        (None, "/events?channel=user:alice"),
    ],
)
def test_private_channels_cannot_be_reached_by_guessing(auth, who: str | None, url: str) -> None:
    headers = logged_in(auth, who)[1] if who else {}
    assert status_of(auth, url, headers) == 403
    assert auth.app.publisher.subscription_count == 0


def test_short_lived_signed_token_in_the_query(auth) -> None:
    client, _ = logged_in(auth, "alice")
    token = client.get("/token?channel=user:alice&channel=lobby").json["token"]
    events = read_events(auth.app, f"/events?channel=user:alice&token={token}", 1,
                         publish=lambda p: p.publish("by token", "user:alice"))  # fmt: skip
    assert [e.data for e in events] == ["by token"]
    assert client.get("/token?channel=user:bob").status_code == 403  # no token for another's channel
    assert status_of(auth, f"/events?channel=user:bob&token={token}") == 403  # not a channel of the token
    assert status_of(auth, f"/events?channel=user:alice&token={token[:-2]}xx") == 403  # altered


def test_expired_token_is_refused(auth) -> None:
    class PastSigner(TimestampSigner):
        def get_timestamp(self) -> int:
            return int(time.time()) - auth.TOKEN_MAX_AGE - 5

    signed_long_ago = URLSafeTimedSerializer(auth.flask_app.secret_key, salt="sse-stream-token", signer=PastSigner)
    old = signed_long_ago.dumps({"user": "alice", "channels": ["user:alice"]})
    assert auth.tokens.loads(old)["user"] == "alice"  # a good signature: only its age is wrong
    assert status_of(auth, f"/events?channel=user:alice&token={old}") == 403


def test_last_event_id_never_replays_other_channels(auth) -> None:
    publisher = auth.app.publisher
    first = publisher.publish("lobby opens", "lobby")
    publisher.publish("alice's secret", "user:alice")
    publisher.publish("for bob", "user:bob")
    publisher.publish("alice's and the lobby's", ["user:alice", "lobby"])
    publisher.publish("alice's second secret", "user:alice")
    _, bob = logged_in(auth, "bob")
    url, headers = "/events?channel=user:bob&channel=lobby", {**bob, "Last-Event-ID": first}
    events = read_events(auth.app, url, 2, headers=headers)
    assert [e.data for e in events] == ["for bob", "alice's and the lobby's"]
    with pytest.raises(TimeoutError, match="2 of 3"):
        read_events(auth.app, url, 3, headers=headers, timeout=0.5)  # nothing of alice's alone
