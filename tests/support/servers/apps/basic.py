"""A bare WSGI app wrapped in SSEMiddleware, for the live-server tests.

``POST /publish?channel=NAME`` publishes the request body (UTF-8 text) and
answers the event id; ``GET /stats`` answers ``publisher.stats()`` as JSON.
Settings come from the environment: ``SSE_HEARTBEAT`` (seconds),
``SSE_MAX_LIFETIME`` (seconds), ``SSE_MAX_SUBSCRIBERS``, ``SSE_QUEUE_SIZE``, ``SSE_HISTORY`` (events
kept), ``SSE_CORS_ORIGINS`` (``*`` or origins separated by spaces), ``SSE_REDIS_URL`` (use the Redis
broker), ``SSE_GRIP`` (a GRIP URL: feed that proxy and let it hold streams). A channel whose name
starts with ``forbidden`` is refused by ``authorize``. ``POST /close`` closes the publisher. ``GET /pid``
answers the worker's process id.
"""

from __future__ import annotations

import json
import os
from urllib.parse import parse_qs

from sse_wsgi import Publisher, SSEMiddleware


def _publisher() -> Publisher:
    url = os.environ.get("SSE_REDIS_URL")
    sizes = {}  # unset: the library's defaults
    for name in ("queue_size", "history"):
        if os.environ.get(f"SSE_{name.upper()}"):
            sizes[name] = int(os.environ[f"SSE_{name.upper()}"])
    grip = os.environ.get("SSE_GRIP") or None
    return Publisher.from_url(url, grip=grip, **sizes) if url else Publisher(grip=grip, **sizes)


def _cors_origins() -> str | list[str]:
    value = os.environ.get("SSE_CORS_ORIGINS", "")
    return "*" if value.strip() == "*" else value.split()


def inner_app(environ, start_response):
    publisher = environ["sse.publisher"]
    path = environ.get("PATH_INFO", "")
    if path == "/publish" and environ["REQUEST_METHOD"] == "POST":
        length = int(environ.get("CONTENT_LENGTH") or 0)
        data = environ["wsgi.input"].read(length).decode("utf-8")
        query = parse_qs(environ.get("QUERY_STRING", ""))
        event_id = publisher.publish(
            data, query.get("channel", ["default channel"]), event=query.get("event", [None])[0]
        )
        body = event_id.encode()
    elif path == "/close" and environ["REQUEST_METHOD"] == "POST":
        publisher.close()
        body = b"closed"
    elif path == "/stats":
        body = json.dumps(publisher.stats()).encode()
    elif path == "/pid":
        body = str(os.getpid()).encode()
    else:
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found\n"]
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def _seconds(name: str, default: float | None) -> float | None:
    value = os.environ.get(name)
    return float(value) if value else default


def _authorize(environ, channels) -> bool:
    return not any(name.startswith("forbidden") for name in channels)


app = SSEMiddleware(
    inner_app,
    _publisher(),
    authorize=_authorize,
    heartbeat=_seconds("SSE_HEARTBEAT", 15.0),
    max_lifetime=_seconds("SSE_MAX_LIFETIME", None),
    cors_origins=_cors_origins(),
    max_subscribers=int(os.environ["SSE_MAX_SUBSCRIBERS"]) if os.environ.get("SSE_MAX_SUBSCRIBERS") else None,
)
