"""sse_wsgi under load: POST /publish publishes the body to channel "bench"; GET /events streams it.

``BENCH_REDIS_URL`` puts the publisher on Redis.
"""

from __future__ import annotations

import os

from sse_wsgi import Publisher, SSEMiddleware


def publish_app(environ, start_response):
    if environ["PATH_INFO"] == "/publish":
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0)).decode()
        event_id = environ["sse.publisher"].publish(body, "bench").encode()
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(event_id)))])
        return [event_id]
    start_response("404 Not Found", [("Content-Length", "0")])
    return []


redis_url = os.environ.get("BENCH_REDIS_URL")
publisher = Publisher.from_url(redis_url, queue_size=5000) if redis_url else Publisher(queue_size=5000)
app = SSEMiddleware(publish_app, publisher, path="/events", heartbeat=15)
