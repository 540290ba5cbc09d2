"""sse_wsgi under load: POST /publish publishes the body to channel "bench"; GET /events streams it.

``GET /stats`` answers ``publisher.stats()`` as JSON. ``BENCH_REDIS_URL`` puts the publisher on
Redis; ``BENCH_GRIP`` (a GRIP URL, ``http://127.0.0.1:PORT?key=SECRET``) feeds that proxy every event
and lets it hold the streams it forwards (GRIP mode, Pushpin in front); ``BENCH_QUEUE_SIZE``,
``BENCH_HISTORY`` and ``BENCH_HEARTBEAT`` change those settings.
"""

from __future__ import annotations

import json
import os

from sse_wsgi import Publisher, SSEMiddleware


def publish_app(environ, start_response):
    if environ["PATH_INFO"] == "/publish":
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0)).decode()
        event_id = environ["sse.publisher"].publish(body, "bench").encode()
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(event_id)))])
        return [event_id]
    if environ["PATH_INFO"] == "/stats":
        body = json.dumps(environ["sse.publisher"].stats()).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]
    start_response("404 Not Found", [("Content-Length", "0")])
    return []


redis_url = os.environ.get("BENCH_REDIS_URL")
grip = os.environ.get("BENCH_GRIP") or None
queue_size = int(os.environ.get("BENCH_QUEUE_SIZE", "5000"))
history = int(os.environ.get("BENCH_HISTORY", "1000"))
publisher = (
    Publisher.from_url(redis_url, history=history, queue_size=queue_size, grip=grip)
    if redis_url
    else Publisher(history=history, queue_size=queue_size, grip=grip)
)
app = SSEMiddleware(publish_app, publisher, path="/events", heartbeat=float(os.environ.get("BENCH_HEARTBEAT", "15")))
