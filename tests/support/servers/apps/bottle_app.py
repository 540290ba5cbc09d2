"""Bottle wrapped in SSEMiddleware; a view publishes through request.environ."""

from __future__ import annotations

import bottle

from sse_wsgi import SSEMiddleware

bottle_app = bottle.Bottle()


@bottle_app.post("/publish")
def publish() -> str:
    publisher = bottle.request.environ["sse.publisher"]
    return publisher.publish(bottle.request.body.read().decode("utf-8"), bottle.request.query["channel"])


app = SSEMiddleware(bottle_app, heartbeat=1)
