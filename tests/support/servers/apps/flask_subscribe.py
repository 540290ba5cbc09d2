"""The seed's own usage: a Flask view returns ``flask.Response(publisher.subscribe(), ...)``, no middleware.

``GET /stream`` streams the default channel with ``subscribe()``'s defaults;
``POST /publish`` publishes the request body; ``GET /stats`` answers
``publisher.stats()`` as JSON.
"""

from __future__ import annotations

import flask

from sse_wsgi import Publisher

publisher = Publisher()
app = flask.Flask(__name__)


@app.get("/stream")
def stream() -> flask.Response:
    return flask.Response(publisher.subscribe(), mimetype="text/event-stream")


@app.post("/publish")
def publish() -> str:
    return publisher.publish(flask.request.get_data(as_text=True))


@app.get("/stats")
def stats() -> flask.Response:
    return flask.jsonify(publisher.stats())
