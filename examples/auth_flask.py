"""Authorization done right: private channels by session cookie, or by a short-lived signed token.

- ``POST /login`` (form field ``name``) starts a session (Flask's signed cookie).
- ``lobby`` is open to anyone logged in; ``user:<name>`` only to <name>.
- ``GET /token?channel=...`` gives a logged-in user a token, valid 60 s, for
  the channels they may read, so that a client that cannot send the cookie
  (another origin, a native app) can subscribe with ``?token=...``.
- ``POST /notify/<name>`` publishes a private notice to ``user:<name>``.

The middleware's ``authorize`` sees the decoded channels; a stream (and its
``Last-Event-ID`` replay) only ever covers channels it was authorized for.

Run:   python examples/auth_flask.py [PORT]      then:
       curl -c jar -d name=alice http://localhost:5000/login
       curl -N -b jar 'http://localhost:5000/events?channel=user:alice'
       curl -d 'hello alice' http://localhost:5000/notify/alice
"""

from __future__ import annotations

import os
import sys
from typing import Any

import flask
from itsdangerous import BadSignature, URLSafeTimedSerializer

from sse_wsgi import SSEMiddleware

TOKEN_MAX_AGE = 60  # seconds
LOBBY = "lobby"

flask_app = flask.Flask(__name__)
flask_app.secret_key = os.environ.get("SECRET_KEY", "change-me: set SECRET_KEY in production")
tokens = URLSafeTimedSerializer(flask_app.secret_key, salt="sse-stream-token")


def may_read(user: str, channel: str) -> bool:
    """The channel policy: the lobby for everyone logged in, ``user:<name>`` for <name> only."""
    return channel == LOBBY or channel == f"user:{user}"


@flask_app.post("/login")
def login() -> str:
    name = flask.request.form.get("name", "").strip()
    if not name or ":" in name:
        flask.abort(400, "a name without ':' is required")
    flask.session["user"] = name
    return f"logged in as {name}\n"


@flask_app.get("/token")
def token() -> dict[str, Any]:
    user = flask.session.get("user")
    if user is None:
        flask.abort(401)
    channels = flask.request.args.getlist("channel")
    if not channels or not all(may_read(user, channel) for channel in channels):
        flask.abort(403)
    return {"token": tokens.dumps({"user": user, "channels": channels}), "expires_in": TOKEN_MAX_AGE}


@flask_app.post("/notify/<name>")
def notify(name: str) -> str:
    # A real app would check who may notify whom; this demo lets anyone post.
    return flask.request.environ["sse.publisher"].publish(flask.request.get_data(as_text=True), f"user:{name}")


def session_user(environ: dict[str, Any]) -> str | None:
    """The user of the request's Flask session cookie, read outside a Flask view."""
    request = flask_app.request_class(environ)
    session = flask_app.session_interface.open_session(flask_app, request)
    user = session.get("user") if session is not None else None
    return user if isinstance(user, str) else None


def authorize(environ: dict[str, Any], channels: tuple[str, ...]) -> bool:
    """Allow a stream when a session or a valid token lets its user read every channel asked for."""
    user = session_user(environ)
    if user is not None:
        return all(may_read(user, channel) for channel in channels)
    token = flask_app.request_class(environ).args.get("token")
    if not token:
        return False
    try:
        grant = tokens.loads(token, max_age=TOKEN_MAX_AGE)
    except BadSignature:  # forged, altered or expired
        return False
    return set(channels) <= set(grant["channels"]) and all(may_read(grant["user"], c) for c in channels)


app = SSEMiddleware(flask_app, authorize=authorize, heartbeat=15)

if __name__ == "__main__":
    from werkzeug.serving import run_simple

    port = int(sys.argv[1] if len(sys.argv) > 1 else os.environ.get("PORT", "5000"))
    run_simple("localhost", port, app, threaded=True)  # a thread per open stream
