"""Flask wrapped in SSEMiddleware; a view publishes, another streams with EventStreamResponse."""

from __future__ import annotations

import flask

from sse_wsgi import SSEMiddleware
from sse_wsgi.werkzeug import EventStreamResponse

flask_app = flask.Flask(__name__)


@flask_app.post("/publish")
def publish() -> str:
    publisher = flask.request.environ["sse.publisher"]
    return publisher.publish(flask.request.get_data(as_text=True), flask.request.args["channel"])


@flask_app.get("/stream")
def stream() -> EventStreamResponse:
    publisher = flask.request.environ["sse.publisher"]
    return EventStreamResponse(publisher.subscribe(flask.request.args["channel"], heartbeat=1))


@flask_app.get("/count")
def count() -> str:
    return str(flask.request.environ["sse.publisher"].subscription_count)


app = SSEMiddleware(flask_app, heartbeat=1)
